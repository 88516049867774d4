"""Models with all three layers save, load and export, across processes."""

import os

import keras
import numpy as np
import pytest
from helpers import check_resume, run_python

import keras_lookup

RNG = np.random.default_rng(0)
IDS = RNG.integers(0, 50, size=(8, 6)).astype("int32")
BAGS = RNG.integers(0, 30, size=(8, 5)).astype("int32")


def sequential_model():
    return keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            keras_lookup.Embedding(50, 4),
            keras.layers.Flatten(),
            # A real-valued "multi-hot" input is exactly the Dense formulation.
            keras_lookup.DimensionReducer(
                24,
                8,
                input_format="multi_hot",
                strategy="matmul",
                use_bias=True,
                activation="relu",
                bias_initializer="random_normal",
            ),
            keras_lookup.Dense(3, activation="softmax"),
        ]
    )


def functional_model():
    ids = keras.Input((6,), dtype="int32", name="ids")
    bags = keras.Input((5,), dtype="int32", name="bags")
    x = keras_lookup.Embedding(50, 4, mask_zero=True)(ids)
    x = keras.layers.GlobalAveragePooling1D()(x)
    y = keras_lookup.DimensionReducer(
        30,
        4,
        combiner="mean",
        mask_zero=True,
        use_bias=True,
        bias_initializer="random_normal",
    )(bags)
    out = keras_lookup.Dense(3)(keras.layers.Concatenate()([x, y]))
    return keras.Model([ids, bags], out)


MODELS = {
    "sequential": (sequential_model, lambda: IDS),
    "functional": (functional_model, lambda: [IDS, BAGS]),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_keras_file_loads_in_a_new_process(name, tmp_path):
    build, inputs = MODELS[name]
    model = build()
    expected = model.predict(inputs(), verbose=0)
    model.save(tmp_path / "model.keras")
    np.savez(tmp_path / "data.npz", ids=IDS, bags=BAGS, expected=expected)
    out = run_python(
        f"""
        import keras, numpy as np
        import keras_lookup
        data = np.load("data.npz")
        model = keras.saving.load_model("model.keras")
        inputs = data["ids"] if {name == "sequential"} else [data["ids"], data["bags"]]
        got = model.predict(inputs, verbose=0)
        np.testing.assert_array_equal(got, data["expected"])
        modules = {{type(layer).__module__.split(".")[0] for layer in model.layers}}
        print("layers from:", sorted(modules))
        """,
        tmp_path,
    )
    assert "keras_lookup" in out


@pytest.mark.parametrize("name", list(MODELS))
def test_export_serves_without_keras_lookup(name, tmp_path):
    build, inputs = MODELS[name]
    model = build()
    expected = model.predict(inputs(), verbose=0)
    model.export(str(tmp_path / "exported"), verbose=False)
    np.savez(tmp_path / "data.npz", ids=IDS, bags=BAGS, expected=expected)
    run_python(
        f"""
        import sys
        import numpy as np
        import tensorflow as tf
        data = np.load("data.npz")
        served = tf.saved_model.load("exported")
        ids, bags = tf.constant(data["ids"]), tf.constant(data["bags"])
        inputs = ids if {name == "sequential"} else [ids, bags]
        got = served.serve(inputs).numpy()
        np.testing.assert_allclose(got, data["expected"], rtol=1e-6, atol=1e-6)
        assert "keras_lookup" not in sys.modules
        # The id check is exported too: a bad id still fails, with our message.
        bad = ids.numpy().copy()
        bad[0, 0] = 999
        bad_ids = tf.constant(bad)
        bad_inputs = bad_ids if {name == "sequential"} else [bad_ids, bags]
        try:
            served.serve(bad_inputs)
        except tf.errors.InvalidArgumentError as e:
            assert "received id 999" in str(e), str(e)
        else:
            raise AssertionError("a bad id was served")
        """,
        tmp_path,
    )


class _FailsToSave(keras.layers.Layer):
    def call(self, inputs):
        return inputs

    def save_own_variables(self, store):
        raise OSError("disk full (simulated)")


def _model_that_fails_to_save():
    inputs = keras.Input((6,), dtype="int32")
    x = keras_lookup.Embedding(50, 4)(inputs)
    return keras.Model(inputs, _FailsToSave()(x))


def test_save_model_never_leaves_a_broken_file(tmp_path):
    path = tmp_path / "model.keras"
    good = sequential_model()
    keras_lookup.save_model(good, path)
    with pytest.raises(OSError, match="disk full"):
        keras_lookup.save_model(_model_that_fails_to_save(), path)
    assert os.listdir(tmp_path) == ["model.keras"]
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(
        loaded.predict(IDS, verbose=0), good.predict(IDS, verbose=0)
    )


def test_plain_model_save_is_what_save_model_guards_against(tmp_path):
    # Why save_model exists: Keras writes in place, so the same failure
    # destroys the previous good file.
    path = tmp_path / "model.keras"
    sequential_model().save(path)
    with pytest.raises(OSError, match="disk full"):
        _model_that_fails_to_save().save(path)
    with pytest.raises(Exception):  # noqa: B017 - any failure to load will do
        keras.saving.load_model(path)


def test_save_model_gives_the_file_the_usual_mode(tmp_path):
    plain, atomic = tmp_path / "plain.keras", tmp_path / "atomic.keras"
    model = sequential_model()
    model.save(plain)
    keras_lookup.save_model(model, atomic)
    assert os.stat(atomic).st_mode == os.stat(plain).st_mode
    os.chmod(atomic, 0o640)
    keras_lookup.save_model(model, atomic)
    assert os.stat(atomic).st_mode & 0o777 == 0o640


def test_save_model_rejects_other_formats(tmp_path):
    with pytest.raises(ValueError, match="must end in `.keras`"):
        keras_lookup.save_model(sequential_model(), tmp_path / "model.h5")


# ---------------------------------------------------------------------------
# save_state / load_state: model and optimizer variables in row slices.


def _state_model(optimizer_cls):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            keras_lookup.Embedding(41, 5),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=optimizer_cls(0.05), loss="mse")
    return model


