"""Bad ids fail loudly in every layer, strategy, input form and execution mode."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_lookup
from keras_lookup import _checks

VOCAB = 5


def _layers():
    return {
        "embedding": lambda **kw: keras_lookup.Embedding(VOCAB, 3, **kw),
        "reducer_gather": lambda **kw: keras_lookup.DimensionReducer(
            VOCAB, 3, strategy="gather", **kw
        ),
        "reducer_matmul": lambda **kw: keras_lookup.DimensionReducer(
            VOCAB, 3, strategy="matmul", **kw
        ),
    }


LAYERS = _layers()
BAD_IDS = {
    "negative": (np.array([[1, -1]], "int32"), "-1"),
    "too_large": (np.array([[1, VOCAB]], "int32"), str(VOCAB)),
    "int64_wraps_int32": (np.array([[1, 2**32 + 1]], "int64"), str(2**32 + 1)),
    "float_fraction": (np.array([[1.0, 0.5]], "float32"), "0.5"),
    "float_negative": (np.array([[1.0, -2.0]], "float32"), "-2"),
    "uint8_too_large": (np.array([[1, 200]], "uint8"), "200"),
}


def _run(layer, ids, mode):
    if mode == "eager":
        return layer(ids)
    if mode == "tf_function":
        return tf.function(lambda x: layer(x))(tf.constant(ids))
    inputs = keras.Input(ids.shape[1:], dtype=ids.dtype)
    model = keras.Model(inputs, layer(inputs))
    if mode == "predict":
        return model.predict(ids, verbose=0)
    model.compile("sgd", "mse")
    target = np.zeros(ids.shape + (3,), "float32")
    return model.fit(ids, target, epochs=1, verbose=0)


@pytest.mark.parametrize("mode", ["eager", "tf_function", "predict", "fit"])
@pytest.mark.parametrize("bad", list(BAD_IDS))
@pytest.mark.parametrize("layer_name", list(LAYERS))
def test_bad_ids_raise_with_value_range_and_fix(layer_name, bad, mode):
    ids, shown = BAD_IDS[bad]
    layer = LAYERS[layer_name](name=f"my_{layer_name}")
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        _run(layer, ids, mode)
    message = str(info.value)
    assert f"my_{layer_name}" in message
    assert f"received id {shown}" in message
    assert f"[0, {VOCAB})" in message
    assert "invalid_ids" in message and "zeros" in message


@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize(
    "form",
    ["ragged", "sparse", "bag_dense", "bag_ragged", "bag_sparse"],
)
def test_bad_ids_raise_in_every_input_form(layer_name, form):
    bags = form.startswith("bag")
    layer = LAYERS[layer_name](combiner="sum" if bags else None)
    if form.endswith("ragged"):
        ids = tf.ragged.constant([[1, 2], [7]])
    elif form.endswith("sparse"):
        ids = tf.SparseTensor([[0, 0], [1, 1]], tf.constant([1, 7], tf.int64), [2, 3])
    else:
        ids = tf.constant([[1, 2], [7, 0]])
    for run in (layer, tf.function(lambda x: layer(x))):
        with pytest.raises(tf.errors.InvalidArgumentError, match="received id 7"):
            run(ids)


@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize("form", ["dense", "ragged", "sparse", "bag_ragged"])
def test_empty_batches_pass_the_check_in_graphs(layer_name, form):
    # The check's message is formatted on every graph call, for the first
    # bad id; an empty batch has none and must still run.
    layer = LAYERS[layer_name](combiner="sum" if form.startswith("bag") else None)
    if form.endswith("ragged"):
        ids = tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int32), [0, 0])
    elif form == "sparse":
        empty = tf.zeros([0, 2], tf.int64)
        ids = tf.SparseTensor(empty, tf.zeros([0], tf.int32), [2, 3])
    else:
        ids = tf.zeros([0, 4], tf.int32)
    out = tf.function(lambda x: layer(x))(ids)
    expected = {"dense": (0, 4, 3), "ragged": (2, 0, 3), "sparse": (2, 3, 3)}
    out = out.to_tensor() if isinstance(out, tf.RaggedTensor) else out
    assert tuple(out.shape) == expected.get(form, (2, 3))
    assert not np.any(out)


@pytest.mark.parametrize("layer_name", list(LAYERS))
def test_string_ids_raise_type_error(layer_name):
    with pytest.raises(TypeError, match="StringLookup"):
        LAYERS[layer_name]()(tf.constant([["a", "b"]]))


def test_float_ids_that_cannot_hold_the_vocabulary_raise():
    layer = keras_lookup.Embedding(100_000, 2)
    with pytest.raises(TypeError, match="float16 cannot represent every id"):
        layer(tf.constant([[1.0]], tf.float16))


@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize("combiner", [None, "mean"])
def test_invalid_ids_zeros_gives_zero_vectors_and_no_gradient(layer_name, combiner):
    layer = LAYERS[layer_name](invalid_ids="zeros", combiner=combiner)
    ids = tf.constant([[1, -3], [VOCAB + 2, 2]])
    clean = LAYERS[layer_name](combiner=combiner)
    layer.build()
    clean.build()
    clean.set_weights(layer.get_weights())
    with tf.GradientTape() as tape:
        out = layer(ids)
        loss = tf.reduce_sum(out)
    (grad,) = tape.gradient(loss, layer.trainable_variables)
    if isinstance(grad, tf.IndexedSlices):
        # Invalid ids are not looked up at all: a row-sparse optimizer must not
        # see row 0 (or any other row) as touched on their account.
        assert set(grad.indices.numpy().tolist()) == {1, 2}
    else:
        assert layer_name == "reducer_matmul"
    grad = tf.convert_to_tensor(grad).numpy()
    table = layer.get_weights()[0]
    if combiner is None:
        expected = np.stack([[table[1], 0 * table[0]], [0 * table[0], table[2]]])
        rows_with_gradient = {1, 2}
    else:
        # Invalid ids drop out of their bag, so each mean is over one id.
        expected = np.stack([table[1], table[2]])
        rows_with_gradient = {1, 2}
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    for row in range(VOCAB):
        assert np.any(grad[row] != 0) == (row in rows_with_gradient)


def test_under_xla_invalid_ids_give_nan_not_a_wrong_answer():
    layer = keras_lookup.Embedding(VOCAB, 3)
    layer.build()
    compiled = tf.function(lambda x: layer(x), jit_compile=True)
    out = compiled(tf.constant([1, VOCAB + 1])).numpy()
    np.testing.assert_allclose(out[0], layer.embeddings.numpy()[1])
    assert np.isnan(out[1]).all()


@pytest.mark.parametrize("combiner", [None, "sum"])
def test_invalid_ids_zeros_compiles_under_xla(combiner):
    layer = keras_lookup.Embedding(VOCAB, 3, invalid_ids="zeros", combiner=combiner)
    layer.build()
    ids = tf.constant([[1, VOCAB + 1]])
    compiled = tf.function(lambda x: layer(x), jit_compile=True)
    np.testing.assert_allclose(compiled(ids), layer(ids), rtol=1e-6)


def test_keras_auto_jit_is_declined_while_ids_are_checked():
    assert not keras_lookup.Embedding(5, 2).supports_jit
    assert keras_lookup.Embedding(5, 2, invalid_ids="zeros").supports_jit


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_dim": 0, "output_dim": 2}, "`input_dim` must be a positive integer"),
        ({"input_dim": 5.0, "output_dim": 2}, "Received: input_dim=5.0"),
        ({"input_dim": True, "output_dim": 2}, "Received: input_dim=True"),
        ({"input_dim": 5, "output_dim": None}, "`output_dim` must be a positive"),
        ({"input_dim": 5, "output_dim": 2, "combiner": "avg"}, "`combiner` must be"),
        ({"input_dim": 5, "output_dim": 2, "invalid_ids": "ignore"}, "`invalid_ids`"),
        ({"input_dim": 5, "output_dim": 2, "mask_zero": "no"}, "`mask_zero` must be"),
        # Keras checks no LoRA rank (0 would silently mean no LoRA).
        ({"input_dim": 5, "output_dim": 2, "lora_rank": 0}, "Received: lora_rank=0"),
        ({"input_dim": 5, "output_dim": 2, "lora_rank": 2.5}, "`lora_rank` must be"),
    ],
    ids=[
        "zero_dim",
        "float_dim",
        "bool_dim",
        "none_output",
        "combiner",
        "invalid_ids",
        "mask_zero",
        "zero_lora_rank",
        "float_lora_rank",
    ],
)
def test_bad_embedding_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_lookup.Embedding(**kwargs)
    config = keras_lookup.Embedding(5, 2).get_config()
    config.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=message):
        keras_lookup.Embedding.from_config(config)


@pytest.mark.parametrize(
    "dtype, vocab",
    [("int32", 5), ("int64", 5), ("int32", 2**31), ("int32", 3 * 10**9)],
)
def test_negative_ids_are_caught_at_every_vocabulary_size(dtype, vocab):
    # A vocabulary of 2**31 rows or more (a table split across parameter
    # servers) does not fit int32: int32 ids are then compared in int64. Before
    # that fix, the bound overflowed and every int32 id was refused.
    smallest = np.iinfo(dtype).min

    @tf.function
    def check(ids):
        safe, _, _ = _checks.validate_ids(ids, vocab, "raise", "layer", "input_dim")
        return safe

    np.testing.assert_array_equal(check(tf.constant([0, 4], dtype)), [0, 4])
    for bad in (-1, smallest):
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"received id {bad},"):
            check(tf.constant([1, bad, 2], dtype))


@pytest.mark.parametrize(
    "dtype, ids, shown",
    [
        ("int32", [9, 1, -3, 7, -1], "-1"),  # a negative id first: nearest 0
        ("int32", [9, 1, 12, 7], "12"),  # else the largest
        ("int64", [2**40, -(2**40)], str(-(2**40))),
        ("uint64", [3, 2**63 + 5], str(2**63 + 5)),  # not wrapped to negative
    ],
)
def test_the_message_names_the_same_bad_id_eagerly_and_in_graphs(dtype, ids, shown):
    # One reduction finds the bad id: read as unsigned, a negative id is larger
    # than any bound. Eager calls and graphs name the same one.
    def check(x):
        return _checks.validate_ids(x, VOCAB, "raise", "layer", "input_dim")[0]

    for run in (check, tf.function(check)):
        with pytest.raises(
            tf.errors.InvalidArgumentError, match=f"received id {shown},"
        ):
            run(tf.constant(ids, dtype))
