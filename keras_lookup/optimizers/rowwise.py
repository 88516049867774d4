"""Row-wise Adagrad and Adam: one second-moment number per embedding row."""

import keras
import tensorflow as tf
from keras import ops

from keras_lookup import _sharded
from keras_lookup.optimizers._sparse import _tf_variable, compute_dtype
from keras_lookup.optimizers.lazy import BASE_ARGS_DOC, LazyAdagrad, LazyAdam

# Names of the variables that get one optimizer number per row: the tables of
# `keras.layers.Embedding` and `keras_lookup.Embedding` (and their subclasses).
ROWWISE_VARIABLE_NAMES = ("embeddings",)


class _RowwiseMixin:
    """Keeps one second-moment number per row for embedding tables.

    The slot named `_rowwise_slot` of a 2-D variable named in
    `ROWWISE_VARIABLE_NAMES` has shape `(rows,)` instead of the variable's;
    every other slot and variable is as in the Keras optimizer that follows.
    The choice depends on the variable alone, not on its gradient, so that a
    restored optimizer builds the same slot shapes as the saved one.
    """

    _rowwise_slot = None

    def _is_rowwise(self, variable):
        # Decided by name in `build` (where `variable` is the Keras variable);
        # `update_step` may see the backend variable, whose name differs.
        return self._var_key(variable) in self.__dict__.get("_rowwise_keys", ())

    def add_variable_from_reference(
        self, reference_variable, name=None, initializer="zeros"
    ):
        part = _sharded.part_of(reference_variable)
        table_name = part.logical_name if part else reference_variable.name
        if not (
            name == self._rowwise_slot
            and len(reference_variable.shape) == 2
            and table_name in ROWWISE_VARIABLE_NAMES
        ):
            return super().add_variable_from_reference(
                reference_variable, name=name, initializer=initializer
            )
        keys = self.__dict__.setdefault("_rowwise_keys", set())
        keys.add(self._var_key(reference_variable))
        # On the table's ps task, as Keras places the other slots.
        colocate = self._distribution_strategy.extended.colocate_vars_with
        with colocate(_tf_variable(reference_variable)):
            slot = self.add_variable(
                shape=(int(reference_variable.shape[0]),),
                initializer=initializer,
                dtype=compute_dtype(reference_variable),
                name=f"{reference_variable.path.replace('/', '_')}_{name}",
            )
        return _sharded.mark_slot(self, reference_variable, slot, name)

    def update_step(self, gradient, variable, learning_rate):
        if self._is_rowwise(variable) and not isinstance(gradient, tf.IndexedSlices):
            # A dense gradient of a table (one-hot matmul, gradient
            # accumulation): the row-wise update of every row.
            rows = tf.range(tf.shape(gradient, out_type=tf.int64)[0])
            gradient = tf.IndexedSlices(gradient, rows, tf.shape(gradient))
        return super().update_step(gradient, variable, learning_rate)

    def _sparse_update_step(self, indices, values, variable, learning_rate):
        if not self._is_rowwise(variable):
            return super()._sparse_update_step(indices, values, variable, learning_rate)
        self._rowwise_update_step(indices, values, variable, learning_rate)

    def _rowwise_update_step(self, indices, values, variable, learning_rate):
        raise NotImplementedError


