"""A loss-scale wrapper whose inf/NaN check keeps sparse gradients sparse."""

import keras
import numpy as np
import tensorflow as tf

from keras_lookup.optimizers._validation import is_real


@keras.saving.register_keras_serializable(package="keras_lookup")
class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """`keras.optimizers.LossScaleOptimizer` with a sparse inf/NaN check.

    Dynamic loss scaling for `"mixed_float16"` training, as in Keras: the loss
    is multiplied by a scale, the gradients divided by it, and a step whose
    gradients hold an inf or NaN is skipped and the scale halved. Keras's
    wrapper checks a `tf.IndexedSlices` gradient through a full-size boolean
    tensor (`ops.isfinite` densifies it), one `(vocabulary, dim)` allocation
    and copy per step; this one checks only the slices' values. Pass it to
    `compile` yourself: `model.compile` wraps the optimizer in Keras's
    `LossScaleOptimizer` under `"mixed_float16"` only when it is not one
    already.

    Args:
        inner_optimizer: A `keras.optimizers.Optimizer`, typically
            `keras_lookup.optimizers.LazyAdam`.
        initial_scale: Float > 0. The starting loss scale. Defaults to
            `2.0**15`.
        dynamic_growth_steps: Integer > 0. The scale doubles after this many
            consecutive steps with finite gradients. Defaults to `2000`.
        name: String. Name of the optimizer.

    Example:

    >>> import keras
    >>> import keras_lookup.optimizers
    >>> optimizer = keras_lookup.optimizers.LossScaleOptimizer(
    ...     keras_lookup.optimizers.LazyAdam()
    ... )
    >>> model = keras.Sequential(
    ...     [keras.Input((8,), dtype="int32"), keras.layers.Embedding(100, 4)]
    ... )
    >>> model.compile(optimizer=optimizer, loss="mse")
    >>> model.optimizer is optimizer
    True
    """

    def __init__(
        self,
        inner_optimizer,
        initial_scale=2.0**15,
        dynamic_growth_steps=2000,
        name=None,
        **kwargs,
    ):
        if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
            raise ValueError(
                "`inner_optimizer` must be a `keras.optimizers.Optimizer`, such "
                "as `keras_lookup.optimizers.LazyAdam()`. Received: "
                f"inner_optimizer={inner_optimizer!r}"
            )
        if not (is_real(initial_scale) and initial_scale > 0):
            raise ValueError(
                "`initial_scale` must be a positive float. Received: "
                f"initial_scale={initial_scale!r}"
            )
        if (
            isinstance(dynamic_growth_steps, (bool, np.bool_))
            or not isinstance(dynamic_growth_steps, (int, np.integer))
            or dynamic_growth_steps <= 0
        ):
            raise ValueError(
                "`dynamic_growth_steps` must be a positive integer. Received: "
                f"dynamic_growth_steps={dynamic_growth_steps!r}"
            )
        super().__init__(
            inner_optimizer,
            initial_scale=float(initial_scale),
            dynamic_growth_steps=int(dynamic_growth_steps),
            name=name,
            **kwargs,
        )

    def check_finite(self, grads):
        # Rows absent from a slices gradient are zeros, hence finite.
        return super().check_finite(
            [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads]
        )
