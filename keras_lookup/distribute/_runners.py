"""How one training, evaluation or prediction step runs under each strategy.

`fit`, `evaluate` and `predict` (`keras_lookup.distribute.training`) drive the
epochs, batches and callbacks the way `model.fit` does; a runner does what
differs between strategies:

- `LocalRunner`: one process, any strategy Keras's `fit` supports (none, the
  default one, `MirroredStrategy`, `OneDeviceStrategy`). Steps are Keras's own
  `model.train_function`, so the numbers are `model.fit`'s.
- `ParameterServerRunner`: `ParameterServerStrategy`. The coordinator (this
  process) schedules steps on the workers with `ClusterCoordinator`; each
  worker reads its own dataset (`dataset_fn(input_context)` with its
  `input_pipeline_id`). Keras's `train_step` runs inside a
  `keras.StatelessScope`: what it adds to the metrics (and to counters such
  as the optimizer's `iterations`) is applied with the variables' own atomic
  `assign_add`. Keras's `Variable.assign_add` reads and then writes, so two
  workers updating a metric at once would lose one update.
- `MultiWorkerRunner`: `MultiWorkerMirroredStrategy`. Every worker runs this
  same loop; each step runs Keras's `train_step` on the worker's share of the
  global batch (`strategy.run`), and the step's logs are averaged across
  workers in one all-reduce. Only the chief (`strategy.extended.should_checkpoint`)
  writes files.
"""

import time

import keras
import numpy as np
import tensorflow as tf
from keras import tree
from tensorflow.python.distribute import input_lib
from tensorflow.python.distribute.coordinator import values as coordinator_values

# Under ParameterServerStrategy the logs passed to batch-level callbacks are
# read from the parameter servers at most this often (seconds): a read costs
# a round trip, and the steps it reports may still be running.
PS_LOG_INTERVAL = 1.0
# Variables that a step assigns (outside the optimizer's own updates) and that
# have at most this many entries are updated with atomic increments under
# ParameterServerStrategy; larger ones are assigned as Keras would.
_COUNTER_SIZE = 4096


def runner_for(model):
    """The model's runner, kept between calls (its traced steps with it).

    As `model.fit` keeps `model.train_function`: a new strategy, optimizer or
    `compile` makes a new runner.
    """
    strategy = model.distribute_strategy
    key = (
        strategy,
        getattr(model, "optimizer", None),
        getattr(model, "_compile_loss", None),
        getattr(model, "_compile_metrics", None),
    )
    cached = model.__dict__.get("_keras_lookup_runner")
    if cached is not None and all(a is b for a, b in zip(cached[0], key, strict=True)):
        return cached[1]
    if isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
        runner = ParameterServerRunner(model, strategy)
    elif isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        runner = MultiWorkerRunner(model, strategy)
    else:
        runner = LocalRunner(model, strategy)
    model.__dict__["_keras_lookup_runner"] = (key, runner)
    return runner


class Runner:
    """The strategy-independent part; see the module docstring."""

    name = "one process"
    # Whether this process writes files (checkpoints, logs, progress bars).
    is_chief = True
    # Whether the training data must be one stream over the whole run (with a
    # known number of steps per epoch) rather than read anew each epoch.
    needs_stream = False

    def __init__(self, model, strategy):
        self.model = model
        self.strategy = strategy

    def scope(self):
        return self.strategy.scope()

    def build(self, element_spec):
        """Builds the model, its metrics and its optimizer, in the scope."""
        model = self.model
        if not hasattr(model, "_symbolic_build"):  # pragma: no cover - other Keras
            raise RuntimeError(
                "keras_lookup.distribute builds the model as `model.fit` does, "
                "with Keras's `Trainer._symbolic_build` (Keras 3.12 to 3.15), "
                f"which Keras {keras.__version__} does not have."
            )
        with self.scope():
            # What `model.fit` does before its first step: every variable
            # exists before training starts (and before a backup restores).
            model._symbolic_build(data_batch=element_spec)
            optimizer = getattr(model, "optimizer", None)
            if optimizer is not None and not optimizer.built:
                optimizer.build(model.trainable_variables)

    def stream(self, data, skip):
        """What `train` reads: the training data from batch `skip` on."""
        raise NotImplementedError

    def train(self, stream):
        """Runs (or schedules) one step; StopIteration at the end of the data."""
        raise NotImplementedError

    def batch_logs(self, logs):
        return logs

    def wait(self):
        """Returns once every step run or scheduled so far is done."""

    def results(self):
        """The model's metrics now, as Python numbers (all workers' steps)."""
        self.wait()
        return _python(self.model.get_metrics_result())

    def reset_metrics(self):
        self.model.reset_metrics()

    def evaluate(self, data, steps, callbacks):
        raise NotImplementedError

    def predict(self, data, steps, callbacks):
        raise NotImplementedError

    def any_worker(self, flag):
        """Whether `flag` is set on any worker (every worker asks at once)."""
        return bool(flag)

    def metric_values(self):
        """Every metric variable's value, summed over the workers."""
        self.wait()
        return [np.asarray(v.numpy()) for v in self.model.metrics_variables]

    def set_metric_values(self, values):
        # Under MultiWorkerMirroredStrategy, TensorFlow divides a summed
        # metric's value among the workers' copies, so that they sum to it.
        for variable, value in zip(self.model.metrics_variables, values, strict=True):
            variable.assign(value)


