"""Row-sparse ("lazy") Adam, SGD and Adagrad.

See the package docstring (`keras_lookup.optimizers`) for which training paths
stay sparse.
"""

import random

import keras
import tensorflow as tf
from keras import ops

from keras_lookup import _checks, _lookup, _tables
from keras_lookup.optimizers._validation import (
    check_bool,
    check_learning_rate,
    check_non_negative,
    check_unit_interval,
)

BASE_ARGS_DOC = """weight_decay: Float or `None`. If set, decoupled weight decay
            (`variable -= variable * weight_decay * learning_rate`) is
            applied before each update. For a sparse gradient only the rows
            present in it decay.
        clipnorm: Float or `None`. If set, the gradient of each variable is
            clipped so that its norm is no higher than this value.
        clipvalue: Float or `None`. If set, each gradient entry is clipped to
            `[-clipvalue, clipvalue]`.
        global_clipnorm: Float or `None`. If set, all gradients are scaled so
            that their global norm is no higher than this value.
        use_ema: Boolean. Whether to keep an exponential moving average of
            the weights (a full-table update every step). Defaults to `False`.
        ema_momentum: Float. Momentum of the moving average, used when
            `use_ema=True`. Defaults to `0.99`.
        ema_overwrite_frequency: Integer or `None`. How often (in steps) the
            weights are overwritten with their moving average.
        loss_scale_factor: Float or `None`. If set, the loss is multiplied by
            it and the gradients divided by it (sparse gradients stay sparse).
        gradient_accumulation_steps: Integer or `None`. If set, gradients are
            accumulated over this many steps in full-size accumulators, and
            the update is Keras's dense one.
        name: String. Name of the optimizer and prefix of its variables."""


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
        if not is_half(reference_variable):
            return super().add_variable_from_reference(
                reference_variable, name=name, initializer=initializer
            )
        # The slots of a half table stay float32 (Keras would make them half).
        with self._distribution_strategy.extended.colocate_vars_with(
            _tf_variable(reference_variable)
        ):
            return self.add_variable(
                shape=reference_variable.shape,
                initializer=initializer,
                dtype="float32",
                name=f"{reference_variable.path.replace('/', '_')}_{name or 'var'}",
            )

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
        dtype = compute_dtype(variable)
        values = ops.cast(values, dtype)
        learning_rate = ops.cast(learning_rate, dtype)
        self._sparse_update_step(indices, values, variable, learning_rate)
        _disable_copy_on_read(variable)

    def _sparse_update_step(self, indices, values, variable, learning_rate):
        raise NotImplementedError

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


