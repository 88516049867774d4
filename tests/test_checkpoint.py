"""Tests for `keras_lookup.read_checkpoint`: restoring tables in slices."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_lookup
from keras_lookup import checkpoint, optimizers


def _compiled(vocab=41, optimizer_cls=optimizers.LazyRowwiseAdam):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            keras_lookup.Embedding(vocab, 5),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=optimizer_cls(0.05), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


@pytest.mark.parametrize("optimizer", ["LazyRowwiseAdam", "LazyAdam"])
def test_resumes_like_an_uninterrupted_run(optimizer, tmp_path, monkeypatch):
    # Every variable of 8+ entries is read in slices of 3 rows or so,
    # including the (41,) row-wise slot and the (41, 5) table and moments.
    monkeypatch.setattr(checkpoint, "MIN_SIZE", 8)
    monkeypatch.setattr(checkpoint, "SLICE_SIZE", 16)
    cls = getattr(optimizers, optimizer)
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 41, size=(32, 6)), rng.normal(size=(32, 1))
    uninterrupted = _compiled(optimizer_cls=cls)
    uninterrupted.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    interrupted = _compiled(optimizer_cls=cls)
    interrupted.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    prefix = tf.train.Checkpoint(
        model=interrupted, optimizer=interrupted.optimizer
    ).write(os.path.join(tmp_path, "ckpt"))

    restored = _compiled(optimizer_cls=cls)
    keras_lookup.read_checkpoint(prefix, model=restored, optimizer=restored.optimizer)
    for saved, loaded in zip(
        interrupted.optimizer.variables, restored.optimizer.variables, strict=True
    ):
        np.testing.assert_array_equal(saved.numpy(), loaded.numpy())
    restored.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for resumed, reference in zip(
        restored.get_weights(), uninterrupted.get_weights(), strict=True
    ):
        np.testing.assert_allclose(resumed, reference, rtol=1e-6, atol=1e-7)


def test_mismatches_are_errors(tmp_path):
    model = _compiled()
    prefix = tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(
        os.path.join(tmp_path, "ckpt")
    )
    other = _compiled(vocab=42)
    before = [v.numpy() for v in other.variables]
    with pytest.raises(ValueError, match=r"has shape \(42,.*holds \(41,"):
        keras_lookup.read_checkpoint(prefix, model=other, optimizer=other.optimizer)
    for value, variable in zip(before, other.variables, strict=True):
        np.testing.assert_array_equal(value, variable.numpy())  # nothing written
    adagrad = _compiled(optimizer_cls=optimizers.LazyRowwiseAdagrad)
    with pytest.raises(ValueError, match="no counterpart"):
        keras_lookup.read_checkpoint(prefix, model=adagrad)