class LocalRunner(Runner):
    def stream(self, data, skip):
        self.model.make_train_function()
        # As Keras's own epoch iterator does (the default strategy leaves the
        # dataset as it is).
        dataset = self.strategy.experimental_distribute_dataset(data.local(skip=skip))
        return iter(dataset)

    def train(self, stream):
        return self.model.train_function(stream)

    def evaluate(self, data, steps, callbacks):
        return self.model.evaluate(
            data.local(), steps=steps, callbacks=callbacks, return_dict=True
        )

    def predict(self, data, steps, callbacks):
        return self.model.predict(data.local(), steps=steps, callbacks=callbacks)


class ParameterServerRunner(Runner):
    name = "ParameterServerStrategy"
    needs_stream = True

    def __init__(self, model, strategy):
        super().__init__(model, strategy)
        self.coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
        self._train_function = None
        self._test_function = None
        self._predict_function = None
        self._logs = {}
        self._logs_read = time.monotonic()

    # -- a step that updates metrics and counters atomically ------------------

    def _stateless(self, step, data):
        model = self.model
        metrics = list(model.metrics_variables)
        metric_ids = {id(v) for v in metrics}
        others = [v for v in _state_variables(model) if id(v) not in metric_ids]
        counters = [v for v in others if _size(v) <= _COUNTER_SIZE]
        counter_ids = {id(v) for v in counters}
        # Metrics start from zero: what the step leaves in them is its
        # increment. Counters start from their value now.
        starts = [tf.zeros(v.shape, v.dtype) for v in metrics]
        starts += [tf.convert_to_tensor(v.value) for v in counters]
        mapped = metrics + counters
        with keras.StatelessScope(
            state_mapping=list(zip(mapped, starts, strict=True))
        ) as scope:
            outputs = step(data)
        for variable, start in zip(mapped, starts, strict=True):
            new = scope.get_current_value(variable)
            if new is not start:
                variable.value.assign_add(tf.cast(new, variable.dtype) - start)
        for variable in others:
            if id(variable) in counter_ids:
                continue
            new = scope.get_current_value(variable)
            if new is not None:
                variable.value.assign(tf.cast(new, variable.dtype))
        return outputs

    def _functions(self):
        if self._train_function is not None:
            return
        model, strategy = self.model, self.strategy

        def train_step(data):
            self._stateless(model.train_step, data)

        def test_step(data):
            self._stateless(model.test_step, data)

        @tf.function
        def train(iterator):
            strategy.run(train_step, args=(next(iterator),))

        @tf.function(reduce_retracing=True)
        def test(data):
            strategy.run(test_step, args=(data,))

        @tf.function(reduce_retracing=True)
        def predict(data):
            return strategy.run(model.predict_step, args=(data,))

        self._train_function, self._test_function = train, test
        self._predict_function = predict

    def stream(self, data, skip):
        self._functions()
        return per_worker_iterator(self.coordinator, data, skip)

    def train(self, stream):
        self.coordinator.schedule(self._train_function, args=(stream,))

    def batch_logs(self, logs):
        now = time.monotonic()
        if now - self._logs_read >= PS_LOG_INTERVAL:
            # Read without waiting: the steps still running are not in it yet
            # (and before the first step is done, there is nothing to show).
            logs = _python(self.model.get_metrics_result())
            if any(np.any(np.asarray(v) != 0) for v in logs.values()):
                self._logs = logs
            self._logs_read = now
        return dict(self._logs)

    def wait(self):
        try:
            self.coordinator.join()
        except tf.errors.OutOfRangeError as error:
            raise RuntimeError(
                "A worker's dataset ran out of data before the steps scheduled "
                "on it. Under ParameterServerStrategy every worker reads its own "
                "dataset for the whole run: repeat it (`dataset.repeat()`) and "
                "let `steps_per_epoch` end the epochs."
            ) from error

    def reset_metrics(self):
        self.wait()
        self.model.reset_metrics()
        # Batch logs are read again a while into the epoch, once the metrics
        # count more than a step or two (a read may fall between the updates
        # of two metrics by one step).
        self._logs, self._logs_read = {}, time.monotonic()

    def evaluate(self, data, steps, callbacks):
        # Each batch is read here and sent to one worker: every example is
        # counted once, whatever the number of workers.
        self._functions()
        self.reset_metrics()
        callbacks.on_test_begin()
        for step, batch in enumerate(_batches(data.local(), steps)):
            callbacks.on_test_batch_begin(step)
            self.coordinator.schedule(self._test_function, args=(batch,))
            callbacks.on_test_batch_end(step, {})
        logs = self.results()
        callbacks.on_test_end(logs)
        return logs

    def predict(self, data, steps, callbacks):
        self._functions()
        callbacks.on_predict_begin()
        outputs = []
        for step, batch in enumerate(_batches(data.local(), steps)):
            callbacks.on_predict_batch_begin(step)
            x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
            outputs.append(self.coordinator.schedule(self._predict_function, args=(x,)))
            callbacks.on_predict_batch_end(step, {})
        self.wait()
        outputs = [tree.map_structure(np.asarray, out.fetch()) for out in outputs]
        callbacks.on_predict_end()
        return _concat(outputs)