@keras.saving.register_keras_serializable(package="keras_lookup")
class LazyAdam(_LazyMixin, keras.optimizers.Adam):
    """Adam that updates only the embedding rows present in the batch.

    Use it instead of `keras.optimizers.Adam` to train large embedding tables:
    Keras's Adam densifies the `tf.IndexedSlices` gradient of a lookup and
    touches every row of the table and of both moments on every step, so a
    step costs O(vocabulary); here a step costs O(ids in the batch).

    For a variable whose gradient is `tf.IndexedSlices`, duplicate ids are
    summed, and only those rows of the variable and of its first and second
    moments are updated, with Adam's bias correction taken from the global
    step (`iterations + 1`). Rows that are not looked up, and their moments,
    do not move: unlike Adam, their momentum does not keep pushing them.
    This is the "lazy Adam" of `tf.compat.v1.train.LazyAdamOptimizer` and
    `tfa.optimizers.LazyAdam`. Variables with a dense gradient get exactly
    `keras.optimizers.Adam`'s update. Under the `"mixed_float16"` policy, pass
    `keras_lookup.optimizers.LossScaleOptimizer(LazyAdam())` to `compile` so
    that the loss scaling's inf/NaN check stays sparse too.

    Args:
        learning_rate: Float >= 0, a
            `keras.optimizers.schedules.LearningRateSchedule`, or a callable
            that takes no arguments and returns the learning rate. Defaults
            to `0.001`.
        beta_1: Float in [0, 1). Decay rate of the first-moment estimates.
            Defaults to `0.9`.
        beta_2: Float in [0, 1). Decay rate of the second-moment estimates.
            Defaults to `0.999`.
        epsilon: Float >= 0. Small constant for numerical stability
            ("epsilon hat" in Kingma and Ba). Defaults to `1e-7`.
        amsgrad: Boolean. Whether to apply the AMSGrad variant (the running
            maximum of the second moment is also updated lazily). Defaults to
            `False`.
        {{base_args}}

    Example:

    >>> import numpy as np
    >>> import keras
    >>> import tensorflow as tf
    >>> import keras_lookup.optimizers
    >>> table = keras.Variable(np.ones((1000, 2), "float32"))
    >>> optimizer = keras_lookup.optimizers.LazyAdam(learning_rate=0.1)
    >>> # Id 3 twice in the batch: its two gradient rows are summed.
    >>> grad = tf.IndexedSlices(tf.ones((2, 2)), tf.constant([3, 3]), (1000, 2))
    >>> optimizer.apply([grad], [table])
    >>> table.numpy()[[0, 3]].astype(float).round(3).tolist()
    [[1.0, 1.0], [0.9, 0.9]]
    >>> model = keras.Sequential(
    ...     [
    ...         keras.Input((8,), dtype="int32"),
    ...         keras_lookup.Embedding(1000, 16),
    ...         keras.layers.GlobalAveragePooling1D(),
    ...         keras.layers.Dense(1),
    ...     ]
    ... )
    >>> model.compile(optimizer=keras_lookup.optimizers.LazyAdam(), loss="mse")
    >>> ids = np.random.randint(0, 1000, (64, 8))
    >>> history = model.fit(ids, np.ones((64, 1)), verbose=0)
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        amsgrad=False,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        **kwargs,
    ):
        learning_rate = check_learning_rate(learning_rate)
        beta_1 = check_unit_interval("beta_1", beta_1, include_one=False)
        beta_2 = check_unit_interval("beta_2", beta_2, include_one=False)
        epsilon = check_non_negative("epsilon", epsilon)
        amsgrad = check_bool("amsgrad", amsgrad)
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=amsgrad,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            **kwargs,
        )

    def _sparse_update_step(self, indices, values, variable, learning_rate):
        dtype = compute_dtype(variable)
        local_step = ops.cast(self.iterations + 1, dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, dtype), local_step)
        alpha = learning_rate * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)

        index = self._get_variable_index(variable)
        m_var, v_var = self._momentums[index], self._velocities[index]
        # Same arithmetic as Keras's Adam, restricted to the rows present.
        m = self._gather(m_var, indices)
        m = m + (values - m) * (1 - self.beta_1)
        v = self._gather(v_var, indices)
        v = v + (ops.square(values) - v) * (1 - self.beta_2)
        self._scatter(m_var, indices, m)
        self._scatter(v_var, indices, v)
        if self.amsgrad:
            v_hat_var = self._velocity_hats[index]
            v = ops.maximum(self._gather(v_hat_var, indices), v)
            self._scatter(v_hat_var, indices, v)
        delta = (m * alpha) / (ops.sqrt(v) + self.epsilon)
        self._subtract_rows(variable, indices, delta, learning_rate)


@keras.saving.register_keras_serializable(package="keras_lookup")
class LazySGD(_LazyMixin, keras.optimizers.SGD):
    """SGD (with momentum) that updates only the embedding rows in the batch.

    Plain SGD is already row-sparse in effect, but Keras computes it through a
    dense gradient; with `momentum > 0`, Keras also decays and applies the
    momentum of every row on every step. Here, for a `tf.IndexedSlices`
    gradient, duplicate ids are summed and only those rows of the variable and
    of the momentum are updated (the momentum of rows that are not looked up
    is neither decayed nor applied, as in TensorFlow 1's sparse momentum).
    Variables with a dense gradient get exactly `keras.optimizers.SGD`'s
    update.

    Args:
        learning_rate: Float >= 0, a
            `keras.optimizers.schedules.LearningRateSchedule`, or a callable
            that takes no arguments and returns the learning rate. Defaults
            to `0.01`.
        momentum: Float in [0, 1]. Momentum (`m = momentum * m - lr * g`,
            `w += m`); `0` for plain SGD. Defaults to `0.0`.
        nesterov: Boolean. Whether to apply Nesterov momentum
            (`w += momentum * m - lr * g`). Defaults to `False`.
        {{base_args}}

    Example:

    >>> import numpy as np
    >>> import keras
    >>> import tensorflow as tf
    >>> import keras_lookup.optimizers
    >>> table = keras.Variable(np.zeros((1000, 2), "float32"))
    >>> optimizer = keras_lookup.optimizers.LazySGD(learning_rate=0.1, momentum=0.9)
    >>> grad = tf.IndexedSlices(tf.ones((1, 2)), tf.constant([3]), (1000, 2))
    >>> optimizer.apply([grad], [table])
    >>> grad = tf.IndexedSlices(tf.ones((1, 2)), tf.constant([5]), (1000, 2))
    >>> optimizer.apply([grad], [table])
    >>> # Row 3 keeps -0.1: its momentum is not applied while it is not looked up.
    >>> table.numpy()[[3, 5]].astype(float).round(3).tolist()
    [[-0.1, -0.1], [-0.1, -0.1]]
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.0,
        nesterov=False,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        **kwargs,
    ):
        learning_rate = check_learning_rate(learning_rate)
        momentum = check_unit_interval("momentum", momentum, include_one=True)
        nesterov = check_bool("nesterov", nesterov)
        super().__init__(
            learning_rate=learning_rate,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            **kwargs,
        )

    def _sparse_update_step(self, indices, values, variable, learning_rate):
        step = values * learning_rate
        if self.momentum == 0:
            self._subtract_rows(variable, indices, step, learning_rate)
            return
        momentum = ops.cast(self.momentum, compute_dtype(variable))
        m_var = self.momentums[self._get_variable_index(variable)]
        m = self._gather(m_var, indices) * momentum - step
        self._scatter(m_var, indices, m)
        if self.nesterov:
            self._subtract_rows(variable, indices, step - m * momentum, learning_rate)
        else:
            self._subtract_rows(variable, indices, -m, learning_rate)


