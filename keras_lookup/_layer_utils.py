"""Table creation, table reads and config serialization shared by the layers."""

import contextlib

import keras
import tensorflow as tf

# Tables of this many entries (256 MB of float32) or more are initialized as
# graphs; see `table_initializer`.
GRAPH_INIT_MIN_SIZE = 2**26

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
    import contextlib

    _no_autocast = contextlib.nullcontext


def table_initializer(initializer, shape):
    """`initializer`, run as a graph when the table is large.

    Eager initializers hold several full-size temporaries at once (a uniform
    draw, its scaled and its shifted copy), which sets a big table's peak
    memory: 1.57 GB above the baseline for a 1M x 128 float32 table. As one graph,
    where TensorFlow reuses buffers in place, the same values took 1.04 GB.
    """
    if shape[0] * shape[1] < GRAPH_INIT_MIN_SIZE:
        return initializer

    def initialize(shape, dtype=None):
        return tf.function(lambda: initializer(shape, dtype))()

    return initialize


@contextlib.contextmanager
def large_table_initializer(layer):
    """Within it, `layer.embeddings_initializer` is `table_initializer`'s.

    `keras.layers.Embedding.build` creates the table from the layer's
    initializer; this lets it do so as one graph for large tables without
    copying Keras's `build`. `get_config` still sees the user's initializer.
    """
    initializer = layer.embeddings_initializer
    shape = (layer.input_dim, layer.output_dim)
    layer.embeddings_initializer = table_initializer(initializer, shape)
    try:
        yield
    finally:
        layer.embeddings_initializer = initializer
