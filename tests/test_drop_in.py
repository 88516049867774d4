"""keras_lookup's layers used the way real Keras code uses Keras's own.

Masks through recurrent and attention layers, a layer that asks for the mask
itself, LoRA and quantization: each compared with `keras.layers.Embedding`
holding the same weights. Keras's own test files run against our layers in
test_keras_conformance.py; this file checks whole models.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import run_python

import keras_lookup

PADDED = np.array([[4, 5, 9, 0, 0, 0], [3, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6]])


def _pair(vocab=10, dim=8, **kwargs):
    """Our Embedding and Keras's, built, holding the same table."""
    ours = keras_lookup.Embedding(vocab, dim, **kwargs)
    theirs = keras.layers.Embedding(vocab, dim, **kwargs)
    ours.build()
    theirs.build()
    ours.set_weights(theirs.get_weights())
    return ours, theirs


@pytest.mark.parametrize("mask_zero", [True, False])
def test_compute_mask_and_supports_masking_are_keras_s(mask_zero):
    ours, theirs = _pair(mask_zero=mask_zero)
    assert ours.supports_masking == theirs.supports_masking == mask_zero
    ours_mask, theirs_mask = ours.compute_mask(PADDED), theirs.compute_mask(PADDED)
    if mask_zero:
        np.testing.assert_array_equal(ours_mask, theirs_mask)
        np.testing.assert_array_equal(ours_mask, PADDED != 0)
    else:
        assert ours_mask is None and theirs_mask is None


def _recurrent(cls):
    return lambda x: cls(5, seed=3)(x)


def _attention(x):
    attended = keras.layers.MultiHeadAttention(2, 4, seed=3)(x, x)
    return keras.layers.GlobalAveragePooling1D()(attended)


class _TokenAndPosition(keras.layers.Layer):
    """Like keras-hub's TokenAndPositionEmbedding: it asks its token
    embedding for the mask instead of letting Keras propagate one."""

    def __init__(self, token_embedding, length, **kwargs):
        super().__init__(**kwargs)
        self.token_embedding = token_embedding
        self.position = keras.layers.Embedding(length, token_embedding.output_dim)
        self.supports_masking = True

    def call(self, ids):
        positions = tf.range(tf.shape(ids)[-1])
        return self.token_embedding(ids) + self.position(positions)

    def compute_mask(self, ids, mask=None):
        return self.token_embedding.compute_mask(ids, mask)


def _asks_for_the_mask(x):
    return keras.layers.GRU(5, seed=3)(x)


CONSUMERS = {
    "lstm": _recurrent(keras.layers.LSTM),
    "gru": _recurrent(keras.layers.GRU),
    "attention": _attention,
}


@pytest.mark.parametrize("consumer", [*CONSUMERS, "layer_that_asks_for_the_mask"])
def test_masks_reach_downstream_layers_as_with_keras(consumer):
    outputs = []
    ours, theirs = _pair(mask_zero=True)
    for embedding in (ours, theirs):
        keras.utils.set_random_seed(1)
        ids = keras.Input((None,), dtype="int32")
        if consumer == "layer_that_asks_for_the_mask":
            x = _TokenAndPosition(embedding, PADDED.shape[1])(ids)
            out = _asks_for_the_mask(x)
        else:
            out = CONSUMERS[consumer](embedding(ids))
        model = keras.Model(ids, out)
        outputs.append(model.predict(PADDED, verbose=0))
        if consumer == "layer_that_asks_for_the_mask":
            # The same weights, so any difference would be the mask's.
            positions = model.layers[1].position
            positions.set_weights([np.linspace(-1, 1, 48).reshape(6, 8)])
            outputs[-1] = model.predict(PADDED, verbose=0)
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
    # And padding changes nothing: the first row without its padding.
    keras.utils.set_random_seed(1)
    ids = keras.Input((None,), dtype="int32")
    if consumer == "layer_that_asks_for_the_mask":
        return  # position embeddings differ once the padding is cut off
    model = keras.Model(ids, CONSUMERS[consumer](ours(ids)))
    short = model.predict(PADDED[:1, :3], verbose=0)
    np.testing.assert_allclose(model.predict(PADDED[:1], verbose=0), short, atol=1e-5)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_model_quantize_matches_keras_quantized_embedding(mode):
    ours, theirs = _pair(vocab=50, dim=8)
    outputs = []
    for embedding in (ours, theirs):
        model = keras.Sequential([keras.Input((6,), dtype="int32"), embedding])
        model.quantize(mode)
        assert embedding.quantization_mode == mode
        assert keras.backend.standardize_dtype(embedding._embeddings.dtype) == "int8"
        outputs.append(model.predict(PADDED, verbose=0))
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("combiner", [None, "mean"])
def test_quantized_layers_still_check_ids(mode, combiner):
    layer = keras_lookup.Embedding(10, 4, combiner=combiner)
    layer.build()
    layer.quantize(mode)
    with pytest.raises(tf.errors.InvalidArgumentError, match="received id 12"):
        layer(np.array([[1, 12]]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="received id -1"):
        tf.function(layer)(tf.constant([[1, -1]]))


def _lora_pair(**kwargs):
    ours, theirs = _pair(vocab=30, dim=6, **kwargs)
    for layer in (ours, theirs):
        layer.enable_lora(2)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 2)).astype("float32")
    b = rng.normal(size=(2, 6)).astype("float32")
    for layer in (ours, theirs):
        layer.lora_embeddings_a.assign(a)
        layer.lora_embeddings_b.assign(b)
    return ours, theirs


