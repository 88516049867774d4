"""Row-sparse ("lazy") Adam, SGD and Adagrad.

See the package docstring (`keras_lookup.optimizers`) for which training paths
stay sparse.
"""

import keras
from keras import ops

from keras_lookup.optimizers._sparse import _LazyMixin, compute_dtype
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

    def _row_slots(self, variable):
        index = self._get_variable_index(variable)
        slots = [self._momentums[index], self._velocities[index]]
        if self.amsgrad:
            slots.append(self._velocity_hats[index])
        return [(slot, 0.0) for slot in slots]


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

    def _row_slots(self, variable):
        if self.momentum == 0:
            return []
        return [(self.momentums[self._get_variable_index(variable)], 0.0)]


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

    def _row_slots(self, variable):
        accumulator = self._accumulators[self._get_variable_index(variable)]
        return [(accumulator, self.initial_accumulator_value)]


for _cls in (LazyAdam, LazySGD, LazyAdagrad):
    _cls.__doc__ = _cls.__doc__.replace("{{base_args}}", BASE_ARGS_DOC)
del _cls
