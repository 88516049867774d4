"""Row-sparse ("lazy") Adam, SGD and Adagrad, and row-wise Adagrad and Adam.

Keras 3's optimizers turn the `tf.IndexedSlices` gradient of an embedding
lookup into a dense tensor (Adam's `gradient - m`), so every step reads and
writes the whole table and both moment slots: the step time and the memory
grow with the vocabulary, not with the batch. The optimizers here update only
the rows that the batch looked up, with duplicate ids summed first (Keras's
Adam and Adagrad square duplicate slices one by one instead, so an id that
appears twice in a batch gets the wrong second moment).

Which paths stay sparse (the gradient reaches `update_step` as
`tf.IndexedSlices` and only the rows present in it are read or written):

- `model.fit`, `train_on_batch` and custom loops calling `apply` or
  `apply_gradients`, with or without `tf.function`, with `jit_compile` off
  (Keras's default on CPU) or on (XLA compiles `tf.unique` with a bounded
  dynamic shape; tested on CPU).
- `clipnorm`, `clipvalue` and `global_clipnorm`: duplicate ids are summed
  first, so the norm and the clipping are those of the dense gradient.
- `weight_decay`: decoupled decay of the rows present in the gradient only
  (as `tfa.optimizers.AdamW` did for sparse gradients).
- `loss_scale_factor`, and the unscaling in
  `keras.optimizers.LossScaleOptimizer` (which `model.compile` adds under the
  `"mixed_float16"` policy). Keras's wrapper checks the gradients for
  inf/NaN through a full-size boolean tensor, though; wrap the optimizer in
  `keras_lookup.optimizers.LossScaleOptimizer` to keep that check sparse too.
- `tf.distribute.MirroredStrategy`: the per-replica slices are all-reduced by
  concatenation and summed per row in `update_step`.

A row that a `keras_lookup.DynamicEmbedding` hands to a new id gets its slots
(moments, momentum, accumulator) reset to their initial value before its
first row-sparse update, so that the new id does not inherit the previous
id's state.

Which paths are dense (whole-table work every step, as in Keras):

- Variables whose gradient is a dense tensor (kernels, biases, and tables
  looked up with a one-hot matmul) get exactly the Keras update.
- `gradient_accumulation_steps`: the accumulator is a full table and the
  accumulated gradient is dense, so the update is Keras's dense one.
- `use_ema`: the moving average is updated over the full table.

Dense reads stay cheap too: a sparse write puts a variable in TensorFlow's
copy-on-read mode, in which every dense read copies the whole variable, so a
layer that gathers from the table's value (`keras.layers.Embedding` does)
would copy the table on every step. After each sparse update the optimizers
switch the model variable back (`tf.raw_ops.DisableCopyOnRead`; TensorFlow
still copies before a sparse write if a dense read holds the buffer), except
under XLA, which manages variable buffers itself.
"""

from keras_lookup.optimizers.lazy import LazyAdagrad, LazyAdam, LazySGD
from keras_lookup.optimizers.loss_scale import LossScaleOptimizer
from keras_lookup.optimizers.rowwise import (
    ROWWISE_VARIABLE_NAMES,
    LazyRowwiseAdagrad,
    LazyRowwiseAdam,
)

__all__ = [
    "LazyAdagrad",
    "LazyAdam",
    "LazyRowwiseAdagrad",
    "LazyRowwiseAdam",
    "LazySGD",
    "LossScaleOptimizer",
    "ROWWISE_VARIABLE_NAMES",
]
