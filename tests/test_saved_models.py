"""Every model in saved_models/ loads in a fresh process and reproduces its outputs.

Each `NAME.keras` comes with `NAME.inputs.json` (inputs under "inputs", their
dtype under "dtype") and `NAME.expected.npz` (the model's outputs on them,
under "outputs"), written by the example that trained it.
"""

import glob
import json
import os
import zipfile

import keras
import pytest
from helpers import run_python
from packaging.version import Version

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

stem = sys.argv[1]
model = keras.saving.load_model(stem + ".keras")
with open(stem + ".inputs.json", encoding="utf-8") as f:
    record = json.load(f)
inputs = tf.constant(record["inputs"], dtype=record["dtype"])
outputs = np.asarray(model.predict(inputs, verbose=0))
expected = np.load(stem + ".expected.npz")["outputs"]
assert outputs.shape == expected.shape, (outputs.shape, expected.shape)
np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)
print("reproduced", outputs.shape)
"""


def writer_keras_version(path):
    """The Keras version that wrote the `.keras` file (its metadata.json)."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("metadata.json"))["keras_version"]


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


def check_saved_model(stem, cwd):
    """Loads `stem.keras` in a fresh process and checks it against its sidecars."""
    output = run_python(CHECK, cwd, os.path.abspath(stem))
    assert "reproduced" in output


def _stems():
    return sorted(
        p[: -len(".keras")] for p in glob.glob(os.path.join(SAVED, "*.keras"))
    )


@pytest.mark.parametrize("stem", _stems(), ids=os.path.basename)
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
        for path in glob.glob(os.path.join(SAVED, "*" + suffix))
        if path[: -len(suffix)] not in stems
    ]
    assert not orphans, f"sidecars without a .keras model: {orphans}"


@pytest.mark.parametrize("stem", _stems(), ids=os.path.basename)
def test_saved_model_reproduces_outputs(stem, tmp_path):
    if not all(os.path.exists(stem + s) for s in SIDECARS):
        pytest.fail(f"{stem}.keras has no sidecars (see the test above)")
    skip_if_written_by_newer_keras(stem)
    check_saved_model(stem, tmp_path)