@keras.saving.register_keras_serializable(package="keras_lookup")
class LazyAdagrad(_LazyMixin, keras.optimizers.Adagrad):
    """Adagrad that updates only the embedding rows present in the batch.

    Adagrad leaves rows with a zero gradient unchanged, so its lazy update is
    the exact Adagrad update; Keras, however, computes it through a dense
    gradient over the whole table. Here, for a `tf.IndexedSlices` gradient,
    duplicate ids are summed and only those rows of the variable and of the
    accumulator are read and written. Variables with a dense gradient get
    exactly `keras.optimizers.Adagrad`'s update.

    Args:
        learning_rate: Float >= 0, a
            `keras.optimizers.schedules.LearningRateSchedule`, or a callable
            that takes no arguments and returns the learning rate. Defaults
            to `0.001`.
        initial_accumulator_value: Float >= 0. Starting value of the
            accumulators (the per-entry sums of squared gradients). Defaults
            to `0.1`.
        epsilon: Float >= 0. Small constant for numerical stability.
            Defaults to `1e-7`.
        {{base_args}}

    Example:

    >>> import numpy as np
    >>> import keras
    >>> import tensorflow as tf
    >>> import keras_lookup.optimizers
    >>> table = keras.Variable(np.zeros((1000, 2), "float32"))
    >>> optimizer = keras_lookup.optimizers.LazyAdagrad(learning_rate=0.1)
    >>> grad = tf.IndexedSlices(tf.ones((2, 2)), tf.constant([3, 7]), (1000, 2))
    >>> optimizer.apply([grad], [table])
    >>> table.numpy()[[0, 3, 7]].astype(float).round(3).tolist()
    [[0.0, 0.0], [-0.095, -0.095], [-0.095, -0.095]]
    """

    def __init__(
        self,
        learning_rate=0.001,
        initial_accumulator_value=0.1,
        epsilon=1e-7,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        **kwargs,
    ):
        learning_rate = check_learning_rate(learning_rate)
        initial_accumulator_value = check_non_negative(
            "initial_accumulator_value", initial_accumulator_value
        )
        epsilon = check_non_negative("epsilon", epsilon)
        super().__init__(
            learning_rate=learning_rate,
            initial_accumulator_value=initial_accumulator_value,
            epsilon=epsilon,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            **kwargs,
        )

    def _sparse_update_step(self, indices, values, variable, learning_rate):
        acc_var = self._accumulators[self._get_variable_index(variable)]
        acc = self._gather(acc_var, indices) + ops.square(values)
        self._scatter(acc_var, indices, acc)
        delta = (learning_rate * values) / ops.sqrt(acc + self.epsilon)
        self._subtract_rows(variable, indices, delta, learning_rate)


for _cls in (LazyAdam, LazySGD, LazyAdagrad):
    _cls.__doc__ = _cls.__doc__.replace("{{base_args}}", BASE_ARGS_DOC)
del _cls
