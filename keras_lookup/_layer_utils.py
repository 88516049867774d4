"""Weight creation and config serialization shared by the layers."""

import keras

_SERIALIZERS = {
    "initializer": keras.initializers.serialize,
    "regularizer": keras.regularizers.serialize,
    "constraint": keras.constraints.serialize,
    "activation": keras.activations.serialize,
}


def config_of(layer, names):
    """`{name: getattr(layer, name)}`, serializing initializers and friends."""
    config = {}
    for name in names:
        value = getattr(layer, name)
        serialize = _SERIALIZERS.get(name.rsplit("_", 1)[-1])
        config[name] = serialize(value) if serialize else value
    return config


def add_kernel_and_bias(layer, kernel_shape):
    """Creates `layer.kernel` and, when `layer.use_bias`, `layer.bias`."""
    layer.kernel = layer.add_weight(
        shape=kernel_shape,
        initializer=layer.kernel_initializer,
        regularizer=layer.kernel_regularizer,
        constraint=layer.kernel_constraint,
        name="kernel",
    )
    layer.bias = None
    if layer.use_bias:
        layer.bias = layer.add_weight(
            shape=(kernel_shape[-1],),
            initializer=layer.bias_initializer,
            regularizer=layer.bias_regularizer,
            constraint=layer.bias_constraint,
            name="bias",
        )
