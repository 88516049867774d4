"""Bags of ids: combiners, per-id weights and every input form, in every layer."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_lookup

VOCAB, DIM = 12, 3
# Row 1 is empty; row 2 holds id 5 twice.
BAGS = [[3, 1, 4], [], [5, 9, 2, 6, 5], [7]]
BAG_WEIGHTS = [[0.5, 2.0, 1.0], [], [1.5, 0.25, 3.0, 1.0, 0.5], [2.0]]
TABLE = np.random.default_rng(1).normal(size=(VOCAB, DIM)).astype("float32")

COMBINERS = ("sum", "mean", "sqrtn")
ID_FORMS = ("dense_padded", "ragged", "sparse")
MULTI_HOT_FORMS = ("multi_hot_dense", "multi_hot_sparse")
LAYERS = ("embedding", "gather", "matmul")


def reference(bags, combiner):
    """numpy: one vector per bag of `(id, weight)` pairs."""
    out = np.zeros((len(bags), DIM))
    for r, bag in enumerate(bags):
        if not bag:
            continue
        ids = np.array([i for i, _ in bag])
        w = np.array([w for _, w in bag])
        total = (TABLE[ids] * w[:, None]).sum(0)
        denominator = {"sum": 1.0, "mean": w.sum(), "sqrtn": np.sqrt((w**2).sum())}
        out[r] = total / denominator[combiner]
    return out


def pairs(weighted, aggregate=False):
    weights = BAG_WEIGHTS if weighted else [[1.0] * len(b) for b in BAGS]
    bags = [list(zip(b, w, strict=True)) for b, w in zip(BAGS, weights, strict=True)]
    if aggregate:  # a multi-hot matrix holds one total weight per id
        bags = [
            [(i, sum(w for j, w in bag if j == i)) for i in sorted({i for i, _ in bag})]
            for bag in bags
        ]
    return bags


def make_input(form, weighted):
    """(inputs, weights) for one input form."""
    width = max(len(b) for b in BAGS)
    if form == "dense_padded":
        ids = np.zeros((len(BAGS), width), "int32")
        w = np.full((len(BAGS), width), 7.0, "float32")  # padding weights ignored
        for r, (b, bw) in enumerate(zip(BAGS, BAG_WEIGHTS, strict=True)):
            ids[r, : len(b)] = b
            w[r, : len(b)] = bw
        return tf.constant(ids), tf.constant(w) if weighted else None
    if form == "ragged":
        ids = tf.ragged.constant(BAGS, dtype=tf.int32, ragged_rank=1)
        w = tf.ragged.constant(BAG_WEIGHTS, dtype=tf.float32, ragged_rank=1)
        return ids, w if weighted else None
    if form == "sparse":
        indices = [[r, c] for r, b in enumerate(BAGS) for c in range(len(b))]
        shape = [len(BAGS), width]
        ids = tf.SparseTensor(indices, [i for b in BAGS for i in b], shape)
        w = tf.SparseTensor(indices, [x for b in BAG_WEIGHTS for x in b], shape)
        return tf.cast(ids, tf.int64), w if weighted else None
    matrix = np.zeros((len(BAGS), VOCAB), "float32")
    for r, bag in enumerate(pairs(weighted, aggregate=True)):
        for i, w in bag:
            matrix[r, i] = w
    if form == "multi_hot_sparse":
        return tf.sparse.from_dense(matrix), None
    return tf.constant(matrix), None


def make_layer(kind, form, combiner, dtype=None):
    kwargs = {"combiner": combiner}
    if dtype:
        kwargs["dtype"] = dtype
    if form == "dense_padded":
        kwargs["mask_zero"] = True
    if kind == "embedding":
        layer = keras_lookup.Embedding(VOCAB, DIM, **kwargs)
    else:
        if form.startswith("multi_hot"):
            kwargs["input_format"] = "multi_hot"
        layer = keras_lookup.DimensionReducer(VOCAB, DIM, strategy=kind, **kwargs)
    layer.build()
    layer.set_weights([TABLE])
    return layer


CASES = [
    pytest.param(c, f, w, k, id=f"{c}_{f}_{'weighted' if w else 'unweighted'}_{k}")
    for c, f, w, k in itertools.product(
        COMBINERS, ID_FORMS + MULTI_HOT_FORMS, (False, True), LAYERS
    )
    if not (f in MULTI_HOT_FORMS and k == "embedding")
]


@pytest.mark.parametrize("combiner, form, weighted, kind", CASES)
def test_matches_numpy_reference(combiner, form, weighted, kind):
    layer = make_layer(kind, form, combiner)
    inputs, weights = make_input(form, weighted)
    out = layer(inputs, weights=weights) if weights is not None else layer(inputs)
    expected = reference(pairs(weighted, form in MULTI_HOT_FORMS), combiner)
    assert out.shape == (len(BAGS), DIM)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[1], np.zeros(DIM))  # the empty bag


@pytest.mark.parametrize(
    "combiner, form", itertools.product(COMBINERS, ID_FORMS + MULTI_HOT_FORMS)
)
def test_gradients_agree_between_strategies(combiner, form):
    upstream = np.random.default_rng(2).normal(size=(len(BAGS), DIM))
    kinds = ("gather", "matmul") + (() if form in MULTI_HOT_FORMS else ("embedding",))
    grads = {}
    for kind in kinds:
        layer = make_layer(kind, form, combiner)
        inputs, weights = make_input(form, weighted=True)
        with tf.GradientTape() as tape:
            out = layer(inputs, weights=weights)
            loss = tf.reduce_sum(out * upstream)
        (grad,) = tape.gradient(loss, layer.trainable_variables)
        if kind != "matmul":
            assert isinstance(grad, tf.IndexedSlices), "gather must stay row-sparse"
        grads[kind] = tf.convert_to_tensor(grad).numpy()
    for kind in kinds[1:]:
        np.testing.assert_allclose(grads[kind], grads["gather"], rtol=1e-5, atol=1e-6)
    assert np.any(grads["gather"] != 0)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize(
    "kind, form",
    [
        (k, f)
        for k, f in itertools.product(LAYERS, ID_FORMS + MULTI_HOT_FORMS)
        if not (f in MULTI_HOT_FORMS and k == "embedding")
    ],
)
def test_mixed_precision(policy, kind, form):
    layer = make_layer(kind, form, "mean", dtype=policy)
    inputs, weights = make_input(form, weighted=True)
    out = layer(inputs, weights=weights)
    assert out.dtype == policy.removeprefix("mixed_")
    assert all(w.dtype == "float32" for w in layer.weights)
    expected = reference(pairs(True, form in MULTI_HOT_FORMS), "mean")
    tol = {"mixed_float16": 2e-3, "mixed_bfloat16": 2e-2}[policy]
    np.testing.assert_allclose(tf.cast(out, tf.float32), expected, rtol=tol, atol=tol)


def test_sparse_bags_are_never_densified_in_the_gather_path():
    layer = make_layer("gather", "multi_hot_sparse", "sum")
    inputs, _ = make_input("multi_hot_sparse", weighted=True)
    fn = tf.function(layer.call)
    graph = fn.get_concrete_function(inputs).graph
    ops = {op.type for op in graph.get_operations()}
    assert not ops & {"SparseToDense", "ScatterNd", "OneHot", "MatMul"}
    for op in graph.get_operations():
        for t in op.outputs:
            assert VOCAB not in t.shape[1:2] or t.shape.rank != 2 or op.type == "Const"


def test_keras_mask_from_an_upstream_layer_pads_bags():
    layer = make_layer("gather", "ragged", "mean")
    ids = tf.constant([[3, 1, 4]])
    mask = tf.constant([[True, False, True]])
    np.testing.assert_allclose(
        layer(ids, mask=mask), [(TABLE[3] + TABLE[4]) / 2], rtol=1e-6
    )


def test_combiner_output_carries_no_mask():
    inputs = keras.Input((4,), dtype="int32")
    x = keras_lookup.Embedding(VOCAB, DIM, mask_zero=True, combiner="sum")(inputs)
    y = keras_lookup.Embedding(VOCAB, DIM, mask_zero=True)(inputs)
    assert getattr(x, "_keras_mask", None) is None
    out = keras_lookup.Embedding(VOCAB, DIM, mask_zero=True, combiner="sum")(
        tf.constant([[1, 0]])
    )
    assert getattr(out, "_keras_mask", None) is None
    assert y is not None


def test_reducer_mask_zero_reaches_pooling():
    inputs = keras.Input((4,), dtype="int32")
    x = keras_lookup.DimensionReducer(VOCAB, DIM, mask_zero=True, strategy="matmul")(
        inputs
    )
    model = keras.Model(inputs, [x, keras.layers.GlobalAveragePooling1D()(x)])
    seq, pooled = model.predict(np.array([[2, 5, 0, 0]]), verbose=0)
    np.testing.assert_allclose(pooled[0], seq[0, :2].mean(0), rtol=1e-6)


# Reverse projection (weight tying).


def test_reverse_projection_values_and_tied_gradients():
    layer = keras_lookup.Embedding(VOCAB, DIM)
    layer.build()
    layer.set_weights([TABLE])
    features = np.random.default_rng(3).normal(size=(2, 5, DIM)).astype("float32")
    ids = tf.constant([[1, 2], [2, 2]])
    with tf.GradientTape() as tape:
        logits = layer(features, reverse=True)
        loss = tf.reduce_sum(logits) + tf.reduce_sum(layer(ids))
    np.testing.assert_allclose(logits, features @ TABLE.T, rtol=1e-5, atol=1e-5)
    assert logits.shape == (2, 5, VOCAB)
    (grad,) = tape.gradient(loss, layer.trainable_variables)
    expected = np.tile(features.reshape(-1, DIM).sum(0), (VOCAB, 1))
    np.add.at(expected, [1, 2, 2, 2], 1.0)
    np.testing.assert_allclose(tf.convert_to_tensor(grad), expected, rtol=1e-5)


def test_tied_language_model_trains_and_passes_the_mask_on():
    embedding = keras_lookup.Embedding(VOCAB, DIM, mask_zero=True)
    inputs = keras.Input((None,), dtype="int32")
    x = keras.layers.LSTM(DIM, return_sequences=True)(embedding(inputs))
    logits = embedding(x, reverse=True)
    model = keras.Model(inputs, logits)
    assert len(model.trainable_weights) == 4  # the table, once, and the LSTM's
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ids = np.random.default_rng(0).integers(1, VOCAB, size=(16, 6))
    history = model.fit(ids[:, :-1], ids[:, 1:], epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_reverse_under_mixed_precision():
    layer = keras_lookup.Embedding(VOCAB, DIM, dtype="mixed_float16")
    layer.build()
    layer.set_weights([TABLE])
    out = layer(np.ones((2, DIM), "float32"), reverse=True)
    assert out.dtype == "float16"
    np.testing.assert_allclose(
        tf.cast(out, tf.float32), np.ones((2, DIM)) @ TABLE.T, rtol=2e-3, atol=2e-3
    )


# Bad input in the bag paths.


def test_weights_with_the_wrong_dense_shape():
    layer = make_layer("gather", "dense_padded", "sum")
    with pytest.raises(ValueError, match="weights of shape"):
        layer(tf.constant([[1, 2]]), weights=tf.constant([[1.0, 2.0, 3.0]]))
    fn = tf.function(
        lambda i, w: layer(i, weights=w),
        input_signature=[tf.TensorSpec([None, None], tf.int32)] * 1
        + [tf.TensorSpec([None, None], tf.float32)],
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="shape do not match"):
        fn(tf.constant([[1, 2]]), tf.constant([[1.0, 2.0, 3.0]]))


def test_weights_with_other_ragged_row_lengths():
    layer = make_layer("gather", "ragged", "sum")
    ids = tf.ragged.constant([[1, 2], [3]])
    weights = tf.ragged.constant([[1.0], [2.0, 3.0]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="row lengths"):
        layer(ids, weights=weights)


def test_weights_with_other_sparse_indices():
    layer = make_layer("matmul", "sparse", "sum")
    ids = tf.SparseTensor([[0, 0], [1, 0]], tf.constant([1, 2], tf.int64), [2, 2])
    weights = tf.SparseTensor([[0, 0], [1, 1]], [1.0, 2.0], [2, 2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="indices"):
        layer(ids, weights=weights)


def test_weights_of_another_form_than_the_ids():
    layer = make_layer("gather", "ragged", "sum")
    with pytest.raises(TypeError, match="must be a tf.RaggedTensor too"):
        layer(tf.ragged.constant([[1, 2]]), weights=tf.constant([[1.0, 2.0]]))


@pytest.mark.parametrize("kind", ["gather", "matmul", "embedding"])
def test_negative_weights_are_rejected_by_mean_only(kind):
    ids = tf.constant([[1, 2]])
    weights = tf.constant([[1.0, -1.0]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="non-negative weights"):
        make_layer(kind, "ragged", "mean")(ids, weights=weights)
    for combiner in ("sum", "sqrtn"):
        out = make_layer(kind, "ragged", combiner)(ids, weights=weights)
        assert np.all(np.isfinite(out))


def test_multi_hot_of_the_wrong_width():
    layer = make_layer("gather", "multi_hot_dense", "sum")
    with pytest.raises(ValueError, match="vocab_size=12"):
        layer(tf.ones((2, VOCAB + 1)))
    sparse_layer = make_layer("gather", "multi_hot_sparse", "sum")
    wide = tf.SparseTensor([[0, 0]], [1.0], [1, VOCAB + 1])
    with pytest.raises(ValueError, match="vocab_size=12"):
        sparse_layer(wide)
    # When the width is only known at run time, the check runs in the graph.
    spec = tf.SparseTensorSpec([None, None], tf.float32)
    fn = tf.function(sparse_layer.call, input_signature=[spec])
    with pytest.raises(tf.errors.InvalidArgumentError, match="Received 13 columns"):
        fn(wide)


def test_weights_without_a_combiner():
    with pytest.raises(ValueError, match="Pass `combiner="):
        keras_lookup.Embedding(VOCAB, DIM)(tf.constant([[1]]), weights=tf.ones((1, 1)))


def test_combiner_needs_a_bag_axis():
    with pytest.raises(ValueError, match="rank >= 2"):
        keras_lookup.Embedding(VOCAB, DIM, combiner="sum")(tf.constant([1, 2]))


@pytest.mark.parametrize("form", ["ragged", "sparse"])
def test_ragged_and_sparse_bags_train_in_a_functional_model(form):
    inputs = keras.Input((None,), dtype="int64", **{form: True})
    out = keras_lookup.DimensionReducer(VOCAB, 1, combiner="mean", strategy="gather")(
        inputs
    )
    model = keras.Model(inputs, out)
    model.compile(keras.optimizers.SGD(0.5), "mse")
    ids, _ = make_input(form, weighted=False)
    ids = tf.cast(ids, tf.int64)
    data = tf.data.Dataset.from_tensors((ids, np.ones((len(BAGS), 1), "float32")))
    history = model.fit(data, epochs=5, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert np.all(np.isfinite(model.predict(data, verbose=0)))


@pytest.mark.parametrize("layer_kind", LAYERS)
@pytest.mark.parametrize(
    "bags",
    [[[3, 1], [4], [], []], [[], [], []], [[5, 99], [99]]],
    ids=["trailing_empty", "all_empty", "trailing_all_invalid"],
)
def test_ragged_bags_with_trailing_empty_rows(layer_kind, bags):
    # Ragged bags are summed with the sorted segment kernel, which leaves
    # trailing empty bags out; they must still come back as zero rows. Id 99
    # is invalid and dropped (invalid_ids="zeros"), emptying the last bag.
    if layer_kind == "embedding":
        layer = keras_lookup.Embedding(VOCAB, DIM, combiner="sum", invalid_ids="zeros")
    else:
        layer = keras_lookup.DimensionReducer(
            VOCAB, DIM, strategy=layer_kind, combiner="sum", invalid_ids="zeros"
        )
    layer.build()
    layer.set_weights([TABLE])
    ids = tf.ragged.constant(bags, dtype=tf.int32, ragged_rank=1)
    expected = np.array(
        [TABLE[[i for i in b if i < VOCAB]].sum(0) for b in bags], "float32"
    ).reshape(len(bags), DIM)
    for call in (layer, tf.function(layer)):
        np.testing.assert_allclose(call(ids), expected, rtol=1e-6, atol=1e-6)
