import keras

from keras_lookup import _checks


@keras.saving.register_keras_serializable(package="keras_lookup")
class Dense(keras.layers.Dense):
    """Densely-connected layer, `activation(inputs @ kernel + bias)`, for dense
    and sparse inputs.

    The multiplying side of the lookup/matmul pair: on a one-hot matrix of ids
    it gives the same numbers as `keras_lookup.Embedding` on the ids
    (`one_hot(ids) @ W == W[ids]`). It *is* `keras.layers.Dense`, subclassed
    and registered under `keras_lookup`, so LoRA (`lora_rank`,
    `enable_lora`), quantization (`quantize("int8")` and the rest), input
    specs and config keys are Keras's own. On a rank-2 `tf.SparseTensor`
    (a sparse one-hot, multi-hot or count matrix) Keras's TensorFlow backend
    multiplies with an embedding-style lookup of the kernel rows the batch
    touches, so the kernel's gradient is a row-sparse `tf.IndexedSlices` and
    `keras_lookup.optimizers.LazyAdam` updates only those rows: training cost
    then does not grow with the number of input columns.

    Args:
        units: Integer. Dimensionality of the output space.
        activation: Activation function (name or callable). `None` means
            linear, `a(x) = x`.
        use_bias: Boolean. Whether the layer adds a bias vector.
        kernel_initializer: Initializer for the `kernel` weights matrix.
        bias_initializer: Initializer for the bias vector.
        kernel_regularizer: Regularizer function applied to `kernel`.
        bias_regularizer: Regularizer function applied to the bias vector.
        activity_regularizer: Regularizer function applied to the output.
        kernel_constraint: Constraint function applied to `kernel`.
        bias_constraint: Constraint function applied to the bias vector.
        lora_rank: Optional integer. Enables LoRA with this rank (Keras's).
        lora_alpha: Optional number. Scales the LoRA delta by
            `lora_alpha / lora_rank` (Keras's).

    Call arguments:
        inputs: A dense tensor of rank >= 2, or a rank-2 `tf.SparseTensor`.

    Input shape:
        `(batch, ..., input_dim)`; sparse inputs `(batch, input_dim)`.

    Output shape:
        `(batch, ..., units)`.

    Example:

    >>> import numpy as np
    >>> import tensorflow as tf
    >>> import keras_lookup
    >>> layer = keras_lookup.Dense(2, use_bias=False)
    >>> layer.build((None, 3))
    >>> layer.set_weights([np.array([[1, 2], [3, 4], [5, 6]], "float32")])
    >>> one_hot = tf.sparse.from_dense(tf.one_hot([2, 0], 3))
    >>> layer(one_hot).numpy().tolist()
    [[5.0, 6.0], [1.0, 2.0]]
    """

    def __init__(
        self,
        units,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        lora_rank=None,
        lora_alpha=None,
        **kwargs,
    ):
        # Keras checks `units` only from 3.13 on, and `use_bias` and
        # `lora_rank` not at all; these checks are ours, so that the errors
        # are the same on every supported Keras.
        units = _checks.check_positive_int("units", units)
        use_bias = _checks.check_bool("use_bias", use_bias)
        lora_rank = _checks.check_lora_rank(lora_rank)
        super().__init__(
            units,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            **kwargs,
        )

    def quantize(self, mode=None, type_check=True, config=None):
        # Keras refuses to quantize subclasses of its Dense; this one adds no
        # state and leaves `call` to Keras, so Keras's quantized paths apply as
        # they are. Subclasses of this class are refused the same way.
        if type_check and type(self) is not Dense:
            raise self._not_implemented_error(self.quantize)
        super().quantize(mode, type_check=False, config=config)
