"""Tests for `keras_lookup._tables`: tables built in place, with Keras's values."""

import os
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import script_report

import keras_lookup
from keras_lookup import _tables


class InPlaceEmbedding(keras.layers.Embedding):
    """How a `keras.layers.Embedding` subclass hooks the in-place build."""

    def build(self, input_shape=None):
        with _tables.in_place(min_size=0):
            super().build(input_shape)


INITIALIZERS = {
    "uniform": "uniform",
    "random_normal": keras.initializers.RandomNormal(mean=0.3, stddev=2.0),
    "truncated_normal": "truncated_normal",
    "glorot_uniform": "glorot_uniform",
    "he_normal": "he_normal",
    "lecun_normal": "lecun_normal",
    "variance_scaling_untruncated": keras.initializers.VarianceScaling(
        2.0, "fan_avg", "untruncated_normal"
    ),
    "seeded_uniform": keras.initializers.RandomUniform(-1.0, 1.0, seed=5),
    "seed_generator": "seed_generator",
    "zeros": "zeros",
    "constant": keras.initializers.Constant(0.25),
    "orthogonal": "orthogonal",
}


def _initializer(name):
    if name == "seed_generator":
        return keras.initializers.TruncatedNormal(seed=keras.random.SeedGenerator(9))
    return INITIALIZERS[name]


@pytest.mark.parametrize("dim", [3, 6])
@pytest.mark.parametrize("name", sorted(INITIALIZERS))
def test_same_values_as_keras(name, dim, monkeypatch):
    # Small slices, so that a 203-row table takes many, with row offsets
    # that are not multiples of the width.
    monkeypatch.setattr(_tables, "SLICE_SIZE", 40)
    tables = []
    for cls in (keras.layers.Embedding, InPlaceEmbedding):
        keras.utils.set_random_seed(1)
        layer = cls(203, dim, embeddings_initializer=_initializer(name))
        layer.build()
        tables.append(layer.embeddings.numpy())
    np.testing.assert_array_equal(tables[1], tables[0])
    assert np.std(tables[0]) > 0 or name in ("zeros", "constant")


def test_seed_generator_advances_once():
    states = []
    for cls in (keras.layers.Embedding, InPlaceEmbedding):
        seed = keras.random.SeedGenerator(3)
        cls(64, 8, embeddings_initializer=keras.initializers.RandomNormal(seed=seed))
        layer = cls(
            64, 8, embeddings_initializer=keras.initializers.RandomNormal(seed=seed)
        )
        layer.build()
        states.append(seed.state.numpy())
    np.testing.assert_array_equal(states[1], states[0])


def test_in_place_table_trains_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,), dtype="int32"),
            InPlaceEmbedding(50, 4),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras_lookup.optimizers.LazyRowwiseAdagrad(0.1), loss="mse")
    x = np.random.default_rng(0).integers(0, 50, size=(8, 4))
    model.train_on_batch(x, np.ones((8, 1)))
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(
        path, custom_objects={"InPlaceEmbedding": InPlaceEmbedding}
    )
    for saved, restored in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, restored)
    np.testing.assert_array_equal(
        model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    )


def test_keras_lookup_embedding_builds_large_tables_in_place(monkeypatch):
    monkeypatch.setattr(_tables, "MIN_SIZE", 64)
    created = []
    original = _tables.fill

    def spy(variable, initializer, shape, dtype):
        created.append(shape)
        return original(variable, initializer, shape, dtype)

    monkeypatch.setattr(_tables, "fill", spy)
    keras.utils.set_random_seed(2)
    layer = keras_lookup.Embedding(100, 4)
    layer.build()
    keras.utils.set_random_seed(2)
    reference = keras.layers.Embedding(100, 4)
    reference.build()
    assert created == [(100, 4)]
    np.testing.assert_array_equal(
        layer.embeddings.numpy(), reference.embeddings.numpy()
    )
    keras_lookup.Embedding(10, 4).build()  # below MIN_SIZE: Keras's own path
    assert created == [(100, 4)]


def test_distribution_strategy_takes_keras_path(monkeypatch):
    # Strategies create their own variables (mirrored, sharded): left to them.
    called = []
    monkeypatch.setattr(_tables, "fill", lambda *args: called.append(args))
    tables = []
    for cls in (keras.layers.Embedding, InPlaceEmbedding):
        keras.utils.set_random_seed(4)
        with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
            layer = cls(30, 2)
            layer.build()
        tables.append(layer.embeddings.numpy())
    assert called == []
    np.testing.assert_array_equal(tables[1], tables[0])


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, os, resource
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import keras
    from keras_lookup import _tables

    class InPlaceEmbedding(keras.layers.Embedding):
        def build(self, input_shape=None):
            with _tables.in_place():
                super().build(input_shape)

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    layer = InPlaceEmbedding(2**20, 64)
    before = peak()
    layer.build()
    print("REPORT" + json.dumps({"before": before, "after": peak()}))
    """
)


def test_peak_memory_of_building_stays_near_the_table_size():
    # 256 MiB table, in its own process so that the peak is the build's. Keras's
    # own build of the same layer peaks at 3.2x the table (measured).
    report = script_report(MEMORY_SCRIPT)
    table = 2**20 * 64 * 4
    assert report["after"] - report["before"] < 1.4 * table, report
