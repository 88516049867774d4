import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import run_layer_test

import keras_lookup

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
    "vocab_size, combiner, expected",
    [
        (8, None, "matmul"),
        (1000, None, "gather"),
        (200, "sum", "matmul"),
        (100_000, "mean", "gather"),
    ],
)
def test_auto_resolves_privately_and_config_keeps_auto(vocab_size, combiner, expected):
    layer = keras_lookup.DimensionReducer(vocab_size, 4, combiner=combiner)
    assert layer._strategy == expected
    assert layer.get_config()["strategy"] == "auto"


def test_auto_refines_with_known_bag_size():
    small_bags = keras_lookup.DimensionReducer(2048, 4, combiner="sum")
    small_bags.build((None, 8))
    large_bags = keras_lookup.DimensionReducer(2048, 4, combiner="sum")
    large_bags.build((None, 64))
    assert (small_bags._strategy, large_bags._strategy) == ("gather", "matmul")


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
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_lookup.DimensionReducer(**kwargs)
    config = keras_lookup.DimensionReducer(5, 2).get_config()
    config.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=message):
        keras_lookup.DimensionReducer.from_config(config)