class MultiWorkerRunner(Runner):
    name = "MultiWorkerMirroredStrategy"

    def __init__(self, model, strategy):
        super().__init__(model, strategy)
        self.is_chief = bool(strategy.extended.should_checkpoint)
        self._train_function = self._test_function = None
        self._predict_function = self._any_function = None

    def _distribute(self, data, skip=0):
        if data.kind == "fn":
            return self.strategy.distribute_datasets_from_function(
                lambda context: data.local(context, skip)
            )
        dataset = data.local(skip=skip)
        options = tf.data.Options()
        # Each worker takes its share of every global batch (the batches are
        # the ones one process would train on).
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        return self.strategy.experimental_distribute_dataset(
            dataset.with_options(options)
        )

    def _step_function(self, step):
        """A `tf.function` of a batch: `step` on every worker, and the logs."""
        strategy = self.strategy
        layout = []  # (name, size) of each log, noted while tracing

        def replica(data):
            logs = step(data)
            values = [tf.reshape(tf.cast(v, tf.float32), [-1]) for v in logs.values()]
            layout[:] = [
                (n, int(v.shape[0])) for n, v in zip(logs, values, strict=True)
            ]
            return tf.concat(values, 0)

        @tf.function
        def function(data):
            # One all-reduce for all the logs: each worker's values, averaged.
            packed = strategy.run(replica, args=(data,))
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, packed, axis=None)

        def run(data):
            return _unpack(layout, function(data))

        return run

    def stream(self, data, skip):
        if self._train_function is None:
            self._train_function = self._step_function(self.model.train_step)
        return iter(self._distribute(data, skip))

    def train(self, stream):
        data = next(stream)  # StopIteration at the end, on every worker at once
        return self._train_function(data)

    def evaluate(self, data, steps, callbacks):
        # The metrics are read once, at the end: a step needs no all-reduce
        # of its logs (its batch-level logs are empty).
        if self._test_function is None:
            strategy, model = self.strategy, self.model

            def test_step(batch):
                # The last global batch may leave a worker nothing: its loss
                # would be the mean of nothing (NaN), so it adds nothing.
                size = tf.shape(tree.flatten(batch)[0])[0]
                tf.cond(
                    size > 0,
                    lambda: _done(model.test_step(batch)),
                    lambda: tf.constant(True),
                )

            @tf.function
            def test(batch):
                strategy.run(test_step, args=(batch,))

            self._test_function = test
        function = self._test_function
        self.reset_metrics()
        callbacks.on_test_begin()
        for step, batch in enumerate(_batches(self._distribute(data), steps)):
            callbacks.on_test_batch_begin(step)
            function(batch)
            callbacks.on_test_batch_end(step, {})
        logs = self.results()
        callbacks.on_test_end(logs)
        return logs

    def predict(self, data, steps, callbacks):
        if self._predict_function is None:
            strategy, model = self.strategy, self.model

            @tf.function(reduce_retracing=True)
            def predict(batch):
                x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
                outputs = strategy.run(model.predict_step, args=(x,))
                # Every worker gets every prediction, in the global batch's
                # order.
                return strategy.gather(outputs, axis=0)

            self._predict_function = predict
        predict = self._predict_function
        callbacks.on_predict_begin()
        outputs = []
        for step, batch in enumerate(_batches(self._distribute(data), steps)):
            callbacks.on_predict_batch_begin(step)
            outputs.append(tree.map_structure(np.asarray, predict(batch)))
            callbacks.on_predict_batch_end(step, {})
        callbacks.on_predict_end()
        return _concat(outputs)

    def any_worker(self, flag):
        if self._any_function is None:
            strategy = self.strategy

            @tf.function
            def total(value):
                # Each worker's own `value` (it is no distributed value).
                per_replica = strategy.run(tf.identity, args=(value,))
                return strategy.reduce(
                    tf.distribute.ReduceOp.SUM, per_replica, axis=None
                )

            self._any_function = total
        return float(self._any_function(tf.constant(1.0 if flag else 0.0))) > 0

    def metric_values(self):
        # Read in cross-replica context: summed over the workers (a collective
        # every worker takes part in).
        return [np.asarray(v.numpy()) for v in self.model.metrics_variables]


