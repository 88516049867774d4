"""Every model in saved_models/ loads in a fresh process and reproduces its outputs.

Each `NAME.keras` comes with `NAME.inputs.json` (inputs under "inputs", their
dtype under "dtype") and `NAME.expected.npz` (the model's outputs on them,
under "outputs"), written by the example that trained it. The models of
earlier releases stay in `saved_models/v<version>/` as compatibility fixtures
and are checked the same way.
"""

import glob
import os

import pytest
from helpers import (
    run_python,
    skip_if_written_by_newer_keras,
    written_by_newer_keras,
)

SAVED = os.path.join(os.path.dirname(os.path.dirname(__file__)), "saved_models")
SIDECARS = (".inputs.json", ".expected.npz")
# Run in a child process: only `import keras_lookup` registers the layers, as
# it would for a user loading the file.
CHECK = """
import json, sys
import numpy as np
import keras
import tensorflow as tf
import keras_lookup

for stem in sys.argv[1:]:
    model = keras.saving.load_model(stem + ".keras")
    with open(stem + ".inputs.json", encoding="utf-8") as f:
        record = json.load(f)
    inputs = tf.constant(record["inputs"], dtype=record["dtype"])
    outputs = np.asarray(model.predict(inputs, verbose=0))
    expected = np.load(stem + ".expected.npz")["outputs"]
    assert outputs.shape == expected.shape, (stem, outputs.shape, expected.shape)
    np.testing.assert_allclose(
        outputs, expected, rtol=1e-5, atol=1e-5, err_msg=stem
    )
    print("reproduced", stem, outputs.shape)
"""


def check_saved_models(stems, cwd):
    """Loads each `stem.keras` in one fresh process (one TensorFlow start-up
    for all) and checks it against its sidecars."""
    stems = [os.path.abspath(stem) for stem in stems]
    output = run_python(CHECK, cwd, *stems)
    for stem in stems:
        assert f"reproduced {stem} " in output, output


def check_saved_model(stem, cwd):
    """Loads `stem.keras` in a fresh process and checks it against its sidecars."""
    check_saved_models([stem], cwd)


FIXTURE_0_1 = os.path.join(SAVED, "v0.1")


def _stems():
    paths = glob.glob(os.path.join(SAVED, "*.keras"))
    paths += glob.glob(os.path.join(SAVED, "v*", "*.keras"))
    return sorted(p[: -len(".keras")] for p in paths)


def _stem_id(stem):
    return os.path.relpath(stem, SAVED)


@pytest.mark.parametrize("stem", _stems(), ids=_stem_id)
def test_saved_model_has_sidecars(stem):
    missing = [stem + s for s in SIDECARS if not os.path.exists(stem + s)]
    assert not missing, (
        f"{stem}.keras has no sidecar {missing}; re-run the example that made "
        "it (see saved_models/README.md) so that it writes them."
    )


def test_every_sidecar_has_a_model():
    stems = set(_stems())
    orphans = [
        path
        for suffix in SIDECARS
        for pattern in ("*", os.path.join("v*", "*"))
        for path in glob.glob(os.path.join(SAVED, pattern + suffix))
        if path[: -len(suffix)] not in stems
    ]
    assert not orphans, f"sidecars without a .keras model: {orphans}"


@pytest.mark.parametrize("folder", ["saved_models", "saved_models/v0.1"])
def test_saved_models_reproduce_outputs(folder, tmp_path):
    # One child process per folder: TensorFlow starts once for its models.
    here = os.path.join(os.path.dirname(SAVED), folder)
    stems = [s for s in _stems() if os.path.dirname(s) == here]
    assert stems, f"no .keras files in {folder}/"
    for stem in stems:
        if not all(os.path.exists(stem + s) for s in SIDECARS):
            pytest.fail(f"{stem}.keras has no sidecars (see the test above)")
    # Models written by a newer Keras than this one skip (see above), one by
    # one; the folder's others are still checked.
    readable = [s for s in stems if not written_by_newer_keras(s)]
    if not readable:
        skip_if_written_by_newer_keras(stems[0])
    check_saved_models(readable, tmp_path)


def test_first_release_models_are_kept():
    # The 0.1.0 files are a fixture: loading them is what proves that models
    # saved by 0.1 still load. Replace them only with a new fixture folder.
    names = sorted(os.listdir(FIXTURE_0_1))
    for model in (
        "language_model",
        "text_classification_era_embedding",
        "text_classification_era_reducer",
    ):
        assert model + ".keras" in names, names
