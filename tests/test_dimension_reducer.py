import collections
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import run_layer_test
from test_calibration import CROSSOVERS, write_calibration

import keras_lookup
from keras_lookup import _cost_model

IDS = np.array([[0, 3, 7, 1], [9, 9, 2, 0]], "int32")
STRATEGIES = ("gather", "matmul")


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    "extra, input_data, expected_shape, n_weights",
    [
        ({}, IDS, (2, 4, 3), 1),
        ({"use_bias": True, "activation": "relu"}, IDS, (2, 4, 3), 2),
        ({"mask_zero": True}, IDS, (2, 4, 3), 1),
        ({"combiner": "sqrtn", "use_bias": True}, IDS, (2, 3), 2),
    ],
    ids=["plain", "bias_relu", "mask_zero", "combiner"],
)
def test_layer_basics(strategy, extra, input_data, expected_shape, n_weights):
    kwargs = {"vocab_size": 10, "units": 3, "strategy": strategy, **extra}
    run_layer_test(
        keras_lookup.DimensionReducer,
        kwargs,
        input_data,
        expected_shape,
        expected_num_trainable_weights=n_weights,
        mixed_precision_policies=("mixed_float16", "mixed_bfloat16"),
    )


@pytest.mark.parametrize(
    "vocab_size, combiner, input_format, expected",
    [
        (8, None, "ids", "matmul"),
        (1000, None, "ids", "gather"),
        (8, "sum", "ids", "matmul"),
        (200, "sum", "ids", "per_batch"),
        (200, None, "multi_hot", "per_batch"),
        (100_000, "mean", "ids", "gather"),
    ],
)
def test_auto_resolves_privately_and_config_keeps_auto(
    vocab_size, combiner, input_format, expected
):
    write_calibration(CROSSOVERS)
    layer = keras_lookup.DimensionReducer(
        vocab_size, 4, combiner=combiner, input_format=input_format
    )
    assert layer.strategy_choice.strategy == expected
    assert layer.get_config()["strategy"] == "auto"
    clone = keras_lookup.DimensionReducer.from_config(layer.get_config())
    assert clone.strategy_choice == layer.strategy_choice


def test_auto_decides_at_build_when_the_bag_size_is_static():
    write_calibration(CROSSOVERS)  # V* = 256 at 8 ids per row, 4,096 at 64
    small_bags = keras_lookup.DimensionReducer(2048, 4, combiner="sum")
    small_bags.build((None, 8))
    large_bags = keras_lookup.DimensionReducer(2048, 4, combiner="sum")
    large_bags.build((None, 64))
    assert small_bags.strategy_choice.strategy == "gather"
    assert large_bags.strategy_choice.strategy == "matmul"
    assert "dense bags of 64 ids per row" in large_bags.strategy_choice.reason
    assert "decided per batch" in large_bags.strategy_choice.reason


def test_strategy_choice_is_read_only_and_names_explicit_strategies():
    layer = keras_lookup.DimensionReducer(10, 2, strategy="gather")
    assert layer.strategy_choice.strategy == "gather"
    with pytest.raises(AttributeError):
        layer.strategy_choice = "matmul"


PER_BATCH_VOCAB = 1024  # k* = 22.6 ids per row under CROSSOVERS
PER_BATCH_FORMS = ("ragged", "sparse", "dense_unknown_width", "multi_hot")