# -- helpers -----------------------------------------------------------------


def per_worker_iterator(coordinator, data, skip):
    """An iterator on each worker, over `data.for_worker(context_i, skip_i)`.

    `ClusterCoordinator.create_per_worker_dataset` gives every worker the same
    `InputContext` (one input pipeline, id 0), so that workers could only
    tell their data apart by an unseeded shuffle. Here worker `i` of `n` gets
    `InputContext(n, i)`, as under `MultiWorkerMirroredStrategy`, and skips
    its share of the `skip` batches already trained on. A worker that is
    started again after a failure gets its iterator made again by the same
    function (from its start).
    """
    workers = coordinator._cluster.workers
    count = len(workers)
    iterators = []
    for index, worker in enumerate(workers):
        context = tf.distribute.InputContext(count, index, 1)
        share = skip // count + (1 if index < skip % count else 0)
        dataset_fn = tf.function(
            lambda context=context, share=share: data.for_worker(context, share)
        ).get_concrete_function()

        def make_iterator(dataset_fn=dataset_fn):
            return iter(dataset_fn())

        remote = worker.create_resource(make_iterator)
        # As `ClusterCoordinator.create_per_worker_dataset` does, so that a
        # function taking the iterator can be traced.
        remote._type_spec = input_lib.get_iterator_spec_from_dataset(
            coordinator.strategy, dataset_fn.structured_outputs
        )
        iterators.append(remote)
    return coordinator_values.PerWorkerDistributedIterator(tuple(iterators))


def _state_variables(model):
    variables = list(model.variables)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        seen = {id(v) for v in variables}
        variables += [v for v in optimizer.variables if id(v) not in seen]
    return [v for v in variables if not v.trainable]


def _size(variable):
    return int(np.prod(variable.shape)) if len(variable.shape) else 1


def _batches(data, steps):
    """The first `steps` batches of the iterable `data` (all of them if
    `steps` is None).

    With a count, the iterator is not asked for more: after connecting to a
    cluster, TensorFlow 2.16 logs a warning for each iterator that reaches
    its end.
    """
    iterator = iter(data)
    if steps is None:
        yield from iterator
        return
    for _ in range(steps):
        try:
            yield next(iterator)
        except StopIteration:
            return


def _python(logs):
    out = {}
    for name, value in logs.items():
        value = np.asarray(value)
        out[name] = value.item() if value.ndim == 0 else value
    return out


def _unpack(layout, values):
    values, out, start = values.numpy(), {}, 0
    for name, size in layout:
        out[name] = float(values[start]) if size == 1 else values[start : start + size]
        start += size
    return out


def _done(outputs):
    del outputs
    return tf.constant(True)


def _concat(outputs):
    if not outputs:
        return None
    return tree.map_structure(lambda *xs: np.concatenate(xs, axis=0), *outputs)
