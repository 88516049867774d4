import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _float32_policy_and_seed():
    """Every test starts seeded, and starts and leaves with the float32 policy,
    so that no test depends on another's order or leftovers."""
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(autouse=True)
def _calibration_cache(tmp_path, monkeypatch):
    """Every test gets an empty calibration cache of its own, so that
    `strategy="auto"` never reads the user's calibration (shipped defaults)."""
    cache = tmp_path / "keras_lookup_cache"
    monkeypatch.setenv("KERAS_LOOKUP_CACHE_DIR", str(cache))
    return cache
