"""Lookup and multiplication give the same numbers: `one_hot(ids) @ W == W[ids]`."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import keras_lookup

# The seed's worked example.
W = np.array(
    [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [0.9, 0.0, 0.1, 0.2]], "float32"
)
SENTENCE = np.array([0, 2, 1, 2])
EXPECTED = [
    [0.1, 0.2, 0.3, 0.4],
    [0.9, 0.0, 0.1, 0.2],
    [0.5, 0.6, 0.7, 0.8],
    [0.9, 0.0, 0.1, 0.2],
]


def _built(layer, *build_args):
    layer.build(*build_args)
    return layer


def test_seed_example_embedding():
    layer = _built(keras_lookup.Embedding(3, 4))
    layer.set_weights([W])
    np.testing.assert_array_equal(layer(SENTENCE), np.array(EXPECTED, "float32"))


def test_seed_example_dense_on_one_hot():
    one_hot = np.eye(3, dtype="float32")[SENTENCE]
    assert one_hot.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0, 1]]
    layer = _built(keras_lookup.Dense(4, use_bias=False), (None, 3))
    layer.set_weights([W])
    np.testing.assert_array_equal(layer(one_hot), np.array(EXPECTED, "float32"))
    sparse = tf.sparse.from_dense(one_hot)
    np.testing.assert_array_equal(layer(sparse), np.array(EXPECTED, "float32"))


@pytest.mark.parametrize("strategy", ["gather", "matmul"])
def test_seed_example_dimension_reducer(strategy):
    layer = _built(keras_lookup.DimensionReducer(3, 4, strategy=strategy))
    layer.set_weights([W])
    np.testing.assert_array_equal(layer(SENTENCE), np.array(EXPECTED, "float32"))


def _three_ways(table, ids, upstream):
    """Forward and table gradient of gather, one-hot matmul, sparse matmul."""
    vocab, dim = table.shape
    gather = _built(keras_lookup.DimensionReducer(vocab, dim, strategy="gather"))
    matmul = _built(keras_lookup.DimensionReducer(vocab, dim, strategy="matmul"))
    dense = _built(keras_lookup.Dense(dim, use_bias=False), (None, vocab))
    results = []
    flat = ids.reshape(-1)
    sparse = tf.SparseTensor(
        np.stack([np.arange(flat.size), flat], 1).astype("int64"),
        np.ones(flat.size, "float32"),
        [flat.size, vocab],
    )
    for layer, inputs in ((gather, ids), (matmul, ids), (dense, sparse)):
        layer.set_weights([table])
        with tf.GradientTape() as tape:
            out = tf.reshape(layer(inputs), ids.shape + (dim,))
            loss = tf.reduce_sum(out * upstream)
        (grad,) = tape.gradient(loss, layer.trainable_variables)
        results.append((out.numpy(), tf.convert_to_tensor(grad).numpy()))
    return results


@settings(max_examples=25, deadline=None)
@given(
    vocab=st.integers(1, 300),
    dim=st.integers(1, 16),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    seed=st.integers(0, 2**31 - 1),
)
def test_gather_one_hot_and_sparse_matmul_agree(vocab, dim, shape, seed):
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(vocab, dim)).astype("float32")
    ids = rng.integers(0, vocab, size=tuple(shape)).astype("int32")
    upstream = rng.normal(size=tuple(shape) + (dim,)).astype("float32")
    (out_g, grad_g), (out_m, grad_m), (out_s, grad_s) = _three_ways(
        table, ids, upstream
    )
    np.testing.assert_array_equal(out_g, table[ids])
    np.testing.assert_allclose(out_m, out_g, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out_s, out_g, rtol=1e-6, atol=1e-6)
    expected_grad = np.zeros_like(table)
    np.add.at(expected_grad, ids.reshape(-1), upstream.reshape(-1, dim))
    for grad in (grad_g, grad_m, grad_s):
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["ragged", "sparse"])
def test_strategies_agree_on_ragged_and_sparse_ids(form):
    table = np.random.default_rng(4).normal(size=(20, 3)).astype("float32")
    if form == "ragged":
        ids = tf.ragged.constant([[1, 19, 4], [], [7]])
    else:
        ids = tf.SparseTensor([[0, 0], [0, 2], [2, 1]], tf.constant([1, 19, 7]), [3, 4])
    outs = []
    for layer in (
        keras_lookup.Embedding(20, 3),
        keras_lookup.DimensionReducer(20, 3, strategy="gather"),
        keras_lookup.DimensionReducer(20, 3, strategy="matmul"),
    ):
        layer.build()
        layer.set_weights([table])
        out = layer(ids)
        outs.append(out.flat_values if form == "ragged" else out)
    expected = (
        table[[1, 19, 4, 7]]
        if form == "ragged"
        else tf.scatter_nd([[0, 0], [0, 2], [2, 1]], table[[1, 19, 7]], [3, 4, 3])
    )
    for out in outs:
        np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
@pytest.mark.parametrize("strategy", ["gather", "matmul", "auto"])
def test_multi_hot_input_gets_the_gradient_of_a_matmul(strategy, combiner):
    # A dense multi-hot matrix may come from a trainable layer. Its gradient
    # is that of `matrix @ table` at every entry, zeros included, as with
    # keras.layers.Dense; the gather used to give the nonzero entries only.
    rng = np.random.default_rng(0)
    table = rng.normal(size=(6, 3)).astype("float32")
    counts = np.array([[0, 2, 0, 1, 0, 0], [1, 0, 0, 0, 0, 3]], "float32")
    layer = _built(
        keras_lookup.DimensionReducer(
            6, 3, strategy=strategy, input_format="multi_hot", combiner=combiner
        ),
        (None, 6),
    )
    layer.set_weights([table])
    dense = _built(keras.layers.Dense(3, use_bias=False), (None, 6))
    dense.set_weights([table])
    reference = {
        "sum": lambda x: dense(x),
        "mean": lambda x: dense(x) / tf.reduce_sum(x, 1, keepdims=True),
        "sqrtn": lambda x: dense(x) / tf.norm(x, axis=1, keepdims=True),
    }[combiner]
    grads = []
    for forward in (layer, reference):
        for run in (forward, tf.function(forward)):
            x = tf.constant(counts)
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(run(x) ** 2)
            grads.append(tape.gradient(loss, x))
    for grad in grads[1:]:
        np.testing.assert_allclose(grad, grads[0], rtol=1e-5, atol=1e-5)
    assert np.all(grads[0].numpy()[counts == 0] != 0)
