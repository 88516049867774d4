import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import run_layer_test

import keras_lookup

IDS = np.array([[0, 3, 7, 1], [9, 9, 2, 0]], "int32")


@pytest.mark.parametrize(
    "init_kwargs, input_data, expected_shape",
    [
        ({"input_dim": 10, "output_dim": 3}, IDS, (2, 4, 3)),
        ({"input_dim": 10, "output_dim": 3, "mask_zero": True}, IDS, (2, 4, 3)),
        ({"input_dim": 10, "output_dim": 3, "combiner": "mean"}, IDS, (2, 3)),
        ({"input_dim": 10, "output_dim": 5}, IDS[:, :, None], (2, 4, 1, 5)),
    ],
    ids=["2d", "mask_zero", "combiner_mean", "3d"],
)
def test_layer_basics(init_kwargs, input_data, expected_shape):
    run_layer_test(
        keras_lookup.Embedding,
        init_kwargs,
        input_data,
        expected_shape,
        expected_num_trainable_weights=1,
        mixed_precision_policies=("mixed_float16", "mixed_bfloat16"),
    )


def test_float_input_holding_whole_numbers_is_accepted():
    # keras.Input defaults to float32, so Sequential models feed float ids.
    run_layer_test(
        keras_lookup.Embedding,
        {"input_dim": 10, "output_dim": 3},
        IDS.astype("float32"),
        (2, 4, 3),
        expected_num_trainable_weights=1,
    )


def test_drop_in_for_keras_embedding():
    ours = keras_lookup.Embedding(10, 4, mask_zero=True)
    theirs = keras.layers.Embedding(10, 4, mask_zero=True)
    ours.build()
    theirs.build()
    assert [w.path.split("/")[-1] for w in ours.weights] == ["embeddings"]
    ours.set_weights(theirs.get_weights())
    np.testing.assert_array_equal(ours(IDS), theirs(IDS))
    np.testing.assert_array_equal(ours(IDS)._keras_mask, theirs.compute_mask(IDS))
    shared = set(keras.layers.Embedding(10, 4).get_config())
    assert shared - {"lora_rank", "lora_alpha", "quantization_config"} <= set(
        ours.get_config()
    )


def test_ragged_ids_give_ragged_output():
    layer = keras_lookup.Embedding(10, 2)
    ids = tf.ragged.constant([[1, 2, 3], [], [4]])
    out = layer(ids)
    assert isinstance(out, tf.RaggedTensor)
    table = layer.embeddings.numpy()
    np.testing.assert_allclose(out.flat_values, table[[1, 2, 3, 4]])
    assert out.row_lengths().numpy().tolist() == [3, 0, 1]


def test_sparse_ids_give_zero_vectors_where_there_is_no_entry():
    layer = keras_lookup.Embedding(10, 2)
    ids = tf.SparseTensor([[0, 1], [1, 0]], tf.constant([4, 0], tf.int64), [2, 3])
    out = layer(ids).numpy()
    table = layer.embeddings.numpy()
    expected = np.zeros((2, 3, 2), "float32")
    expected[0, 1] = table[4]
    expected[1, 0] = table[0]
    np.testing.assert_allclose(out, expected)


def test_gradient_is_row_sparse():
    layer = keras_lookup.Embedding(1000, 8)
    layer.build()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(IDS))
    (grad,) = tape.gradient(loss, layer.trainable_variables)
    assert isinstance(grad, tf.IndexedSlices)
    dense = tf.convert_to_tensor(grad).numpy()
    expected = np.zeros((1000, 8), "float32")
    np.add.at(expected, IDS.ravel(), 1.0)
    np.testing.assert_allclose(dense, expected)


def test_mask_propagates_through_functional_model():
    inputs = keras.Input((4,), dtype="int32")
    x = keras_lookup.Embedding(10, 3, mask_zero=True)(inputs)
    pooled = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, [x, pooled])
    ids = np.array([[1, 2, 0, 0]], "int32")
    x_out, pooled_out = model.predict(ids, verbose=0)
    np.testing.assert_allclose(pooled_out[0], x_out[0, :2].mean(axis=0), rtol=1e-6)


def test_lstm_ignores_masked_steps():
    inputs = keras.Input((None,), dtype="int32")
    x = keras_lookup.Embedding(10, 3, mask_zero=True)(inputs)
    model = keras.Model(inputs, keras.layers.LSTM(2, seed=1)(x))
    padded = model.predict(np.array([[4, 5, 0, 0, 0]]), verbose=0)
    unpadded = model.predict(np.array([[4, 5]]), verbose=0)
    np.testing.assert_allclose(padded, unpadded, rtol=1e-5, atol=1e-6)
