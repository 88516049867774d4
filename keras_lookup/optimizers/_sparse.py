"""The row-sparse machinery every keras_lookup optimizer shares.

`_LazyMixin` routes `tf.IndexedSlices` gradients to a row-wise update and
leaves everything else to the Keras optimizer after it in the MRO; half
tables (`table_dtype`) are updated in float32 and written back with
stochastic rounding. See the package docstring (`keras_lookup.optimizers`)
for which training paths stay sparse.
"""

import random

import keras
import tensorflow as tf
from keras import ops

from keras_lookup import _checks, _lookup, _sharded, _tables

# Tables stored in these dtypes (`table_dtype`) are updated in float32 and
# written back with stochastic rounding; their slots are float32.
HALF_DTYPES = _lookup.HALF_DTYPES
# float32 mantissa bits that each half dtype lacks.
_DROPPED_BITS = {tf.bfloat16: 16, tf.float16: 13}


def is_half(variable):
    return tf.as_dtype(variable.dtype) in HALF_DTYPES


def _rounds_rows(variable):
    # Half variables with rows are updated row by row and rounded
    # stochastically, whatever their gradient; half scalars are left to Keras.
    return is_half(variable) and len(variable.shape) > 0


def compute_dtype(variable):
    """The dtype a variable's update is computed in: float32 for half tables."""
    return tf.float32 if is_half(variable) else variable.dtype


def stochastic_round(values, dtype, seed):
    """Rounds float32 `values` to `dtype` (bfloat16 or float16), unbiased.

    Each value goes to one of its two neighbours in `dtype`, the upper one
    with probability (distance from the lower) / (their spacing), so the
    expected result is the float32 value itself; rounding to nearest would
    lose every update smaller than half the spacing. `seed` is a stateless
    random seed, shape `(2,)`: the same seed gives the same rounding.

    The noise is added below the bits that `dtype` keeps and the dropped bits
    are truncated (magnitude towards zero), FBGEMM's stochastic rounding.
    Below float16's normal range (2**-14) its spacing is fixed at 2**-24, so
    there the value is rounded on that grid instead.
    """
    dtype = tf.as_dtype(dtype)
    values = tf.convert_to_tensor(values, tf.float32)
    dropped = _DROPPED_BITS[dtype]
    # 16 random bits an entry, two from each full-range 32-bit draw (half the
    # cost of drawing bounded integers), shifted down to the dropped bits.
    count = tf.size(values)
    words = tf.random.stateless_uniform(
        [(count + 1) // 2], seed, minval=None, maxval=None, dtype=tf.uint32
    )
    noise = tf.cast(tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:count], tf.int32)
    noise = tf.reshape(tf.bitwise.right_shift(noise, 16 - dropped), tf.shape(values))
    bits = tf.bitcast(values, tf.int32) + noise
    rounded = tf.bitcast(tf.bitwise.bitwise_and(bits, -(2**dropped)), tf.float32)
    if dtype == tf.float16:
        unit = 2.0**-24
        uniform = tf.cast(noise, tf.float32) * 2.0**-dropped
        subnormal = tf.floor(values / unit + uniform) * unit
        rounded = tf.where(tf.abs(values) < 2.0**-14, subnormal, rounded)
    rounded = tf.where(tf.math.is_finite(values), rounded, values)
    return tf.cast(rounded, dtype)


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def _disable_copy_on_read(variable):
    # A sparse write puts a variable in TensorFlow's copy-on-read mode, where
    # every dense read (ReadVariableOp) copies the whole variable: a layer that
    # gathers from the table's value, like `keras.layers.Embedding`, would copy
    # the table on every step. Leaving the mode is safe: a later sparse write
    # copies the buffer first if a dense read still holds it. XLA has no
    # kernel for the op, and handles variable buffers itself.
    if _checks.in_xla_context() or not hasattr(tf.raw_ops, "DisableCopyOnRead"):
        return
    tf.raw_ops.DisableCopyOnRead(resource=_tf_variable(variable).handle)


def _unique_rows(gradient):
    """Returns `(indices, values)` with each row index once, values summed."""
    indices, positions = tf.unique(gradient.indices)

    def summed():
        return tf.math.unsorted_segment_sum(
            gradient.values, positions, tf.shape(indices)[0]
        )

    # The sum is the slow part (TensorFlow's CPU segment sum is serial: 1.2 ms
    # for 8k rows of 64). Where the ids are already distinct, as in every
    # gradient of `tf.nn.embedding_lookup_sparse`, `tf.unique` kept their
    # order and there is nothing to sum.
    distinct = tf.equal(tf.size(indices), tf.size(gradient.indices))
    values = tf.cond(distinct, lambda: tf.identity(gradient.values), summed)
    return indices, values


class _DivisibleSlices(tf.IndexedSlices):
    def __truediv__(self, divisor):
        return tf.IndexedSlices(self.values / divisor, self.indices, self.dense_shape)