@keras.saving.register_keras_serializable(package="keras_lookup")
class LazyRowwiseAdagrad(_RowwiseMixin, LazyAdagrad):
    """Row-wise Adagrad: one accumulator per embedding row, not per entry.

    Use it to train tables too large for a full-width optimizer slot: Adagrad
    and Adam keep one or two numbers per table entry (a 50M x 64 table of
    11.9 GiB needs 11.9 GiB more for Adagrad, 23.8 GiB for Adam); this keeps
    one number per row (0.2 GiB). It is FBGEMM's `EXACT_ROWWISE_ADAGRAD`, the
    default optimizer of TorchRec's embedding tables
    (`rowwise_adagrad()` in `fbgemm_gpu/codegen/genscript/optimizers.py` of
    pytorch/FBGEMM). For each row `i` present in the batch, with `g` the row's
    gradient (duplicate ids summed first) and `D` the row width:

        acc[i] += sum(g**2) / D
        w[i] -= learning_rate * g / (sqrt(acc[i]) + epsilon)

    Rows that are not looked up do not move. Which variables are row-wise:
    2-D variables named `"embeddings"` (the tables of `keras.layers.Embedding`
    and `keras_lookup.Embedding`), whatever their gradient (a dense gradient
    updates every row). Every other variable (kernels, biases) gets a
    full-width accumulator and exactly `keras.optimizers.Adagrad`'s update
    (`w -= learning_rate * g / sqrt(acc + epsilon)`), lazily for a
    `tf.IndexedSlices` gradient as in `LazyAdagrad`. Decoupled `weight_decay`
    of a table row is FBGEMM's `weight_decay_mode=DECOUPLE`
    (`w[i] = (1 - learning_rate * weight_decay) * w[i] - ...`).

    Args:
        learning_rate: Float >= 0, a
            `keras.optimizers.schedules.LearningRateSchedule`, or a callable
            that takes no arguments and returns the learning rate. Defaults
            to `0.001`.
        initial_accumulator_value: Float >= 0. Starting value of every
            accumulator, row-wise or not. Defaults to `0.0`, as in FBGEMM
            (Keras's `Adagrad` defaults to `0.1`).
        epsilon: Float >= 0. Added to `sqrt(acc)` for the tables, as in
            FBGEMM; added to `acc` for other variables, as in Keras.
            Defaults to `1e-7`.
        {{base_args}}

    Example:

    >>> import numpy as np
    >>> import keras
    >>> import tensorflow as tf
    >>> import keras_lookup.optimizers
    >>> table = keras.Variable(np.zeros((1000, 2), "float32"), name="embeddings")
    >>> optimizer = keras_lookup.optimizers.LazyRowwiseAdagrad(learning_rate=0.1)
    >>> grad = tf.IndexedSlices(
    ...     tf.constant([[3.0, 4.0]]), tf.constant([7]), (1000, 2)
    ... )
    >>> optimizer.apply([grad], [table])
    >>> # acc = (9 + 16) / 2 = 12.5, one number for row 7.
    >>> tuple(optimizer.variables[-1].shape)
    (1000,)
    >>> table.numpy()[7].astype(float).round(4).tolist()
    [-0.0849, -0.1131]
    """

    _rowwise_slot = "accumulator"

    def __init__(
        self,
        learning_rate=0.001,
        initial_accumulator_value=0.0,
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

    def _rowwise_update_step(self, indices, values, variable, learning_rate):
        acc_var = self._accumulators[self._get_variable_index(variable)]
        acc = self._gather(acc_var, indices) + ops.mean(ops.square(values), axis=1)
        self._scatter(acc_var, indices, acc)
        multiplier = learning_rate / (ops.sqrt(acc) + self.epsilon)
        delta = values * multiplier[:, None]
        self._subtract_rows(variable, indices, delta, learning_rate)


@keras.saving.register_keras_serializable(package="keras_lookup")
class LazyRowwiseAdam(_RowwiseMixin, LazyAdam):
    """Adam with a full first moment and one second moment per embedding row.

    Use it where Adam's two full-width slots do not fit: for a table this
    keeps the first moment per entry and the second moment per row, so the
    optimizer state is one table plus one number a row instead of two tables.
    It is FBGEMM's `PARTIAL_ROWWISE_ADAM` (`partial_rowwise_adam()` in
    `fbgemm_gpu/codegen/genscript/optimizers.py` of pytorch/FBGEMM). For each
    row `i` present in the batch, with `g` the row's gradient (duplicate ids
    summed first), `D` the row width and `t = iterations + 1`:

        m[i] = beta_1 * m[i] + (1 - beta_1) * g
        v[i] = beta_2 * v[i] + (1 - beta_2) * sum(g**2) / D
        w[i] -= learning_rate * (m[i] / (1 - beta_1**t))
                / (sqrt(v[i] / (1 - beta_2**t)) + epsilon)

    Rows that are not looked up, and their moments, do not move (the "lazy"
    Adam of `LazyAdam`; FBGEMM updates only the rows in the batch too). Which
    variables are row-wise: 2-D variables named `"embeddings"` (the tables of
    `keras.layers.Embedding` and `keras_lookup.Embedding`), whatever their
    gradient (a dense gradient updates every row). Every other variable
    (kernels, biases) gets full-width moments and exactly
    `keras.optimizers.Adam`'s update, lazily for a `tf.IndexedSlices`
    gradient as in `LazyAdam`. Decoupled `weight_decay` is FBGEMM's
    (`w -= learning_rate * weight_decay * w`).

    Args:
        learning_rate: Float >= 0, a
            `keras.optimizers.schedules.LearningRateSchedule`, or a callable
            that takes no arguments and returns the learning rate. Defaults
            to `0.001`.
        beta_1: Float in [0, 1). Decay rate of the first moment. Defaults to
            `0.9`.
        beta_2: Float in [0, 1). Decay rate of the second moment. Defaults
            to `0.999`.
        epsilon: Float >= 0. Added to the bias-corrected `sqrt(v)` of the
            tables, as in FBGEMM; Keras's "epsilon hat" for other variables.
            Defaults to `1e-7`.
        {{base_args}}

    Example:

    >>> import numpy as np
    >>> import keras
    >>> import tensorflow as tf
    >>> import keras_lookup.optimizers
    >>> table = keras.Variable(np.zeros((1000, 2), "float32"), name="embeddings")
    >>> optimizer = keras_lookup.optimizers.LazyRowwiseAdam(learning_rate=0.1)
    >>> grad = tf.IndexedSlices(
    ...     tf.constant([[3.0, 4.0]]), tf.constant([7]), (1000, 2)
    ... )
    >>> optimizer.apply([grad], [table])
    >>> [tuple(v.shape) for v in optimizer.variables[2:]]  # m, then v per row
    [(1000, 2), (1000,)]
    >>> table.numpy()[7].astype(float).round(4).tolist()
    [-0.0849, -0.1131]
    """

    _rowwise_slot = "velocity"

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
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
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=False,
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

    def get_config(self):
        config = super().get_config()
        del config["amsgrad"]  # FBGEMM's row-wise Adam has no AMSGrad.
        return config

    def _rowwise_update_step(self, indices, values, variable, learning_rate):
        dtype = compute_dtype(variable)
        step = ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        m_var, v_var = self._momentums[index], self._velocities[index]
        m = self._gather(m_var, indices)
        m = m + (values - m) * (1 - beta_1)
        v = self._gather(v_var, indices)
        v = v + (ops.mean(ops.square(values), axis=1) - v) * (1 - beta_2)
        self._scatter(m_var, indices, m)
        self._scatter(v_var, indices, v)
        m_hat = m / (1 - ops.power(beta_1, step))
        v_hat = v / (1 - ops.power(beta_2, step))
        delta = learning_rate * m_hat / (ops.sqrt(v_hat) + self.epsilon)[:, None]
        self._subtract_rows(variable, indices, delta, learning_rate)


for _cls in (LazyRowwiseAdagrad, LazyRowwiseAdam):
    _cls.__doc__ = _cls.__doc__.replace("{{base_args}}", BASE_ARGS_DOC)
del _cls
