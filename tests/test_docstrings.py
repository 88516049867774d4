"""Every docstring example in the package runs, as keras-hub's do."""

import doctest
import importlib
import pkgutil

import pytest

import keras_lookup

MODULES = [
    name for _, name, _ in pkgutil.walk_packages(keras_lookup.__path__, "keras_lookup.")
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed"


def test_public_layers_have_examples():
    names = ("Embedding", "Dense", "DimensionReducer", "DynamicEmbedding")
    for name in (*names, "DynamicEmbeddingCounters", "save_model"):
        assert ">>> " in getattr(keras_lookup, name).__doc__