def _with_values(slices, values):
    return tf.IndexedSlices(values, slices.indices, slices.dense_shape)


class _LazyMixin:
    """Routes `tf.IndexedSlices` gradients to `_sparse_update_step`.

    Everything else (dense gradients, accumulation, EMA) is left to the Keras
    optimizer that follows this mixin in the MRO.
    """

    # Keys (`_var_key`) of the variables whose gradient is sparse in the
    # step being traced, and of those among them that weight decay applies to.
    _lazy_sparse_keys = frozenset()
    _lazy_decay_keys = frozenset()
    # Half tables are written back with stochastic rounding; False rounds to
    # nearest instead (what Keras's optimizers do), for comparisons only.
    _stochastic_rounding = True

    def build(self, variables):
        # `model.fit` builds the optimizer while tracing its first step, where
        # the slots' initializers are deferred into the step's graph; there
        # they cannot reuse memory TensorFlow pooled when the table was
        # initialized, and the V=1M benchmark peaked at 2.67 GiB instead of
        # 2.13 GiB. Creating them eagerly, as a build before `fit` would, avoids
        # that. In place: a full-width slot of a large table is filled where it
        # lies, not materialized and then copied (2x the slot at its creation).
        with tf.init_scope(), _tables.in_place():
            super().build(variables)
            if any(is_half(v) for v in variables):
                self._add_rounding_seed()

    def _add_rounding_seed(self):
        # Drawn from Python's generator, which `keras.utils.set_random_seed`
        # seeds, and kept as a variable, so that a restored optimizer goes on
        # rounding as the saved one would have.
        self._rounding_seed = self.add_variable(
            shape=(),
            dtype="int64",
            initializer=keras.initializers.Constant(random.randint(1, 2**31 - 1)),
            name="stochastic_rounding_seed",
        )

    def add_variable_from_reference(
        self, reference_variable, name=None, initializer="zeros"
    ):
        if is_half(reference_variable):
            # The slots of a half table stay float32 (Keras would make them
            # half), beside the table as Keras places its slots.
            with self._distribution_strategy.extended.colocate_vars_with(
                _tf_variable(reference_variable)
            ):
                slot = self.add_variable(
                    shape=reference_variable.shape,
                    initializer=initializer,
                    dtype="float32",
                    name=f"{reference_variable.path.replace('/', '_')}_{name or 'var'}",
                )
        else:
            slot = super().add_variable_from_reference(
                reference_variable, name=name, initializer=initializer
            )
        # A slot of a sharded table's part is that part of the logical slot.
        return _sharded.mark_slot(self, reference_variable, slot, name)

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        children = super()._trackable_children(save_type, **kwargs)
        if save_type != "checkpoint":
            return children
        # Slots of a sharded table's parts are saved as the logical slot.
        cache = self.__dict__.setdefault("_keras_lookup_logical_lists", {})
        return _sharded.logical_children(children, cache)

    def apply(self, grads, trainable_variables=None):
        if self.loss_scale_factor is not None:
            # Keras unscales with `g / loss_scale_factor`, which plain
            # `tf.IndexedSlices` do not support.
            grads = [
                _DivisibleSlices(g.values, g.indices, g.dense_shape)
                if isinstance(g, tf.IndexedSlices)
                else g
                for g in grads
            ]
        return super().apply(grads, trainable_variables)

    def _backend_apply_gradients(self, grads, trainable_variables):
        # Recorded at trace time for `_apply_weight_decay` and `update_step`.
        # Never reset: under `MirroredStrategy` each replica thread writes the
        # same value, and a reset by one could race with another's update.
        sparse, decay = [], []
        if not self.gradient_accumulation_steps:
            for grad, variable in zip(grads, trainable_variables, strict=True):
                if isinstance(grad, tf.IndexedSlices) or _rounds_rows(variable):
                    sparse.append(self._var_key(variable))
                    if self.weight_decay is not None and self._use_weight_decay(
                        variable
                    ):
                        decay.append(self._var_key(variable))
        self._lazy_sparse_keys = frozenset(sparse)
        self._lazy_decay_keys = frozenset(decay)
        super()._backend_apply_gradients(grads, trainable_variables)

    def _apply_weight_decay(self, variables):
        # Sparse variables decay row by row inside `update_step`.
        keys = self._lazy_sparse_keys
        super()._apply_weight_decay(
            [v for v in variables if self._var_key(v) not in keys]
        )

    def _clip_gradients(self, grads):
        if not any(isinstance(g, tf.IndexedSlices) for g in grads):
            return super()._clip_gradients(grads)
        clipnorm = self.clipnorm and self.clipnorm > 0
        global_clipnorm = self.global_clipnorm and self.global_clipnorm > 0
        clipvalue = self.clipvalue and self.clipvalue > 0
        if not (clipnorm or global_clipnorm or clipvalue):
            return grads
        # Sum duplicate ids first: the norm and the clipped entries of a
        # slices gradient are then those of its dense equivalent.
        grads = [
            tf.IndexedSlices(*reversed(_unique_rows(g)), g.dense_shape)
            if isinstance(g, tf.IndexedSlices)
            else g
            for g in grads
        ]
        if clipnorm:
            clip = self._clip_by_norm
        elif global_clipnorm:
            tensors = [
                g.values if isinstance(g, tf.IndexedSlices) else g
                for g in grads
                if g is not None
            ]
            # Same arithmetic as Keras's `clip_by_global_norm`.
            norm = ops.sqrt(
                ops.sum(ops.stack([ops.sum(ops.square(t)) for t in tensors]))
            )
            scale_for_finite = self.global_clipnorm * ops.minimum(
                1.0 / norm, 1.0 / self.global_clipnorm
            )
            scale = scale_for_finite + (norm - norm)

            def clip(t):
                return t * scale
        else:

            def clip(t):
                return ops.clip(t, -self.clipvalue, self.clipvalue)

        return [
            None
            if g is None
            else _with_values(g, clip(g.values))
            if isinstance(g, tf.IndexedSlices)
            else clip(g)
            for g in grads
        ]

    def update_step(self, gradient, variable, learning_rate):
        if not isinstance(gradient, tf.IndexedSlices):
            if not _rounds_rows(variable):
                return super().update_step(gradient, variable, learning_rate)
            # A dense gradient of a half table (one-hot matmul, `reverse=True`):
            # every row, updated in float32 and rounded stochastically.
            rows = tf.range(tf.shape(gradient, out_type=tf.int64)[0])
            gradient = tf.IndexedSlices(gradient, rows, tf.shape(gradient))
        indices, values = _unique_rows(gradient)
        self._reset_reassigned_rows(variable, indices)
        dtype = compute_dtype(variable)
        values = ops.cast(values, dtype)
        learning_rate = ops.cast(learning_rate, dtype)
        self._sparse_update_step(indices, values, variable, learning_rate)
        _disable_copy_on_read(variable)

    def _sparse_update_step(self, indices, values, variable, learning_rate):
        raise NotImplementedError

    def _row_slots(self, variable):
        """`[(slot, initial value)]`: the per-row state of `variable`."""
        return []

    def _reset_reassigned_rows(self, variable, indices):
        # A `DynamicEmbedding` marks the rows it hands to a new id in a
        # boolean variable beside its table (`_keras_lookup_reassigned`):
        # before their first update, their slots go back to their initial
        # value, so that a new id starts with fresh moments, and the mark is
        # cleared.
        marks = getattr(_tf_variable(variable), "_keras_lookup_reassigned", None)
        if marks is None:
            return
        rows = tf.boolean_mask(indices, tf.gather(marks, indices))
        for slot, initial in self._row_slots(variable):
            shape = tf.concat([tf.shape(rows), tf.shape(slot)[1:]], 0)
            fill = tf.fill(shape, tf.constant(initial, slot.dtype))
            self.assign(slot, tf.IndexedSlices(fill, rows))
        marks.scatter_update(tf.IndexedSlices(tf.zeros(tf.shape(rows), tf.bool), rows))

    def _gather(self, variable, indices):
        rows = tf.gather(_tf_variable(variable), indices)
        return tf.cast(rows, tf.float32) if is_half(variable) else rows

    def _scatter(self, variable, indices, rows):
        if is_half(variable) and self._stochastic_rounding:
            rows = stochastic_round(rows, variable.dtype, self._rounding_key(variable))
        self.assign(variable, tf.IndexedSlices(rows, indices))

    def _rounding_key(self, variable):
        # A fresh stateless seed for each step and variable; the same on every
        # replica, so that mirrored copies of a table stay identical.
        step = tf.cast(_tf_variable(self.iterations), tf.int64)
        count = len(self._trainable_variables)
        counter = step * count + self._get_variable_index(variable)
        seed = tf.convert_to_tensor(_tf_variable(self._rounding_seed))
        return tf.stack([seed, counter])

    def _subtract_rows(self, variable, indices, delta, learning_rate):
        """`variable[indices] -= delta`, after weight decay of those rows.

        A half table's rows are read in float32, updated, and written back
        with stochastic rounding (`_scatter`).
        """
        decay = self._var_key(variable) in self._lazy_decay_keys
        if not decay and not is_half(variable):
            self.assign_sub(variable, tf.IndexedSlices(delta, indices))
            return
        rows = self._gather(variable, indices)
        if decay:
            wd = ops.cast(self.weight_decay, rows.dtype)
            rows = rows - rows * wd * learning_rate
        self._scatter(variable, indices, rows - delta)