def _batch(form, k, rows=5, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.stack(
        [rng.choice(PER_BATCH_VOCAB, size=k, replace=False) for _ in range(rows)]
    ).astype("int32")
    if form == "ragged":
        return tf.RaggedTensor.from_tensor(tf.constant(ids))
    if form == "sparse":
        indices = np.argwhere(np.ones_like(ids))
        return tf.SparseTensor(indices, ids.reshape(-1), ids.shape)
    if form == "multi_hot":
        dense = np.zeros((rows, PER_BATCH_VOCAB), "float32")
        np.put_along_axis(dense, ids, 1.0, axis=1)
        return tf.constant(dense)
    return tf.constant(ids)


def _reducer(strategy, form, seed=0):
    keras.utils.set_random_seed(seed)
    multi_hot = form == "multi_hot"
    layer = keras_lookup.DimensionReducer(
        PER_BATCH_VOCAB,
        3,
        strategy=strategy,
        combiner=None if multi_hot else "sum",
        input_format="multi_hot" if multi_hot else "ids",
        kernel_initializer="glorot_uniform",
    )
    layer.build()
    return layer


def _signature(form, batch):
    if form == "dense_unknown_width":
        return [tf.TensorSpec([None, None], tf.int32)]
    return None


def _step(layer, batch, form, graph):
    def step(x):
        with tf.GradientTape() as tape:
            out = layer(x)
            loss = tf.reduce_sum(out * tf.range(1.0, 4.0))
        return out, tape.gradient(loss, layer.kernel.value)

    if graph:
        step = tf.function(step, input_signature=_signature(form, batch))
    return step(batch)


@pytest.mark.parametrize("graph", [True, False], ids=["graph", "eager"])
@pytest.mark.parametrize("form", PER_BATCH_FORMS)
@pytest.mark.parametrize("k, side", [(1, "gather"), (8, "gather"), (40, "matmul")])
def test_per_batch_picks_each_side_with_the_same_numbers(form, k, side, graph):
    write_calibration(CROSSOVERS)
    auto = _reducer("auto", form)
    assert auto.strategy_choice.strategy == "per_batch"
    batch = _batch(form, k)
    out, grad = _step(auto, batch, form, graph)
    # Which side ran shows in the gradient: a gather's lists the rows looked
    # up, a matmul's covers the whole table (dense, or every row once the
    # graph's `tf.cond` has merged it with the gather side's IndexedSlices).
    if side == "gather":
        assert isinstance(grad, tf.IndexedSlices)
        assert grad.indices.shape[0] == 5 * k
    elif graph:
        assert isinstance(grad, tf.IndexedSlices)
        assert grad.indices.shape[0] == PER_BATCH_VOCAB
    else:
        assert isinstance(grad, tf.Tensor)
    for strategy in ("gather", "matmul"):
        fixed = _reducer(strategy, form)
        fixed.set_weights(auto.get_weights())
        expected_out, expected_grad = _step(fixed, batch, form, graph)
        np.testing.assert_allclose(out, expected_out, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            tf.convert_to_tensor(grad),
            tf.convert_to_tensor(expected_grad),
            rtol=1e-5,
            atol=1e-6,
        )


def _op_types(layer, spec):
    graph = tf.function(layer.call).get_concrete_function(spec).graph
    return collections.Counter(op.type for op in graph.get_operations())


def test_per_batch_branches_only_where_the_bag_size_is_unknown():
    write_calibration(CROSSOVERS)
    auto = _reducer("auto", "ragged")
    ragged = tf.RaggedTensorSpec([None, None], tf.int32)
    gather = _op_types(_reducer("gather", "ragged"), ragged)
    branched = _op_types(auto, ragged)
    assert (
        branched["StatelessIf"] + branched["If"] > gather["StatelessIf"] + gather["If"]
    )
    # Dense bags of a static width: the same graph as the strategy picked.
    for width, side in [(8, "gather"), (40, "matmul")]:
        spec = tf.TensorSpec([None, width], tf.int32)
        assert _op_types(auto, spec) == _op_types(_reducer(side, "ragged"), spec)
    large = keras_lookup.DimensionReducer(100_000, 3, combiner="sum")
    large.build()
    assert large.strategy_choice.strategy == "gather"
    large_gather = keras_lookup.DimensionReducer(
        100_000, 3, combiner="sum", strategy="gather"
    )
    large_gather.build()
    assert _op_types(large, ragged) == _op_types(large_gather, ragged)


def test_weights_do_not_depend_on_strategy(tmp_path):
    def model(strategy):
        inputs = keras.Input((4,), dtype="int32")
        x = keras_lookup.DimensionReducer(
            10,
            3,
            strategy=strategy,
            use_bias=True,
            activation="tanh",
            bias_initializer="random_normal",
        )(inputs)
        return keras.Model(inputs, x)

    saved = model("gather")
    path = os.path.join(tmp_path, "gather.keras")
    saved.save(path)
    other = model("matmul")
    other.load_weights(path)
    np.testing.assert_allclose(
        other.predict(IDS, verbose=0), saved.predict(IDS, verbose=0), rtol=1e-6
    )
    names = [w.path.split("/")[-1] for w in other.weights]
    assert names == ["kernel", "bias"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_bias_and_activation_hand_computed(strategy):
    kernel = np.array([[1.0, -1.0], [2.0, 0.5], [0.0, 3.0]], "float32")
    bias = np.array([0.5, -4.0], "float32")
    layer = keras_lookup.DimensionReducer(
        3, 2, strategy=strategy, use_bias=True, activation="relu"
    )
    layer.build()
    layer.set_weights([kernel, bias])
    out = layer(np.array([2, 0, 1])).numpy()
    np.testing.assert_allclose(out, [[0.5, 0.0], [1.5, 0.0], [2.5, 0.0]])


def test_matmul_strategy_multiplies_a_one_hot_matrix():
    layer = keras_lookup.DimensionReducer(50, 4, strategy="matmul")
    layer.build()
    fn = tf.function(layer.call)
    ops = {
        op.type
        for op in fn.get_concrete_function(tf.constant(IDS)).graph.get_operations()
    }
    assert {"OneHot", "MatMul"} <= ops and "GatherV2" not in ops


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"vocab_size": 0, "units": 2}, "`vocab_size` must be a positive integer"),
        ({"vocab_size": 5, "units": -1}, "`units` must be a positive integer"),
        (
            {"vocab_size": 5, "units": 2, "strategy": "fast"},
            "`strategy` must be one of",
        ),
        ({"vocab_size": 5, "units": 2, "combiner": "max"}, "`combiner` must be one of"),
        (
            {"vocab_size": 5, "units": 2, "invalid_ids": "clip"},
            "`invalid_ids` must be one of",
        ),
        (
            {"vocab_size": 5, "units": 2, "input_format": "csr"},
            "`input_format` must be one of",
        ),
        (
            {"vocab_size": 5, "units": 2, "mask_zero": 1},
            "`mask_zero` must be a boolean",
        ),
        (
            {
                "vocab_size": 5,
                "units": 2,
                "mask_zero": True,
                "input_format": "multi_hot",
            },
            "`mask_zero=True` applies to ids",
        ),
        (
            {"vocab_size": 5, "units": 2, "lora_rank": -1},
            r"`lora_rank` must be None \(no LoRA\) or a positive integer. "
            "Received: lora_rank=-1",
        ),
    ],
    ids=[
        "vocab",
        "units",
        "strategy",
        "combiner",
        "invalid_ids",
        "input_format",
        "mask_zero",
        "mask_zero_multi_hot",
        "lora_rank",
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_lookup.DimensionReducer(**kwargs)
    config = keras_lookup.DimensionReducer(5, 2).get_config()
    config.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=message):
        keras_lookup.DimensionReducer.from_config(config)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int8", "int32"])
