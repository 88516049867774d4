"""Keras's training loop on `tf.distribute`'s strategies, beyond one machine.

Keras 3's `model.fit` does not run under `tf.distribute.ParameterServerStrategy`
(keras-team/keras#18624) nor, with two or more workers, under
`tf.distribute.MultiWorkerMirroredStrategy` (keras-team/keras#20585, #20329).
`fit`, `evaluate` and `predict` here run Keras's own training loop there as
well as in one process: callbacks, `History`, the progress bar, validation,
`CSVLogger`, `EarlyStopping`, `ModelCheckpoint` (written by the chief only),
`TensorBoard`, `LearningRateScheduler`. So one script trains on a laptop, on a
loopback cluster and on real hosts; the strategy the model was built in
decides which. `BackupAndRestore` resumes a killed run at the batch it
reached.
"""

from keras_lookup.distribute.backup_and_restore import BackupAndRestore
from keras_lookup.distribute.training import evaluate, fit, predict

__all__ = ["BackupAndRestore", "evaluate", "fit", "predict"]
