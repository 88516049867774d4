"""Keras's own Embedding and Dense tests, run against keras_lookup's layers.

The test files ship in the keras wheel (`keras/src/layers/core/embedding_test.py`
and `dense_test.py`). Each test class is subclassed here with the module's
`layers` swapped for a namespace whose `Embedding` or `Dense` is ours, so every
Keras test calls our class wherever it says `layers.Embedding` or
`layers.Dense`. What we deliberately do differently is listed in DIVERGENCES,
with the reason; everything else must pass.
"""

import unittest
from unittest import mock

import keras
import pytest
from keras.src import layers as keras_layers

import keras_lookup

# The keras wheel ships these test files from Keras 3.14.0 on.
KERAS_TESTS_SHIPPED_IN = "3.14.0"
try:
    from keras.src.layers.core import dense_test as keras_dense_test
    from keras.src.layers.core import embedding_test as keras_embedding_test
except ImportError:
    pytest.skip(
        f"needs Keras >= {KERAS_TESTS_SHIPPED_IN}, whose wheel ships "
        "keras/src/layers/core/{dense,embedding}_test.py; this is Keras "
        f"{keras.__version__}",
        allow_module_level=True,
    )


@keras.saving.register_keras_serializable(package="keras_lookup_conformance")
class ZerosEmbedding(keras_lookup.Embedding):
    """`keras_lookup.Embedding` with `invalid_ids="zeros"` as the default.

    Keras's `run_layer_test` feeds `int(4 * normal())` as ids, negative ones
    included, which our default `invalid_ids="raise"` rightly refuses; Keras
    wraps them around instead. With `"zeros"` the same tests run through every
    other path. `quantize` lets this class through as ours lets ours.
    """

    def __init__(self, *args, invalid_ids="zeros", **kwargs):
        super().__init__(*args, invalid_ids=invalid_ids, **kwargs)

    def quantize(self, mode=None, type_check=True, config=None):
        if type_check and type(self) is not ZerosEmbedding:
            raise self._not_implemented_error(self.quantize)
        keras.layers.Embedding.quantize(self, mode, type_check=False, config=config)


class _Layers:
    """`keras.src.layers`, with some classes replaced."""

    def __init__(self, **replacements):
        self._replacements = replacements

    def __getattr__(self, name):
        if name in self._replacements:
            return self._replacements[name]
        return getattr(keras_layers, name)


# Keras tests that our layers fail on purpose, and why (at most two).
DIVERGENCES = {}


def _conformance(keras_test_module, test_class, **replacements):
    class Conformance(test_class):
        def setUp(self):
            super().setUp()
            patcher = mock.patch.object(
                keras_test_module, "layers", _Layers(**replacements)
            )
            patcher.start()
            self.addCleanup(patcher.stop)

    for name in dir(Conformance):
        if name in DIVERGENCES:
            setattr(
                Conformance,
                name,
                unittest.expectedFailure(getattr(Conformance, name)),
            )
    return Conformance


class TestKerasEmbeddingTests(
    _conformance(
        keras_embedding_test,
        keras_embedding_test.EmbeddingTest,
        Embedding=ZerosEmbedding,
    )
):
    pass


class TestKerasDenseTests(
    _conformance(keras_dense_test, keras_dense_test.DenseTest, Dense=keras_lookup.Dense)
):
    pass