@pytest.mark.parametrize("optimizer", ["LazyRowwiseAdam", "LazyAdam"])
def test_save_state_resumes_like_an_uninterrupted_run(optimizer, tmp_path, monkeypatch):
    # Slices of 3 rows or so, so that every variable takes several.
    monkeypatch.setattr(keras_lookup.saving, "SLICE_SIZE", 4)
    cls = getattr(keras_lookup.optimizers, optimizer)
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 41, size=(32, 6)), rng.normal(size=(32, 1))
    check_resume(
        lambda: _state_model(cls),  # optimizer not built: load_state builds it
        x,
        y,
        lambda model: keras_lookup.save_state(model, tmp_path),
        lambda model: keras_lookup.load_state(model, tmp_path),
    )


def test_load_state_errors(tmp_path):
    model = _state_model(keras_lookup.optimizers.LazyRowwiseAdagrad)
    model.optimizer.build(model.trainable_variables)
    with pytest.raises(ValueError, match="manifest.json' does not exist"):
        keras_lookup.load_state(model, tmp_path)
    keras_lookup.save_state(model, tmp_path)
    other = _state_model(keras_lookup.optimizers.LazyRowwiseAdam)
    with pytest.raises(ValueError, match="variables .optimizer included. but"):
        keras_lookup.load_state(other, tmp_path)
    keras.utils.set_random_seed(0)
    wider = keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            keras_lookup.Embedding(42, 5),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )
    wider.compile(optimizer=keras_lookup.optimizers.LazyRowwiseAdagrad(), loss="mse")
    before = [v.numpy() for v in wider.variables]
    with pytest.raises(ValueError, match=r"has shape \(42, 5\).*\(41, 5\)"):
        keras_lookup.load_state(wider, tmp_path)
    for value, variable in zip(before, wider.variables, strict=True):
        np.testing.assert_array_equal(value, variable.numpy())  # nothing written
