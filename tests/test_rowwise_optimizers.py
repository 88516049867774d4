"""Tests for `LazyRowwiseAdagrad` and `LazyRowwiseAdam` (FBGEMM's row-wise kinds)."""

import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import check_resume, sotu_era_task, train_on_sotu_era
from tensorflow.python.framework import indexed_slices
from test_optimizers import _clip, _dedupe, _initial_slots, _reference_update

import keras_lookup
from keras_lookup import optimizers

ROWWISE = {
    "adagrad": optimizers.LazyRowwiseAdagrad,
    "adam": optimizers.LazyRowwiseAdam,
}


# ---------------------------------------------------------------------------
# Numpy reference (float64) of FBGEMM's row-wise updates.


def _rowwise_reference(kind, config, state, rows, grad, step, lr):
    """FBGEMM's update of the rows `rows` of a table; `grad` deduplicated."""
    w = state["w"]
    new = w[rows]
    if config.get("weight_decay"):
        new = new - new * config["weight_decay"] * lr
    eps = config.get("epsilon", 1e-7)
    mean_square = np.mean(grad**2, axis=1)
    if kind == "adagrad":
        state["acc"][rows] += mean_square
        multiplier = lr / (np.sqrt(state["acc"][rows]) + eps)
        new = new - grad * multiplier[:, None]
    else:
        b1, b2 = config.get("beta_1", 0.9), config.get("beta_2", 0.999)
        state["m"][rows] = b1 * state["m"][rows] + (1 - b1) * grad
        state["v"][rows] = b2 * state["v"][rows] + (1 - b2) * mean_square
        m_hat = state["m"][rows] / (1 - b1**step)
        v_hat = state["v"][rows] / (1 - b2**step)
        new = new - lr * m_hat / (np.sqrt(v_hat) + eps)[:, None]
    w[rows] = new


def _rowwise_slots(kind, config, shape):
    if kind == "adagrad":
        return {"acc": np.full(shape[:1], config.get("initial_accumulator_value", 0.0))}
    return {"m": np.zeros(shape), "v": np.zeros(shape[:1])}


def _full_slots(kind, config, shape):
    config = {"initial_accumulator_value": 0.0, **config}
    return _initial_slots(kind, config, shape)


def _slots(optimizer, kind, index):
    if kind == "adagrad":
        return {"acc": optimizer._accumulators[index].numpy()}
    return {
        "m": optimizer._momentums[index].numpy(),
        "v": optimizer._velocities[index].numpy(),
    }