def test_lora_matches_keras_and_trains_row_sparse():
    ours, theirs = _lora_pair()
    np.testing.assert_allclose(ours(PADDED), theirs(PADDED), rtol=1e-5, atol=1e-6)
    assert [v.name for v in ours.trainable_variables] == [
        "lora_embeddings_a",
        "lora_embeddings_b",
    ]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(ours(PADDED) ** 2)
    grad_a, grad_b = tape.gradient(loss, ours.trainable_variables)
    # Only the looked-up rows of A are touched; the frozen table gets nothing.
    assert isinstance(grad_a, tf.IndexedSlices)
    assert set(np.unique(grad_a.indices)) == set(np.unique(PADDED))
    assert not isinstance(grad_b, tf.IndexedSlices)
    with pytest.raises(tf.errors.InvalidArgumentError, match="received id 30"):
        ours(np.array([[30]]))


def test_lora_on_bags_and_tied_projection_uses_the_adapted_table():
    ours, theirs = _lora_pair()
    table = theirs.embeddings.numpy()  # Keras merges the LoRA delta here
    bags = keras_lookup.Embedding(30, 6, combiner="sum")
    bags.build()
    bags.enable_lora(2)
    bags.set_weights(ours.get_weights())
    np.testing.assert_allclose(
        bags(PADDED), table[PADDED].sum(axis=1), rtol=1e-5, atol=1e-5
    )
    features = np.random.default_rng(1).normal(size=(3, 6)).astype("float32")
    np.testing.assert_allclose(
        ours(features, reverse=True), features @ table.T, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("mode", ["int8", "int4", "lora"])
@pytest.mark.parametrize("combiner", [None, "sum"])
def test_reducer_strategies_agree_when_quantized_or_adapted(mode, combiner):
    outputs, grads = [], []
    weights = None
    for strategy in ("gather", "matmul"):
        layer = keras_lookup.DimensionReducer(
            30, 6, strategy=strategy, combiner=combiner, use_bias=True
        )
        layer.build()
        if weights is None:
            weights = [w + 0.5 for w in layer.get_weights()]  # a nonzero bias
        layer.set_weights(weights)
        if mode == "lora":
            layer.enable_lora(2)
            layer.lora_embeddings_a.assign(np.linspace(-1, 1, 60).reshape(30, 2))
            layer.lora_embeddings_b.assign(np.ones((2, 6), "float32"))
        else:
            layer.quantize(mode)
        with tf.GradientTape() as tape:
            out = layer(PADDED)
            loss = tf.reduce_sum(out**2)
        outputs.append(out.numpy())
        grads.append(
            [
                tf.convert_to_tensor(g).numpy()
                for g in tape.gradient(loss, layer.trainable_variables)
            ]
        )
        names = [v.name for v in layer.weights]
        assert {"kernel", "bias"} <= set(names)
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    for gather_grad, matmul_grad in zip(*grads, strict=True):
        np.testing.assert_allclose(gather_grad, matmul_grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_model_saves_loads_and_exports(mode, tmp_path):
    ids = keras.Input((6,), dtype="int32")
    x = keras_lookup.Embedding(20, 8, mask_zero=True)(ids)
    x = keras.layers.GlobalAveragePooling1D()(x)
    bag = keras_lookup.DimensionReducer(20, 8, combiner="mean", use_bias=True)(ids)
    out = keras_lookup.Dense(3)(keras.layers.Concatenate()([x, bag]))
    model = keras.Model(ids, out)
    model.quantize(mode)
    expected = model.predict(PADDED, verbose=0)
    keras_lookup.save_model(model, tmp_path / "model.keras")
    model.export(str(tmp_path / "exported"), verbose=False)
    np.savez(tmp_path / "data.npz", ids=PADDED, expected=expected)
    run_python(
        f"""
        import keras, numpy as np
        import keras_lookup
        data = np.load("data.npz")
        model = keras.saving.load_model("model.keras")
        ours = [l for l in model.layers if type(l).__module__.startswith("keras_l")]
        modes = [layer.quantization_mode for layer in ours]
        assert modes == ["{mode}"] * 3, modes
        got = model.predict(data["ids"], verbose=0)
        np.testing.assert_array_equal(got, data["expected"])
        """,
        tmp_path,
    )
    run_python(
        """
        import sys
        import numpy as np
        import tensorflow as tf
        data = np.load("data.npz")
        served = tf.saved_model.load("exported")
        got = served.serve(tf.constant(data["ids"], tf.int32)).numpy()
        np.testing.assert_allclose(got, data["expected"], rtol=1e-6, atol=1e-6)
        assert "keras_lookup" not in sys.modules
        bad = data["ids"].copy()
        bad[0, 0] = 99
        try:
            served.serve(tf.constant(bad, tf.int32))
        except tf.errors.InvalidArgumentError as e:
            assert "received id 99" in str(e), str(e)
        else:
            raise AssertionError("a bad id was served")
        """,
        tmp_path,
    )


def test_compute_mask_after_a_tied_projection_is_still_the_ids_mask():
    layer = keras_lookup.Embedding(10, 4, mask_zero=True)
    features = layer(PADDED)
    logits = layer(features, reverse=True)
    assert logits.shape == (3, 6, 10)
    np.testing.assert_array_equal(logits._keras_mask, PADDED != 0)
    layer(np.ones((2, 4), "float32"), reverse=True)  # features with no mask
    np.testing.assert_array_equal(layer.compute_mask(PADDED), PADDED != 0)