def test_multi_hot_batches_count_their_nonzero_entries(dtype):
    # The per-batch decision counts every nonzero entry once, whatever its
    # weight, sign or dtype: the entries a gather would read.
    matrix = np.array([[0, 2, 0, -1], [0, 0, 0, 0], [3, 1, 1, 0]])
    if dtype.startswith("float"):
        matrix = matrix * 0.5
    ids, rows = _cost_model.batch_ids_per_row(tf.constant(matrix, dtype))
    assert float(ids) == 5.0 and int(rows) == 3


def test_large_multi_hot_batches_are_counted_on_evenly_spaced_rows():
    # Counting every entry of a (rows, V) matrix delays the per-batch
    # decision by a whole pass; 32 evenly spaced rows place the batch.
    sample = _cost_model.MULTI_HOT_SAMPLE_ROWS
    nonzeros = np.arange(100) % 7
    matrix = (np.arange(50)[None, :] < nonzeros[:, None]).astype("float32")
    ids, rows = _cost_model.batch_ids_per_row(tf.constant(matrix))
    picked = np.arange(sample) * 100 // sample
    assert int(rows) == sample
    assert float(ids) == nonzeros[picked].sum()
    # Rank 3: rows are every position but the last axis.
    ids, rows = _cost_model.batch_ids_per_row(tf.constant(matrix.reshape(4, 25, 50)))
    assert (float(ids), int(rows)) == (nonzeros[picked].sum(), sample)


def test_sparse_multi_hot_rows_follow_the_ragged_crossovers():
    crossovers = {
        **CROSSOVERS,
        "ragged": {"1": 1, "8": 2, "64": 4},  # ragged bags always gather here
        "multi_hot": {"1": 10**6},  # dense multi-hot rows always multiply
    }
    write_calibration(crossovers)
    layer = keras_lookup.DimensionReducer(64, 3, input_format="multi_hot")
    assert layer.strategy_choice.strategy == "matmul"
    dense = tf.constant(np.eye(4, 64, dtype="float32"))
    sparse = tf.sparse.from_dense(dense)
    cal = layer._calibration
    assert _cost_model.use_matmul(layer._choice, 64, dense, True, cal) is True
    assert _cost_model.use_matmul(layer._choice, 64, sparse, True, cal) is False
    np.testing.assert_allclose(layer(dense), layer(sparse), rtol=1e-6)
