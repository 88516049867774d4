"""Test accuracy with a float32, bfloat16 (stochastic rounding) and bfloat16
(round to nearest) table, on the SOTU era task of the optimizer comparisons.

The task and the model are those of `tests/helpers.py` (`sotu_era_task`,
`train_on_sotu_era`): the era of State of the Union paragraphs from bags of
their first 64 words, a `keras_lookup.Embedding(5001, 16, mask_zero=True,
combiner="mean")` and a softmax `Dense(3)`, 4 epochs of batches of 64. Each
optimizer and seed is trained three times, changing only how the table is
stored: float32; bfloat16 written back with stochastic rounding (the
default); bfloat16 rounded to nearest (what Keras's own optimizers do with a
half variable; set here through the optimizer's private
`_stochastic_rounding` switch). The same seed gives the three the same
initial table (the bfloat16 one rounded) and the same batches.

Writes `benchmarks/results/half_precision_quality.md` and `.jsonl`.

Usage:

    python benchmarks/half_precision_quality.py                 # 3 seeds
    python benchmarks/half_precision_quality.py --seeds 0 --epochs 1
"""

import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
MODES = ("float32", "bfloat16+SR", "bfloat16+nearest")
# name -> (optimizer class name, learning rate): the comparisons' LazyAdam
# setting, the row-wise Adagrad of large tables, plain SGD, and a small Adam
# learning rate, whose steps (~1e-4) are below half of bfloat16's spacing at
# the table's typical values (2.4e-4 at 0.05): the ones rounding to nearest
# loses.
OPTIMIZERS = {
    "LazyAdam(5e-3)": ("LazyAdam", 5e-3),
    "LazyRowwiseAdagrad(0.05)": ("LazyRowwiseAdagrad", 0.05),
    "LazySGD(0.5)": ("LazySGD", 0.5),
    "LazyAdam(1e-4)": ("LazyAdam", 1e-4),
}


def train(task, optimizer_name, mode, seed, epochs):
    import keras

    import keras_lookup
    from keras_lookup import optimizers

    class_name, learning_rate = OPTIMIZERS[optimizer_name]
    optimizer = getattr(optimizers, class_name)(learning_rate)
    optimizer._stochastic_rounding = mode != "bfloat16+nearest"
    ids, y, train_rows, test_rows = task
    keras.utils.set_random_seed(seed)
    table_dtype = "float32" if mode == "float32" else "bfloat16"
    model = keras.Sequential(
        [
            keras.Input((64,), dtype="int32"),
            keras_lookup.Embedding(
                5001, 16, mask_zero=True, combiner="mean", table_dtype=table_dtype
            ),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    initial = model.layers[0].embeddings.numpy().astype("float32")
    model.fit(ids[train_rows], y[train_rows], batch_size=64, epochs=epochs, verbose=0)
    loss, accuracy = model.evaluate(ids[test_rows], y[test_rows], verbose=0)
    moved = model.layers[0].embeddings.numpy().astype("float32") != initial
    return {
        "optimizer": optimizer_name,
        "mode": mode,
        "seed": seed,
        "epochs": epochs,
        "test_loss": float(loss),
        "test_accuracy": float(accuracy),
        "table_entries_moved": float(moved.mean()),
    }


def render(records, command):
    import keras
    import numpy as np
    import tensorflow as tf

    seeds = sorted({r["seed"] for r in records})
    lines = [
        "| optimizer | table | test accuracy, mean over seeds (per seed) "
        "| Δ vs float32 (points) | test loss | table entries moved |",
        "|---|---|---|---|---|---|",
    ]
    for name in OPTIMIZERS:
        base = None
        for mode in MODES:
            rows = [r for r in records if r["optimizer"] == name and r["mode"] == mode]
            if not rows:
                continue
            rows.sort(key=lambda r: r["seed"])
            acc = np.array([r["test_accuracy"] for r in rows])
            if mode == "float32":
                base = acc
            delta = (
                ""
                if base is None or mode == "float32"
                else (
                    f"{100 * (acc - base).mean():+.2f} "
                    f"({', '.join(f'{100 * d:+.1f}' for d in acc - base)})"
                )
            )
            lines.append(
                f"| {name} | {mode} | {100 * acc.mean():.2f} "
                f"({', '.join(f'{100 * a:.1f}' for a in acc)}) | {delta} | "
                f"{np.mean([r['test_loss'] for r in rows]):.4f} | "
                f"{100 * np.mean([r['table_entries_moved'] for r in rows]):.1f}% |"
            )
    about = (
        f"Command: `{command}`  \n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, TensorFlow "
        f"{tf.__version__}, Keras {keras.__version__}. Seeds {seeds}; each seed "
        "fixes the initial table and the batches for all three tables.  \n"
        "Task: SOTU era (3 classes), `tests/helpers.py:sotu_era_task`; model "
        "Embedding(5001, 16, mean of the first 64 words) -> Dense(3). "
        '"table entries moved": share of table entries that differ from their '
        "initial value after training."
    )
    return f"# Half-precision tables: test accuracy\n\n{about}\n\n" + "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--optimizers", nargs="+", choices=list(OPTIMIZERS), default=list(OPTIMIZERS)
    )
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from helpers import sotu_era_task

    task = sotu_era_task()
    records = []
    for name in args.optimizers:
        for seed in args.seeds:
            for mode in MODES:
                start = time.perf_counter()
                record = train(task, name, mode, seed, args.epochs)
                records.append(record)
                print(
                    f"{name:>26} seed {seed} {mode:>17}: accuracy "
                    f"{record['test_accuracy']:.4f} loss {record['test_loss']:.4f} "
                    f"({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "half_precision_quality.jsonl"), "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    command = "python benchmarks/half_precision_quality.py " + " ".join(sys.argv[1:])
    text = render(records, command.strip())
    with open(os.path.join(args.out, "half_precision_quality.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
