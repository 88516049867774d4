"""`fit`, `evaluate` and `predict`: Keras's loop, under any `tf.distribute` strategy."""

import dataclasses
import warnings

import keras

from keras_lookup.distribute import _runners
from keras_lookup.distribute._data import Data

# Callbacks that write files: under MultiWorkerMirroredStrategy only the chief
# runs them (every worker runs the others, which keeps the workers in step).
_CHIEF_ONLY = (
    keras.callbacks.CSVLogger,
    keras.callbacks.ModelCheckpoint,
    keras.callbacks.ProgbarLogger,
    keras.callbacks.TensorBoard,
)


@dataclasses.dataclass
class Position:
    """Where training is: what a backup records and a restore resumes from.

    `epoch` and `batch` (within the epoch) are those of the next step;
    `stream` counts the batches read from the current training stream (the
    data a resumed run skips); `steps` counts every step of the run.
    """

    epoch: int = 0
    batch: int = 0
    stream: int = 0
    steps: int = 0


def fit(
    model,
    x,
    y=None,
    *,
    batch_size=None,
    epochs=1,
    verbose="auto",
    callbacks=None,
    validation_data=None,
    validation_steps=None,
    validation_batch_size=None,
    validation_freq=1,
    shuffle=True,
    sample_weight=None,
    initial_epoch=0,
    steps_per_epoch=None,
):
    """Trains `model` as `model.fit` does, under the strategy it was built in.

    One call for one process, a loopback cluster or real hosts: the strategy
    the model was built in (`model.distribute_strategy`) decides how steps run.

    - No strategy, the default one, `MirroredStrategy`, `OneDeviceStrategy`:
      Keras's own train function, step for step what `model.fit` computes.
    - `tf.distribute.ParameterServerStrategy`: this process is the
      coordinator. Steps are scheduled on the workers with
      `tf.distribute.coordinator.ClusterCoordinator`; each worker reads its own
      dataset (`dataset_fn(input_context)`, `input_context.input_pipeline_id`
      telling the workers apart), tables split across the ps tasks train as
      they do in a custom loop, and the metrics count every worker's steps
      (each step adds to them atomically). With one worker the steps run in
      order, and the result is `model.fit`'s on the same batches. With
      several, the steps are asynchronous.
    - `tf.distribute.MultiWorkerMirroredStrategy`: every worker runs the same
      script and this same call; each step splits the global batch across the
      workers and applies one update, so the result is one process's on the
      same global batches. Only the chief runs the callbacks that write files
      (`CSVLogger`, `ModelCheckpoint`, `TensorBoard`) and the progress bar.

    Callbacks get what `model.fit` gives them: epoch and batch hooks,
    `History` (returned), the progress bar (`verbose=1`, Keras's `N/N` bar),
    validation each `validation_freq` epochs (`val_` logs), `CSVLogger`,
    `EarlyStopping`, `ModelCheckpoint`, `TensorBoard`, `LearningRateScheduler`.
    Under `ParameterServerStrategy`, batch-level logs are the metrics as last
    read from the parameter servers (at most once a second), and epoch-level
    logs count every step of the epoch. For a resume at the batch a run was
    killed at, pass `keras_lookup.distribute.BackupAndRestore` (Keras's own
    restores only the epoch, and raises here). The model's
    `steps_per_execution` applies in one process; under the multi-machine
    strategies each step runs on its own. `class_weight` and
    `validation_split` are not taken: weight the examples in the data, and
    pass `validation_data`.

    Args:
        model: A compiled `keras.Model`, built (or only created) inside the
            strategy's scope, or without one.
        x: A `dataset_fn(input_context)` returning a `tf.data.Dataset` of
            batches (`input_context` is a `tf.distribute.InputContext`: shard
            with it, and size per-replica batches with
            `get_per_replica_batch_size`), a `tf.data.Dataset` of batches, or
            arrays (NumPy or tensors) of examples. Batches are `(x, y)` or
            `(x, y, sample_weight)`.
        y: Target arrays when `x` holds arrays; else `None`.
        batch_size: Integer. Examples per batch when `x` holds arrays
            (default 32); the global batch under
            `MultiWorkerMirroredStrategy`, where the last partial batch of
            arrays is left out (each worker must get examples of every
            training batch: batch datasets with `drop_remainder=True`).
        epochs: Integer. Epoch to stop at (as in `model.fit`, not a count).
        verbose: `"auto"`, 0, 1 or 2, as in `model.fit`.
        callbacks: List of `keras.callbacks.Callback`.
        validation_data: Data to evaluate at the end of each epoch: as `x`,
            or an `(x_val, y_val)` / `(x_val, y_val, sample_weight_val)`
            tuple of arrays. Each validation example is counted once, also
            under `ParameterServerStrategy`.
        validation_steps: Integer or `None`: batches of `validation_data` to
            evaluate (default: all of it).
        validation_batch_size: Integer or `None`: batch size of array
            validation data (default: `batch_size`).
        validation_freq: Integer or list of epochs (1-based), as in
            `model.fit`.
        shuffle: Boolean. Whether to shuffle array data each epoch (seeded
            from NumPy's generator, which `keras.utils.set_random_seed`
            seeds). Datasets are read as they are.
        sample_weight: Sample weights when `x` holds arrays.
        initial_epoch: Integer. Epoch to start from (a backup overrides it).
        steps_per_epoch: Integer or `None`. Steps per epoch. If set, the
            training data is one stream over the whole run (repeat it), as
            in `model.fit`; if `None`, each epoch reads the data once
            (required under `ParameterServerStrategy` unless the data has a
            known, finite length).

    Returns:
        A `keras.callbacks.History`, as `model.fit` returns.

    Example:

    >>> import numpy as np, keras, tensorflow as tf
    >>> import keras_lookup
    >>> model = keras.Sequential([
    ...     keras.Input((4,), dtype="int32"),
    ...     keras_lookup.Embedding(100, 8, combiner="mean"),
    ...     keras.layers.Dense(2),
    ... ])
    >>> model.compile(
    ...     keras_lookup.optimizers.LazyAdam(0.01),
    ...     keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...     metrics=["accuracy"],
    ... )
    >>> def dataset_fn(input_context):
    ...     ids = np.arange(256).reshape(64, 4) % 100
    ...     data = tf.data.Dataset.from_tensor_slices((ids, ids[:, 0] % 2))
    ...     data = data.shard(
    ...         input_context.num_input_pipelines, input_context.input_pipeline_id
    ...     )
    ...     return data.batch(input_context.get_per_replica_batch_size(16)).repeat()
    >>> history = keras_lookup.distribute.fit(
    ...     model, dataset_fn, epochs=2, steps_per_epoch=4, verbose=0
    ... )
    >>> sorted(history.history)
    ['accuracy', 'loss']
    """
    _check_compiled(model, "fit")
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"`epochs` must be an integer >= 0. Received: epochs={epochs}")
    if steps_per_epoch is not None and (
        not isinstance(steps_per_epoch, int) or steps_per_epoch < 1
    ):
        raise ValueError(
            "`steps_per_epoch` must be a positive integer or None. Received: "
            f"steps_per_epoch={steps_per_epoch}"
        )
    runner = _runners.runner_for(model)
    # Every worker of MultiWorkerMirroredStrategy needs examples in every
    # global batch: arrays' last partial batch is left out.
    data = Data(
        x,
        y,
        sample_weight,
        batch_size,
        shuffle,
        drop_remainder=isinstance(runner, _runners.MultiWorkerRunner),
    )
    validation = None
    if validation_data is not None:
        validation = Data.from_validation(
            validation_data, validation_batch_size or batch_size
        )
        if validation_steps is None and not isinstance(runner, _runners.LocalRunner):
            validation_steps = validation.cardinality()
    runner.build(data.element_spec)
    steps = _steps_per_epoch(runner, data, steps_per_epoch)
    stream_mode = steps_per_epoch is not None or runner.needs_stream

    callbacks, backup = _callback_list(callbacks, runner, model, verbose, epochs, steps)
    position = Position(epoch=initial_epoch)
    if backup is not None:
        position = backup._start(runner, position)
    model.stop_training = False
    callbacks.on_train_begin()
    logs, training_logs, stream = {}, None, None
    first_epoch = position.epoch
    for epoch in range(first_epoch, epochs):
        resumed = epoch == first_epoch and position.batch > 0
        if not resumed:
            runner.reset_metrics()
            position.batch = 0
        callbacks.on_epoch_begin(epoch)
        if stream is None or not stream_mode:
            if not stream_mode:
                position.stream = position.batch
            stream = runner.stream(data, position.stream)
        ran_out = False
        while steps is None or position.batch < steps:
            batch = position.batch
            callbacks.on_train_batch_begin(batch)
            try:
                logs = runner.train(stream)
            except StopIteration:
                ran_out = True
                break
            position.batch += 1
            position.stream += 1
            position.steps += 1
            callbacks.on_train_batch_end(batch, runner.batch_logs(logs))
            if model.stop_training:
                break
        if ran_out:
            stream = None
            position.stream = 0
            if stream_mode:
                _warn_ran_out()
        epoch_logs = runner.results()
        if validation is not None and _should_validate(epoch, validation_freq):
            val_logs = runner.evaluate(validation, validation_steps, callbacks)
            epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
        # The next epoch starts afresh (a backup taken now resumes there).
        position.epoch, position.batch = epoch + 1, 0
        callbacks.on_epoch_end(epoch, epoch_logs)
        training_logs = epoch_logs
        if runner.any_worker(model.stop_training):
            break
    runner.wait()
    if isinstance(model.optimizer, keras.optimizers.Optimizer) and epochs > 0:
        model.optimizer.finalize_variable_values(model.trainable_weights)
    callbacks.on_train_end(logs=training_logs)
    return model.history