CASES = {
    "adagrad": ("adagrad", {"learning_rate": 0.1}),
    "adagrad_accumulator_epsilon": (
        "adagrad",
        {"learning_rate": 0.1, "initial_accumulator_value": 0.5, "epsilon": 1e-3},
    ),
    "adagrad_weight_decay": ("adagrad", {"learning_rate": 0.1, "weight_decay": 0.3}),
    "adagrad_clipnorm": ("adagrad", {"learning_rate": 0.1, "clipnorm": 0.5}),
    "adagrad_schedule": ("adagrad", {"learning_rate": "schedule"}),
    "adam": ("adam", {"learning_rate": 0.05}),
    "adam_betas_epsilon": (
        "adam",
        {"learning_rate": 0.05, "beta_1": 0.5, "beta_2": 0.9, "epsilon": 1e-3},
    ),
    "adam_weight_decay": ("adam", {"learning_rate": 0.05, "weight_decay": 0.5}),
    "adam_global_clipnorm": ("adam", {"learning_rate": 0.05, "global_clipnorm": 0.9}),
    "adam_clipvalue": ("adam", {"learning_rate": 0.05, "clipvalue": 0.4}),
    "adam_schedule": ("adam", {"learning_rate": "schedule"}),
    "adam_loss_scale_factor": (
        "adam",
        {"learning_rate": 0.05, "loss_scale_factor": 8.0},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_numpy_reference(case):
    # Three variables: a table (row-wise state), a 2-D kernel with a sparse
    # gradient (full-width lazy state) and a bias with a dense gradient
    # (Keras's update). Ids repeat within every batch.
    kind, config = CASES[case]
    kwargs = dict(config)
    if config["learning_rate"] == "schedule":
        kwargs["learning_rate"] = keras.optimizers.schedules.ExponentialDecay(
            0.1, decay_steps=1, decay_rate=0.5
        )
    optimizer = ROWWISE[kind](**kwargs)
    vocab, dim, touched = 20, 3, 12
    rng = np.random.default_rng(11)
    init = [
        rng.normal(size=(vocab, dim)),
        rng.normal(size=(6, dim)),
        rng.normal(size=(dim,)),
    ]
    names = ["embeddings", "kernel", "bias"]
    variables = [
        keras.Variable(w.astype("float32"), name=n)
        for w, n in zip(init, names, strict=True)
    ]
    ref = [
        {"w": init[0].copy(), **_rowwise_slots(kind, config, (vocab, dim))},
        {"w": init[1].copy(), **_full_slots(kind, config, (6, dim))},
        {"w": init[2].copy(), **_full_slots(kind, config, (dim,))},
    ]
    scale = config.get("loss_scale_factor", 1.0)
    for step in range(1, 6):
        ids = rng.integers(0, touched, size=9)
        # Unique kernel ids: with a zero initial accumulator, Keras's Adagrad
        # divides by sqrt(g**2 + epsilon), which turns the float32 rounding of
        # a near-zero summed gradient into errors of 1e-6 or more.
        kernel_ids = rng.choice(4, size=3, replace=False)
        values = rng.normal(size=(9, dim)).astype("float32")
        kernel_values = rng.normal(size=(3, dim)).astype("float32")
        dense = rng.normal(size=(dim,)).astype("float32")
        grads = [
            tf.IndexedSlices(tf.constant(values), tf.constant(ids), (vocab, dim)),
            tf.IndexedSlices(
                tf.constant(kernel_values), tf.constant(kernel_ids), (6, dim)
            ),
            tf.constant(dense),
        ]
        optimizer.apply(grads, variables)

        rows, summed = _dedupe(ids, values.astype("float64") / scale)
        kernel_rows, kernel_summed = _dedupe(
            kernel_ids, kernel_values.astype("float64") / scale
        )
        summed, kernel_summed, dense_grad = _clip(
            [summed, kernel_summed, dense.astype("float64") / scale], config
        )
        lr = config["learning_rate"]
        if lr == "schedule":
            lr = 0.1 * 0.5 ** (step - 1)
        full_config = {"initial_accumulator_value": 0.0, **config}
        _rowwise_reference(kind, config, ref[0], rows, summed, step, lr)
        _reference_update(
            kind, full_config, ref[1], kernel_rows, kernel_summed, step, lr
        )
        _reference_update(
            kind, full_config, ref[2], np.arange(dim), dense_grad, step, lr
        )

    # The table to 1e-6. The kernel and bias get Keras's full-width update,
    # whose first Adam step divides by `|g| + epsilon / sqrt(1 - beta_2)`:
    # float32 rounding of a near-zero gradient is amplified there, hence the
    # looser tolerance that tests/test_optimizers.py uses for it.
    for index, (variable, state) in enumerate(zip(variables, ref, strict=True)):
        tol = 1e-6 if index == 0 else 2e-5
        np.testing.assert_allclose(variable.numpy(), state["w"], rtol=tol, atol=tol)
        for name, value in _slots(optimizer, kind, index).items():
            assert value.shape == state[name].shape, (names[index], name)
            np.testing.assert_allclose(value, state[name], rtol=tol, atol=tol)
    # Rows never looked up, and their row-wise state, are bit-for-bit untouched.
    np.testing.assert_array_equal(
        variables[0].numpy()[touched:], init[0][touched:].astype("float32")
    )
    initial = _rowwise_slots(kind, config, (vocab, dim))
    for name, value in _slots(optimizer, kind, 0).items():
        np.testing.assert_array_equal(
            value[touched:], initial[name][touched:].astype("float32")
        )


@pytest.mark.parametrize("kind", sorted(ROWWISE))
def test_dense_table_gradient_updates_every_row(kind):
    # A table whose gradient is dense (a one-hot matmul lookup, or gradient
    # accumulation) gets the row-wise update of every row.
    rng = np.random.default_rng(2)
    init = rng.normal(size=(5, 4))
    table = keras.Variable(init.astype("float32"), name="embeddings")
    optimizer = ROWWISE[kind](learning_rate=0.1)
    state = {"w": init.copy(), **_rowwise_slots(kind, {}, (5, 4))}
    for step in range(1, 4):
        grad = rng.normal(size=(5, 4)).astype("float32")
        grad[1] = 0.0  # a row without gradient still gets Adam's momentum
        optimizer.apply([tf.constant(grad)], [table])
        _rowwise_reference(
            kind, {}, state, np.arange(5), grad.astype("float64"), step, 0.1
        )
    np.testing.assert_allclose(table.numpy(), state["w"], rtol=1e-6, atol=1e-6)
    for name, value in _slots(optimizer, kind, 0).items():
        np.testing.assert_allclose(value, state[name], rtol=1e-6, atol=1e-6)


def _model(vocab=40, dim=8, length=6):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((length,), dtype="int32"),
            keras_lookup.Embedding(vocab, dim),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )


@pytest.mark.parametrize("kind", sorted(ROWWISE))
def test_slots_are_rowwise_for_tables_only(kind):
    model = _model()
    optimizer = ROWWISE[kind]()
    model.compile(optimizer=optimizer, loss="mse")
    optimizer.build(model.trainable_variables)
    shapes = {v.name: tuple(v.shape) for v in optimizer.variables}
    slot = "accumulator" if kind == "adagrad" else "velocity"
    table = [s for n, s in shapes.items() if n.endswith(f"embeddings_{slot}")]
    kernel = [s for n, s in shapes.items() if n.endswith(f"kernel_{slot}")]
    assert table == [(40,)] and kernel == [(8, 1)], shapes
    if kind == "adam":
        assert [s for n, s in shapes.items() if n.endswith("embeddings_momentum")] == [
            (40, 8)
        ]


@pytest.mark.parametrize("kind", sorted(ROWWISE))
def test_fit_stays_sparse(kind, monkeypatch):
    monkeypatch.setattr(indexed_slices, "_LARGE_SPARSE_NUM_ELEMENTS", 0)
    seen = []

    class Spy(ROWWISE[kind]):
        def _rowwise_update_step(self, indices, values, variable, learning_rate):
            seen.append(variable.name)
            return super()._rowwise_update_step(
                indices, values, variable, learning_rate
            )

    model = _model()
    model.compile(optimizer=Spy(0.05, weight_decay=0.1, clipnorm=1.0), loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 30, size=(16, 6)), rng.normal(size=(16, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert not [
        w for w in caught if "Converting sparse IndexedSlices" in str(w.message)
    ]
    assert seen, "the row-wise update was never traced"
    untouched = sorted(set(range(40)) - set(x.ravel().tolist()))
    initial = _model().get_weights()[0]
    np.testing.assert_array_equal(model.get_weights()[0][untouched], initial[untouched])


@pytest.mark.parametrize("kind", sorted(ROWWISE))
def test_config_and_save_load_resume(kind, tmp_path):
    cls = ROWWISE[kind]
    optimizer = cls(0.05, weight_decay=0.01, clipnorm=2.0)
    revived = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(revived) is cls and revived.get_config() == optimizer.get_config()
    assert "amsgrad" not in optimizer.get_config()

    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 30, size=(32, 6)), rng.normal(size=(32, 1)).astype("float32")

    def compiled():
        model = _model()
        model.compile(optimizer=cls(0.05), loss="mse")
        return model

    uninterrupted = compiled()
    uninterrupted.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    interrupted = compiled()
    interrupted.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    keras_lookup.save_model(interrupted, path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.optimizer) is cls
    for saved, restored in zip(
        interrupted.optimizer.variables, loaded.optimizer.variables, strict=True
    ):
        assert tuple(saved.shape) == tuple(restored.shape)
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())
    loaded.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for resumed, reference in zip(
        loaded.get_weights(), uninterrupted.get_weights(), strict=True
    ):
        np.testing.assert_allclose(resumed, reference, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", sorted(ROWWISE))
def test_bad_arguments(kind):
    cls = ROWWISE[kind]
    bad = {"learning_rate": -1.0, "epsilon": -1e-7}
    bad.update(
        {"initial_accumulator_value": -0.1}
        if kind == "adagrad"
        else {"beta_1": 1.0, "beta_2": -0.1}
    )
    for name, value in bad.items():
        with pytest.raises(ValueError, match=f"{name}={value!r}"):
            cls(**{name: value})
    if kind == "adam":
        with pytest.raises(TypeError, match="amsgrad"):
            cls(amsgrad=True)


def test_trains_real_text_as_well_as_lazy_adam():
    # The real task of examples/text_classification.py, kept small: the era of
    # State of the Union paragraphs from bags of words, split by speech.
    task = sotu_era_task()
    accuracy = {
        name: train_on_sotu_era(optimizer, task)[1]
        for name, optimizer in (
            ("lazy_adam", optimizers.LazyAdam(5e-3)),
            ("rowwise_adagrad", optimizers.LazyRowwiseAdagrad(0.05)),
            ("rowwise_adam", optimizers.LazyRowwiseAdam(5e-3)),
        )
    }
    _, y, _, test = task
    majority = np.bincount(y[test]).max() / len(test)
    assert accuracy["lazy_adam"] > majority + 0.10, (accuracy, majority)
    for name in ("rowwise_adagrad", "rowwise_adam"):
        assert accuracy[name] >= accuracy["lazy_adam"] - 0.02, accuracy


def test_tf_train_checkpoint_resumes_training(tmp_path):
    # The way to save tables too large for a `.keras` file (README, "Saving
    # at scale"): `tf.train.Checkpoint` writes each variable from its own
    # buffer, and restores it into the variables of a freshly built model.
    rng = np.random.default_rng(6)
    x, y = rng.integers(0, 30, size=(32, 6)), rng.normal(size=(32, 1)).astype("float32")

    def compiled():
        model = _model()
        model.compile(optimizer=optimizers.LazyRowwiseAdam(0.05), loss="mse")
        model.optimizer.build(model.trainable_variables)
        return model

    prefix = os.path.join(tmp_path, "ckpt")

    def save(model):
        tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(prefix)

    def load(model):
        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        checkpoint.read(prefix).assert_consumed()

    check_resume(compiled, x, y, save, load)
