"""Memorizing random ids: `DynamicEmbedding` against `Hashing` + `Embedding`.

The issue's check, with the settings of
`tests/test_dynamic_embedding.py::test_memorizes_random_ids_where_hashing_cannot`
(which asserts only the bounds: at least 0.99, and 5 points above Hashing):
30,000 random int64 ids from [0, 2**62) (or the strings "id<value>") with
random 0/1 labels, 32,768 rows of 8, a `Dense(1)` on top, `LazyAdam(0.05)`,
6 epochs of batch 2,048; the accuracy is `evaluate` on the training ids.
Here over several seeds and both key types, so that the guide can quote what
the models reach.

    python benchmarks/memorization.py

writes `benchmarks/results/memorization.md`.
"""

import argparse
import os
import pathlib
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_lookup  # noqa: E402

# The task and the model are the test's (tests/helpers.py).
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from helpers import memorization_accuracy, memorization_task  # noqa: E402

ROWS = 32_768
OUT = pathlib.Path(__file__).parent / "results" / "memorization.md"


def run(seed, key_dtype):
    keras.utils.set_random_seed(seed)
    _, x, y = memorization_task(seed, key_dtype)
    dynamic, _ = memorization_accuracy(
        [keras_lookup.DynamicEmbedding(ROWS, 8, key_dtype=key_dtype)],
        x,
        y,
        key_dtype,
    )
    hashed, _ = memorization_accuracy(
        [keras.layers.Hashing(ROWS), keras_lookup.Embedding(ROWS, 8)],
        x,
        y,
        key_dtype,
    )
    # Ids whose row Hashing shares with another id: they cannot all be fitted.
    rows = keras.layers.Hashing(ROWS)(x).numpy().ravel()
    _, counts = np.unique(rows, return_counts=True)
    shared = counts[counts > 1].sum() / len(x)
    return dynamic, hashed, shared


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    lines = [
        "# Memorizing random ids: DynamicEmbedding vs Hashing + Embedding",
        "",
        "Command: `python benchmarks/memorization.py`. 30,000 random int64 ids",
        'from [0, 2^62) (string keys: `"id<value>"`) with random 0/1 labels,',
        "32,768 rows of 8, `Dense(1)`,",
        "`LazyAdam(0.05)`, 6 epochs of batch 2,048 (the settings of",
        "`test_memorizes_random_ids_where_hashing_cannot`); training accuracy",
        "from `evaluate` on the same ids.",
        "",
        "| key dtype | seed | DynamicEmbedding | Hashing + Embedding "
        "| ids sharing a hashed row |",
        "|---|---|---|---|---|",
    ]
    for key_dtype in ("int64", "string"):
        for seed in args.seeds:
            dynamic, hashed, shared = run(seed, key_dtype)
            lines.append(
                f"| {key_dtype} | {seed} | {dynamic:.2%} | {hashed:.2%} "
                f"| {shared:.1%} |"
            )
            print(lines[-1], flush=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