def evaluate(
    model,
    x,
    y=None,
    *,
    batch_size=None,
    verbose="auto",
    sample_weight=None,
    steps=None,
    callbacks=None,
    return_dict=False,
):
    """Evaluates `model` as `model.evaluate` does, each example counted once.

    In one process this is `model.evaluate`. Under
    `ParameterServerStrategy` the batches are read in this process (the
    coordinator) and each is sent to one worker: every example is counted
    once, whatever the number of workers, and the result equals
    `model.evaluate`'s on the same data. Under `MultiWorkerMirroredStrategy`
    each worker evaluates its share of every global batch and the metrics are
    summed across workers.

    Args:
        model: A compiled `keras.Model`.
        x: As for `fit`: a `dataset_fn(input_context)` (called here with the
            default `tf.distribute.InputContext()`: all the data), a
            `tf.data.Dataset` of batches, or arrays.
        y: Target arrays when `x` holds arrays.
        batch_size: Integer: examples per batch when `x` holds arrays.
        verbose: `"auto"`, 0, 1 or 2.
        sample_weight: Sample weights when `x` holds arrays.
        steps: Integer or `None`: batches to evaluate (default: all; the data
            must then end).
        callbacks: List of `keras.callbacks.Callback`.
        return_dict: Boolean. If `True`, a dict `{name: value}`; else, as
            `model.evaluate`, the loss alone or a list of loss and metrics.

    Returns:
        What `model.evaluate` returns.

    Example:

    >>> import numpy as np, keras, keras_lookup
    >>> model = keras.Sequential([
    ...     keras.Input((3,), dtype="int32"),
    ...     keras_lookup.Embedding(10, 2, combiner="sum"),
    ... ])
    >>> model.compile(loss="mse")
    >>> ids, targets = np.array([[1, 2, 3]]), np.zeros((1, 2))
    >>> loss = keras_lookup.distribute.evaluate(model, ids, targets, verbose=0)
    >>> bool(np.isclose(loss, model.evaluate(ids, targets, verbose=0)))
    True
    """
    _check_compiled(model, "evaluate")
    runner = _runners.runner_for(model)
    data = Data(x, y, sample_weight, batch_size, shuffle=False)
    if isinstance(runner, _runners.LocalRunner):
        return model.evaluate(
            data.local(),
            steps=steps,
            verbose=verbose,
            callbacks=callbacks,
            return_dict=return_dict,
        )
    runner.build(data.element_spec)
    if steps is None:
        steps = data.cardinality()
    callbacks = _plain_callback_list(callbacks, runner, model, verbose, steps)
    logs = runner.evaluate(data, steps, callbacks)
    if return_dict:
        return logs
    flatten = getattr(model, "_flatten_metrics_in_order", None)
    if flatten is not None:
        return flatten(logs)
    values = list(logs.values())
    return values[0] if len(values) == 1 else values


