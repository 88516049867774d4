import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import run_layer_test

import keras_lookup

X = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")


@pytest.mark.parametrize(
    "init_kwargs, input_data, expected_shape, n_weights",
    [
        ({"units": 3}, X, (4, 3), 2),
        ({"units": 3, "use_bias": False}, X, (4, 3), 1),
        ({"units": 2, "activation": "relu"}, X.reshape(2, 2, 6), (2, 2, 2), 2),
    ],
    ids=["2d", "no_bias", "3d_relu"],
)
def test_layer_basics(init_kwargs, input_data, expected_shape, n_weights):
    run_layer_test(
        keras_lookup.Dense,
        init_kwargs,
        input_data,
        expected_shape,
        expected_num_trainable_weights=n_weights,
        mixed_precision_policies=("mixed_float16", "mixed_bfloat16"),
    )


def test_matches_keras_dense():
    ours = keras_lookup.Dense(3, activation="tanh")
    theirs = keras.layers.Dense(3, activation="tanh")
    ours.build((None, 6))
    theirs.build((None, 6))
    ours.set_weights(theirs.get_weights())
    np.testing.assert_allclose(ours(X), theirs(X), rtol=1e-6)
    assert set(theirs.get_config()) - {
        "lora_rank",
        "lora_alpha",
        "quantization_config",
    } <= set(ours.get_config())


def test_sparse_input_is_never_densified_and_its_gradient_is_row_sparse():
    layer = keras_lookup.Dense(3, activation="relu")
    layer.build((None, 6))
    sparse = tf.sparse.from_dense(tf.constant(X * (X > 0.5)))

    @tf.function
    def run(x):
        with tf.GradientTape() as tape:
            out = layer(x)
            loss = tf.reduce_sum(out)
        return out, tape.gradient(loss, layer.kernel.value)

    out, kernel_grad = run(sparse)
    # A sparse lookup and a dense matmul sum in different orders.
    np.testing.assert_allclose(
        out, layer(tf.sparse.to_dense(sparse)), rtol=1e-5, atol=1e-6
    )
    assert isinstance(kernel_grad, tf.IndexedSlices)
    touched = np.unique(tf.sparse.to_dense(sparse).numpy().nonzero()[1])
    np.testing.assert_array_equal(np.unique(kernel_grad.indices), touched)
    graph = run.get_concrete_function(sparse).graph
    ops = {op.type for op in graph.get_operations()}
    assert not ops & {"SparseToDense", "ScatterNd", "SparseTensorToDense"}


def test_sparse_input_in_functional_model_trains():
    inputs = keras.Input((6,), sparse=True)
    model = keras.Model(inputs, keras_lookup.Dense(1)(inputs))
    model.compile("sgd", "mse")
    sparse = tf.sparse.from_dense(tf.constant(X))
    before = model.get_weights()[0].copy()
    model.fit(sparse, np.ones((4, 1)), epochs=1, batch_size=4, verbose=0)
    assert not np.allclose(before, model.get_weights()[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        # Checked by keras_lookup (Keras checks `units` only from 3.13 on, the
        # others not at all), so the message is the same on every supported Keras.
        ({"units": 0}, "`units` must be a positive integer. Received: units=0"),
        ({"units": 2.5}, "`units` must be a positive integer. Received: units=2.5"),
        ({"units": True}, "Received: units=True"),
        ({"units": None}, "Received: units=None"),
        ({"units": 2, "use_bias": "yes"}, "`use_bias` must be a boolean"),
        ({"units": 2, "lora_rank": 0}, "Received: lora_rank=0"),
        # Keras's own check: keras_lookup.Dense is its Dense.
        ({"units": 2, "activation": "nope"}, "nope"),
    ],
    ids=[
        "zero_units",
        "float_units",
        "bool_units",
        "none_units",
        "use_bias",
        "zero_lora_rank",
        "unknown_activation",
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_lookup.Dense(**kwargs)
    config = keras_lookup.Dense(3).get_config()
    config.update(kwargs)
    # Keras's from_config re-raises constructor errors as TypeError, message kept.
    with pytest.raises((ValueError, TypeError), match=message):
        keras_lookup.Dense.from_config(config)


def test_sparse_multi_hot_trains_row_sparse_with_lazy_adam():
    vocab = 1000
    inputs = keras.Input((vocab,), sparse=True)
    model = keras.Model(inputs, keras_lookup.Dense(1)(keras_lookup.Dense(4)(inputs)))
    model.compile(keras_lookup.optimizers.LazyAdam(0.1), "mse")
    touched = np.array([3, 17, 256, 999])
    indices = [[0, 3], [0, 256], [1, 17], [1, 999], [2, 3]]
    x = tf.SparseTensor(indices, tf.ones(5), (3, vocab))
    before = model.layers[1].kernel.numpy()
    model.train_on_batch(x, np.ones((3, 1), "float32"))
    after = model.layers[1].kernel.numpy()
    moved = np.flatnonzero(np.any(after != before, axis=1))
    np.testing.assert_array_equal(moved, touched)
    # Adam's moments too: untouched rows were never read or written.
    slots = [v for v in model.optimizer.variables if v.shape == (vocab, 4)]
    assert len(slots) == 2
    for slot in slots:
        np.testing.assert_array_equal(
            np.flatnonzero(np.any(slot.numpy() != 0, axis=1)), touched
        )


def test_input_spec_and_activation_none_are_keras_s():
    layer = keras_lookup.Dense(2)
    layer(X[:, :3])
    with pytest.raises(ValueError, match="incompatible with the layer"):
        layer(X[:, :4])
    layer.activation = None  # Keras's Dense reads it as linear
    np.testing.assert_allclose(
        layer(X[:, :3]),
        X[:, :3] @ layer.kernel.numpy() + layer.bias.numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
