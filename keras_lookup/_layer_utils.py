"""Table reads and config serialization shared by the layers."""

import contextlib

import keras
import tensorflow as tf

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


# `DimensionReducer`'s arguments named as `keras.layers.Dense` names them.
KERNEL_AND_BIAS_ARGS = (
    "activation",
    "use_bias",
    "kernel_initializer",
    "bias_initializer",
    "kernel_regularizer",
    "bias_regularizer",
    "kernel_constraint",
    "bias_constraint",
)


def sparse_readable(variable):
    """The backend `tf.Variable` behind a Keras variable, for row lookups.

    `tf.gather` on a Keras variable first reads the whole table densely (and,
    after a row-sparse optimizer update, TensorFlow then copies it on read);
    on the `tf.Variable` it becomes a `ResourceGather` of just the rows. Keras
    also opens an autocast scope around mixed-precision layers even when
    `autocast=False`, which would cast the whole table to float16 on every
    read; the rows are read in float32 and only they are cast.
    """
    with _no_autocast():
        value = variable.value
    return value if isinstance(value, tf.Variable) else variable


try:  # Keras has no public way to leave an autocast scope.
    from keras.src.backend import AutocastScope as _AutocastScope

    def _no_autocast():
        return _AutocastScope(None)

except ImportError:  # pragma: no cover - older Keras 3 releases
    _no_autocast = contextlib.nullcontext