def predict(model, x, *, batch_size=None, verbose="auto", steps=None, callbacks=None):
    """Predicts as `model.predict` does, the outputs in the order of the data.

    In one process this is `model.predict`. Under `ParameterServerStrategy`
    each batch, read in this process, is predicted by one worker; under
    `MultiWorkerMirroredStrategy` each worker predicts its share of every
    global batch and every worker gets all the outputs.

    Args:
        model: A `keras.Model`.
        x: As for `fit` (targets, if the batches hold any, are ignored).
        batch_size: Integer: examples per batch when `x` holds arrays.
        verbose: `"auto"`, 0, 1 or 2.
        steps: Integer or `None`: batches to predict (default: all).
        callbacks: List of `keras.callbacks.Callback`.

    Returns:
        NumPy array(s) of predictions, as `model.predict` returns.

    Example:

    >>> import numpy as np, keras, keras_lookup
    >>> model = keras.Sequential([
    ...     keras.Input((3,), dtype="int32"),
    ...     keras_lookup.Embedding(10, 2, combiner="sum"),
    ... ])
    >>> keras_lookup.distribute.predict(model, np.array([[1, 2, 3]]), verbose=0).shape
    (1, 2)
    """
    runner = _runners.runner_for(model)
    data = Data(x, batch_size=batch_size)
    if isinstance(runner, _runners.LocalRunner):
        return model.predict(
            data.local(), steps=steps, verbose=verbose, callbacks=callbacks
        )
    if steps is None:
        steps = data.cardinality()
    callbacks = _plain_callback_list(callbacks, runner, model, verbose, steps)
    return runner.predict(data, steps, callbacks)


