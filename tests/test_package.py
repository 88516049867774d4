import os
import subprocess
import sys

import keras

import keras_lookup


def test_public_names():
    assert keras_lookup.__all__ == sorted(keras_lookup.__all__, key=str.lower)
    for name in keras_lookup.__all__:
        assert getattr(keras_lookup, name) is not None


def test_layers_are_registered_under_the_package_name():
    for name in ("Embedding", "Dense", "DimensionReducer"):
        registered = keras.saving.get_registered_object(f"keras_lookup>{name}")
        assert registered is getattr(keras_lookup, name)


def test_import_names_keras_backend_on_another_backend():
    # Other backends need packages this machine lacks (jax, torch, scipy), so
    # the child pretends Keras runs on one.
    code = "import keras; keras.backend.backend = lambda: 'jax'; import keras_lookup"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "KERAS_BACKEND=tensorflow" in result.stderr
    assert "'jax'" in result.stderr


def test_version_matches_pyproject_and_changelog():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), encoding="utf-8") as f:
        assert f'\nversion = "{keras_lookup.__version__}"\n' in f.read()
    with open(os.path.join(root, "CHANGELOG.md"), encoding="utf-8") as f:
        assert f"\n## {keras_lookup.__version__}\n" in f.read()
