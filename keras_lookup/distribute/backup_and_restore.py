"""`BackupAndRestore`: a killed run resumes at its batch and ends as if never killed."""

import os

import keras
import numpy as np
import tensorflow as tf


class BackupAndRestore(keras.callbacks.Callback):
    """Backs training up, and resumes a killed run at the batch it reached.

    Pass it to `keras_lookup.distribute.fit`. Every `save_freq` steps (or at
    the end of each epoch) it writes a backup of the model, the optimizer
    (slots and iteration count), the metrics so far and the position in the
    data; when the same command runs again after a crash or a `kill -9`, `fit`
    restores the last backup and resumes from that batch, skipping the
    batches already trained on, so the run ends with the weights an
    uninterrupted run ends with (when the data is the same stream each run:
    a seeded shuffle, `steps_per_epoch` with `.repeat()`, or data read in the
    same order every epoch). Under `ParameterServerStrategy` that holds with
    one worker; with several, the steps are asynchronous and each worker
    skips its share of the batches.

    Keras's `keras.callbacks.BackupAndRestore` records the batch but restores
    only the epoch and replays it from its first batch.

    Backups are `tf.train.Checkpoint`s written through a
    `tf.train.CheckpointManager`: a new one is complete before the manager's
    index file, replaced atomically, names it, so a kill at any moment of a
    write leaves the previous backup usable (and the leftovers of an
    interrupted write are removed at the next start). Tables split across
    parameter servers, and their optimizer slots, are saved as logical tables:
    a backup restores into another number of parts, or into one process.
    Only the chief writes (the coordinator under `ParameterServerStrategy`,
    the chief worker under `MultiWorkerMirroredStrategy`); every worker
    restores from `backup_dir`, which they must all be able to read. After a
    run that finished, the backups are deleted, as Keras's are.

    Args:
        backup_dir: String or `os.PathLike`: the folder of the backups (on
            storage every worker reads, on a cluster). Must not be used by
            another run at the same time.
        save_freq: `"epoch"` (at the end of each epoch) or a positive integer
            (every that many steps).
        delete_checkpoint: Boolean. Whether to delete the backups once
            training finished. Defaults to `True`.

    Example:

    >>> import os, tempfile, numpy as np, keras, keras_lookup
    >>> model = keras.Sequential([
    ...     keras.Input((2,), dtype="int32"),
    ...     keras_lookup.Embedding(10, 2, combiner="sum"),
    ... ])
    >>> model.compile(keras_lookup.optimizers.LazySGD(0.1), "mse")
    >>> folder = os.path.join(tempfile.mkdtemp(), "backup")
    >>> backup = keras_lookup.distribute.BackupAndRestore(folder, save_freq=2)
    >>> history = keras_lookup.distribute.fit(
    ...     model, np.ones((8, 2), "int32"), np.zeros((8, 2)),
    ...     batch_size=2, epochs=2, callbacks=[backup], verbose=0,
    ... )
    >>> os.path.exists(folder)  # deleted after a run that finished
    False
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        if not isinstance(backup_dir, (str, os.PathLike)) or not os.fspath(backup_dir):
            raise ValueError(
                "`backup_dir` must be a folder path (a string or "
                f"`os.PathLike`). Received: backup_dir={backup_dir!r}"
            )
        if save_freq != "epoch" and (
            isinstance(save_freq, bool)
            or not isinstance(save_freq, (int, np.integer))
            or save_freq < 1
        ):
            raise ValueError(
                '`save_freq` must be "epoch" or a positive integer (steps). '
                f"Received: save_freq={save_freq!r}"
            )
        if not isinstance(delete_checkpoint, bool):
            raise ValueError(
                "`delete_checkpoint` must be True or False. Received: "
                f"delete_checkpoint={delete_checkpoint!r}"
            )
        super().__init__()
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq if save_freq == "epoch" else int(save_freq)
        self.delete_checkpoint = delete_checkpoint
        self._runner = self._position = None

    # -- called by `keras_lookup.distribute.fit` --------------------------------

    def _start(self, runner, position):
        """Restores the last backup, if any; returns where training resumes."""
        self._runner, self._position = runner, position
        model = self.model
        size = sum(int(np.prod(v.shape)) for v in model.metrics_variables)
        with runner.scope():
            self._saved_position = tf.Variable(
                tf.zeros(4, tf.int64), trainable=False, name="backup_position"
            )
            self._saved_metrics = tf.Variable(
                tf.zeros(size, tf.float64), trainable=False, name="backup_metrics"
            )
        objects = {"model": model}
        if model.optimizer is not None:
            objects["optimizer"] = model.optimizer
        self._checkpoint = tf.train.Checkpoint(
            position=self._saved_position, metrics=self._saved_metrics, **objects
        )
        self._manager = None
        if runner.is_chief:
            tf.io.gfile.makedirs(self.backup_dir)
            _remove_leftovers(self.backup_dir)
            self._manager = tf.train.CheckpointManager(
                self._checkpoint, self.backup_dir, max_to_keep=1
            )
        latest = tf.train.latest_checkpoint(self.backup_dir)
        if latest is None:
            return position
        self._checkpoint.restore(latest).assert_existing_objects_matched()
        epoch, batch, stream, steps = (int(n) for n in self._saved_position.numpy())
        flat = self._saved_metrics.numpy()
        values, start = [], 0
        for variable in model.metrics_variables:
            count = int(np.prod(variable.shape))
            values.append(
                flat[start : start + count]
                .reshape(tuple(variable.shape))
                .astype(variable.dtype)
            )
            start += count
        runner.set_metric_values(values)
        position.epoch, position.batch = epoch, batch
        position.stream, position.steps = stream, steps
        if runner.is_chief:
            print(
                f"BackupAndRestore: resumed from {latest} (epoch {epoch + 1}, "
                f"batch {batch}, step {steps}).",
                flush=True,
            )
        return position

    def _write_options(self):
        """`tf.train.CheckpointOptions` for a backup (tests interrupt writes)."""
        return None

    def _save(self):
        runner, position = self._runner, self._position
        # Every worker reads the metrics (a collective under
        # MultiWorkerMirroredStrategy); only the chief writes.
        values = runner.metric_values()
        flat = [np.asarray(v, np.float64).reshape(-1) for v in values]
        self._saved_metrics.assign(np.concatenate(flat) if flat else np.zeros(0))
        self._saved_position.assign(
            [position.epoch, position.batch, position.stream, position.steps]
        )
        if self._manager is not None:
            self._manager.save(
                checkpoint_number=position.steps, options=self._write_options()
            )

    # -- Keras callback hooks ---------------------------------------------------

    def on_train_begin(self, logs=None):
        if self._runner is None:
            raise ValueError(
                "keras_lookup.distribute.BackupAndRestore resumes at a batch, "
                "which only `keras_lookup.distribute.fit` can do. Use it with "
                "`keras_lookup.distribute.fit(model, ...)` (it runs in one "
                "process too), or `keras.callbacks.BackupAndRestore` with "
                "`model.fit`."
            )

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq != "epoch" and self._position.steps % self.save_freq == 0:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save()

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and self._runner.is_chief:
            if tf.io.gfile.exists(self.backup_dir):
                tf.io.gfile.rmtree(self.backup_dir)
        self._runner = None


def _remove_leftovers(folder):
    # A write killed while TensorFlow writes its shards leaves `ckpt-N_temp/`
    # (and one killed while the index is replaced, `checkpoint.tmp...`), which
    # no backup refers to and `CheckpointManager` never deletes.
    leftovers = tf.io.gfile.glob(os.path.join(folder, "ckpt-*_temp"))
    leftovers += tf.io.gfile.glob(os.path.join(folder, "checkpoint.tmp*"))
    for path in leftovers:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        else:
            tf.io.gfile.remove(path)