# -- helpers -----------------------------------------------------------------


def _check_compiled(model, what):
    if not getattr(model, "compiled", False):
        raise ValueError(
            f"You must call `compile()` before `keras_lookup.distribute.{what}`."
        )


def _steps_per_epoch(runner, data, steps_per_epoch):
    if steps_per_epoch is not None or not runner.needs_stream:
        return steps_per_epoch or data.cardinality()
    steps = data.cardinality()
    if steps is None:
        raise ValueError(
            f"Under {runner.name}, pass `steps_per_epoch`: each worker reads its "
            "own copy of the training data for the whole run, and its length "
            f"is not known here (the data `x` is infinite or of unknown length)."
        )
    return steps


def _should_validate(epoch, validation_freq):
    epoch += 1  # as Keras: 1-based
    if isinstance(validation_freq, int):
        return epoch % validation_freq == 0
    if isinstance(validation_freq, (list, tuple)):
        return epoch in validation_freq
    raise ValueError(
        "`validation_freq` must be an integer or a list of epochs. Received: "
        f"validation_freq={validation_freq!r}"
    )


def _warn_ran_out():
    warnings.warn(
        "Your input ran out of data; the epoch ends early. Make sure that "
        "your dataset or `dataset_fn` can give at least `steps_per_epoch * "
        "epochs` batches (`.repeat()` it).",
        stacklevel=3,
    )


def _filter(callbacks, runner):
    from keras_lookup.distribute.backup_and_restore import BackupAndRestore

    callbacks = list(callbacks or [])
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            raise ValueError(
                "`keras.callbacks.BackupAndRestore` restores only the epoch and "
                "replays it from its first batch, so a killed run does not end "
                "where an uninterrupted one does. With keras_lookup.distribute, "
                "pass `keras_lookup.distribute.BackupAndRestore(backup_dir, "
                "save_freq=...)`, which resumes at the batch."
            )
    backups = [c for c in callbacks if isinstance(c, BackupAndRestore)]
    if len(backups) > 1:
        raise ValueError(
            "Pass at most one `keras_lookup.distribute.BackupAndRestore`. "
            f"Received {len(backups)}."
        )
    if not runner.is_chief:
        callbacks = [c for c in callbacks if not isinstance(c, _CHIEF_ONLY)]
    return callbacks, (backups[0] if backups else None)


def _callback_list(callbacks, runner, model, verbose, epochs, steps):
    callbacks, backup = _filter(callbacks, runner)
    if not runner.is_chief:
        verbose = 0
    callback_list = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=verbose != 0,
        model=model,
        verbose=verbose,
        epochs=epochs,
        steps=steps,
    )
    return callback_list, backup


def _plain_callback_list(callbacks, runner, model, verbose, steps):
    callbacks, _ = _filter(callbacks, runner)
    if not runner.is_chief:
        verbose = 0
    return keras.callbacks.CallbackList(
        callbacks,
        add_progbar=verbose != 0,
        model=model,
        verbose=verbose,
        epochs=1,
        steps=steps,
    )
