"""Keras 3 layers that turn integer ids into dense vectors.

`Embedding` gathers rows, `Dense` multiplies (dense or sparse inputs), and
`DimensionReducer` does either with the same weight, picking the faster one
(`calibrate()` measures which is faster on this device). `DynamicEmbedding`
takes ids of any int64 value, or strings, and hands rows out as training
meets them.
"""

import keras

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "keras_lookup needs Keras on the TensorFlow backend, but Keras is "
        f"running on {keras.backend.backend()!r}. Set the environment variable "
        "KERAS_BACKEND=tensorflow before Python starts (for example "
        "`export KERAS_BACKEND=tensorflow`)."
    )

from keras_lookup import distribute, optimizers  # noqa: E402
from keras_lookup.calibration import calibrate  # noqa: E402
from keras_lookup.callbacks import DynamicEmbeddingCounters  # noqa: E402
from keras_lookup.dense import Dense  # noqa: E402
from keras_lookup.dimension_reducer import DimensionReducer  # noqa: E402
from keras_lookup.dynamic_embedding import DynamicEmbedding  # noqa: E402
from keras_lookup.embedding import Embedding  # noqa: E402
from keras_lookup.saving import load_state, save_model, save_state  # noqa: E402

__version__ = "0.2.0"
__all__ = [
    "calibrate",
    "Dense",
    "DimensionReducer",
    "distribute",
    "DynamicEmbedding",
    "DynamicEmbeddingCounters",
    "Embedding",
    "load_state",
    "optimizers",
    "save_model",
    "save_state",
]
