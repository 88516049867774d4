"""`DynamicEmbedding` saved, loaded, resumed and served, for both key types.

The id -> row map (hash table, free rows, per-row state, counters, clock)
travels with the table in `.keras` and weights files, `save_state`,
`tf.train.Checkpoint` and `model.export()`.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import check_resume, run_python
from test_saved_models import check_saved_models

import keras_lookup

KEY_DTYPES = ["int64", "string"]


def keys(ids, key_dtype):
    ids = np.asarray(ids)
    if key_dtype == "int64":
        return ids.astype(np.int64) * (2**40 + 3) - 2**61  # huge and negative
    return np.array([f"w{i}" for i in ids.ravel()], object).reshape(ids.shape)


def model_for(key_dtype, **layer_kwargs):
    """Ids -> DynamicEmbedding (8 rows: evictions) -> Dense, with LazyAdam."""
    keras.utils.set_random_seed(3)
    layer_kwargs = {"eviction_batch": 2, **layer_kwargs}
    model = keras.Sequential(
        [
            keras.Input((), dtype=key_dtype),
            keras_lookup.DynamicEmbedding(8, 4, key_dtype=key_dtype, **layer_kwargs),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras_lookup.optimizers.LazyAdam(0.01), "mse")
    return model


def data(key_dtype):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 14, 96)
    return keys(ids, key_dtype), (ids % 3).astype("float32")


def assert_same_map(a, b, ids):
    la, lb = a.layers[0], b.layers[0]
    np.testing.assert_array_equal(la.lookup_rows(ids), lb.lookup_rows(ids))
    assert la.counters() == lb.counters() and la.counters()["evicted"] > 0
    assert la.vocabulary_size() == lb.vocabulary_size()
    for name, value in la._map_arrays().items():
        np.testing.assert_array_equal(value, lb._map_arrays()[name], err_msg=name)


def test_keras_files_load_in_a_new_process(tmp_path):
    stems = []
    for key_dtype in KEY_DTYPES:
        model = model_for(key_dtype, eviction="lfu", min_count=2)
        x, y = data(key_dtype)
        model.fit(x, y, batch_size=8, epochs=2, verbose=0)
        probe = np.concatenate([x[:6], keys([1000, 1001], key_dtype)])  # + unseen
        stem = str(tmp_path / key_dtype)
        keras_lookup.save_model(model, stem + ".keras")
        inputs = probe.tolist() if key_dtype == "int64" else probe.astype(str).tolist()
        with open(stem + ".inputs.json", "w") as f:
            json.dump({"inputs": inputs, "dtype": key_dtype}, f)
        expected = model.predict(tf.constant(probe), verbose=0)
        np.savez(stem + ".expected.npz", outputs=expected)
        assert (model.layers[0].lookup_rows(probe)[-2:] == -1).all()
        stems.append(stem)
        # And in this process, with the map's counters and per-row state.
        loaded = keras.saving.load_model(stem + ".keras")
        assert_same_map(model, loaded, probe)
        weights = str(tmp_path / f"{key_dtype}.weights.h5")
        model.save_weights(weights)
        other = model_for(key_dtype, eviction="lfu", min_count=2)
        other.optimizer.build(other.trainable_variables)
        other.load_weights(weights)
        assert_same_map(model, other, probe)
    check_saved_models(stems, tmp_path)


@pytest.mark.parametrize("key_dtype", KEY_DTYPES)
def test_checkpoint_resumes_exactly_with_evictions_after_the_resume(
    key_dtype, tmp_path
):
    # The check: 2 epochs, a checkpoint, 1 more epoch (evicting) in a
    # new model restored from it, against 3 epochs straight.
    x, y = data(key_dtype)
    path = str(tmp_path / "ckpt")
    at_save = {}

    def save(model):
        at_save.update(model.layers[0].counters())
        tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(path)

    def load(model):
        model.optimizer.build(model.trainable_variables)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        checkpoint.read(path).assert_consumed()

    uninterrupted, restored = check_resume(
        lambda: model_for(key_dtype, eviction="lru"), x, y, save, load
    )
    assert_same_map(uninterrupted, restored, x)
    assert restored.layers[0].counters()["evicted"] > at_save["evicted"] > 0


def test_save_state_restores_the_map(tmp_path):
    x, y = data("string")

    def build():
        return model_for("string", eviction="lfu", min_count=2)

    uninterrupted, restored = check_resume(
        build,
        x,
        y,
        lambda model: keras_lookup.save_state(model, tmp_path / "state"),
        lambda model: keras_lookup.load_state(model, tmp_path / "state"),
    )
    assert_same_map(uninterrupted, restored, x)
    # A layer built with another policy cannot take the map.
    with pytest.raises(ValueError, match="has 'counts', 'last_seen' that"):
        keras_lookup.load_state(
            model_for("string", eviction=None, min_count=2), tmp_path / "state"
        )
    small = keras.Sequential(
        [
            keras.Input((), dtype="string"),
            keras_lookup.DynamicEmbedding(
                4, 4, key_dtype="string", eviction="lfu", min_count=2
            ),
            keras.layers.Dense(1),
        ]
    )
    small.compile(keras_lookup.optimizers.LazyAdam(0.01), "mse")
    with pytest.raises(ValueError, match="shape"):
        keras_lookup.load_state(small, tmp_path / "state")


def test_export_serves_both_key_types_without_keras_lookup(tmp_path):
    x, y = data("int64")
    ids_model = model_for("int64")
    ids_model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    words = keras.Input((3,), dtype="string")
    bag = keras_lookup.DynamicEmbedding(
        16, 4, key_dtype="string", combiner="mean", mask_key=""
    )
    bags_model = keras.Model(words, keras.layers.Dense(1)(bag(words)))
    bags_model.compile(keras_lookup.optimizers.LazyAdam(0.01), "mse")
    texts = tf.constant([["a", "b", ""], ["c", "a", "b"], ["d", "", ""]])
    bags_model.fit(texts, np.ones((3, 1)), verbose=0)
    probe_ids = np.concatenate([x[:4], keys([500, 501], "int64")])
    probe_texts = tf.constant([["a", "zz", ""], ["yy", "", ""], ["c", "d", "a"]])
    np.savez(
        tmp_path / "data.npz",
        ids=probe_ids,
        ids_out=ids_model.predict(probe_ids, verbose=0),
        texts=probe_texts.numpy().astype(str),
        texts_out=bags_model.predict(probe_texts, verbose=0),
    )
    assert (ids_model.layers[0].lookup_rows(probe_ids)[-2:] == -1).all()
    ids_model.export(str(tmp_path / "ids"), verbose=False)
    bags_model.export(str(tmp_path / "bags"), verbose=False)
    out = run_python(
        """
        import sys
        sys.modules["keras_lookup"] = None  # cannot be imported here
        import numpy as np
        import tensorflow as tf
        data = np.load("data.npz")
        ids_model = tf.saved_model.load("ids")  # kept: it owns the variables
        ids = ids_model.serve(tf.constant(data["ids"]))
        np.testing.assert_allclose(ids.numpy(), data["ids_out"], rtol=1e-6)
        texts = tf.constant(data["texts"].astype(bytes))
        bags_model = tf.saved_model.load("bags")
        bags = bags_model.serve(texts)
        np.testing.assert_allclose(bags.numpy(), data["texts_out"], rtol=1e-6)
        print("served", ids.shape, bags.shape)
        """,
        tmp_path,
    )
    assert "served (6, 1) (3, 1)" in out


def test_save_model_never_leaves_a_broken_file(tmp_path, monkeypatch):
    path = tmp_path / "model.keras"
    model = model_for("string")
    x, y = data("string")
    model.fit(x, y, batch_size=8, verbose=0)
    keras_lookup.save_model(model, path)
    layer = model.layers[0]

    def fail():
        raise OSError("disk full (simulated)")

    model.fit(x, y, batch_size=8, verbose=0)
    monkeypatch.setattr(layer, "_map_arrays", fail)
    with pytest.raises(OSError, match="disk full"):
        keras_lookup.save_model(model, path)
    assert os.listdir(tmp_path) == ["model.keras"]
    loaded = keras.saving.load_model(path)
    assert loaded.layers[0].vocabulary_size() == 8
