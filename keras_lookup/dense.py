import keras
import tensorflow as tf

from keras_lookup import _checks, _layer_utils


@keras.saving.register_keras_serializable(package="keras_lookup")
class Dense(keras.layers.Layer):
    """Densely-connected layer, `activation(inputs @ kernel + bias)`, for dense
    and sparse inputs.

    The multiplying side of the lookup/matmul pair: on a one-hot matrix of ids
    it gives the same numbers as `keras_lookup.Embedding` on the ids
    (`one_hot(ids) @ W == W[ids]`). It takes the arguments of
    `keras.layers.Dense` under the same names, and also a `tf.SparseTensor`
    batch (a sparse one-hot, multi-hot or count matrix), which it multiplies
    with `tf.sparse.sparse_dense_matmul` without ever densifying it.

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
        **kwargs,
    ):
        units = _checks.check_positive_int("units", units)
        use_bias = _checks.check_bool("use_bias", use_bias)
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.units = units
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.supports_masking = True

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                f"Layer '{self.name}' needs a known last input dimension to build "
                f"its kernel. Received input_shape={tuple(input_shape)}"
            )
        _layer_utils.add_kernel_and_bias(self, (input_dim, self.units))
        self.built = True

    def call(self, inputs):
        if isinstance(inputs, tf.SparseTensor):
            x = tf.sparse.sparse_dense_matmul(inputs, self.kernel)
        else:
            x = tf.tensordot(inputs, self.kernel, axes=[[inputs.shape.rank - 1], [0]])
        if self.bias is not None:
            x = tf.nn.bias_add(x, self.bias)
        return self.activation(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            _layer_utils.config_of(
                self,
                ["units", *_layer_utils.KERNEL_AND_BIAS_ARGS],
            )
        )
        return config
