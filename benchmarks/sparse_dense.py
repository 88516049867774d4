"""Training step of a Dense layer on a sparse multi-hot input, ours vs Keras's.

Model: `Input((V,), sparse=True) -> Dense(64, relu) -> Dense(1)`, trained with
`train_on_batch` on batches of 256 rows with 32 distinct ids each (a
`tf.SparseTensor` multi-hot matrix, values 1.0). Compares, in one run:

- ours:  `keras_lookup.Dense` + `keras_lookup.optimizers.LazyAdam`
- keras: `keras.layers.Dense` + `keras.optimizers.Adam`

Both layers multiply the sparse input by an embedding-style lookup of the
kernel rows it touches, so both kernels' gradients are `tf.IndexedSlices`;
Keras's Adam then densifies it and updates all V x 64 entries and both moment
slots every step, while LazyAdam updates the touched rows only. Each
configuration runs in its own process (peak RSS is its own `ru_maxrss`).
Writes `benchmarks/results/sparse_dense.md`.

Usage:

    python benchmarks/sparse_dense.py               # V = 1M, 30 timed steps
    python benchmarks/sparse_dense.py --quick       # V = 100k, 5 timed steps
"""

import argparse
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

BATCH, IDS_PER_ROW, UNITS = 256, 32, 64
SYSTEMS = {
    "ours": "keras_lookup.Dense + LazyAdam",
    "keras": "keras.layers.Dense + keras Adam",
}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _batches(vocab, count, seed):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        rows = [
            np.sort(rng.choice(vocab, IDS_PER_ROW, replace=False)) for _ in range(BATCH)
        ]
        indices = np.array(
            [(r, c) for r, ids in enumerate(rows) for c in ids], dtype=np.int64
        )
        x = tf.SparseTensor(indices, tf.ones(len(indices)), (BATCH, vocab))
        batches.append((x, rng.normal(size=(BATCH, 1)).astype("float32")))
    return batches


def child(system, vocab, steps, warmup, seed):
    import resource

    import keras
    import numpy as np

    import keras_lookup

    keras.utils.set_random_seed(seed)
    if system == "ours":
        dense, optimizer = keras_lookup.Dense, keras_lookup.optimizers.LazyAdam()
    else:
        dense, optimizer = keras.layers.Dense, keras.optimizers.Adam()
    model = keras.Sequential(
        [
            keras.Input((vocab,), sparse=True),
            dense(UNITS, activation="relu"),
            dense(1),
        ]
    )
    model.compile(optimizer=optimizer, loss="mse")
    batches = _batches(vocab, 8, seed)
    (times,), (loss,) = _harness.time_steps(
        # train_on_batch returns a float: the step is done when it returns.
        [lambda i: model.train_on_batch(*batches[i % len(batches)])],
        steps,
        warmup,
    )
    _harness.emit(
        {
            "system": system,
            "vocab": vocab,
            "median_ms": 1e3 * float(np.median(times)),
            "min_ms": 1e3 * float(np.min(times)),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "final_loss": float(loss),
            "load_avg": os.getloadavg()[0],
        }
    )


def run_config(system, args):
    return _harness.run_or_exit(
        __file__,
        ["--child", system, "--vocab", args.vocab, "--steps", args.steps]
        + ["--warmup", args.warmup],
        system,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=None, help="input columns V")
    parser.add_argument("--steps", type=int, default=None, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--quick", action="store_true", help="V = 100k, 5 steps")
    parser.add_argument("--out", default=RESULTS, help="folder for the .md")
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.vocab = args.vocab or (100_000 if args.quick else 1_000_000)
    args.steps = args.steps or (5 if args.quick else 30)
    if args.child:
        child(args.child, args.vocab, args.steps, args.warmup, seed=0)
        return

    records = {}
    for system, label in SYSTEMS.items():
        print(f"{label:>34}, V={args.vocab:,} ...", end=" ", flush=True)
        records[system] = run_config(system, args)
        r = records[system]
        print(f"{r['median_ms']:8.1f} ms/step, peak RSS {r['peak_rss_gib']:.2f} GiB")
    ours, keras_ = records["ours"], records["keras"]
    ratio = keras_["median_ms"] / ours["median_ms"]
    print(f"speed-up: {ratio:.1f}x")

    import keras
    import tensorflow as tf

    command = "python benchmarks/sparse_dense.py " + " ".join(sys.argv[1:])
    lines = [
        "# Dense on a sparse multi-hot input: training step",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, TensorFlow "
        f"{tf.__version__}, Keras {keras.__version__}.  ",
        f"Model: `Input(({args.vocab:,},), sparse=True) -> Dense({UNITS}, relu) -> "
        f"Dense(1)`, `train_on_batch` on {BATCH} rows x {IDS_PER_ROW} ids, "
        f"{args.warmup} warm-up steps, median of {args.steps} timed steps, each "
        "configuration in its own process.",
        "",
        "| V | ours: keras_lookup.Dense + LazyAdam | keras.layers.Dense + Adam "
        "| speed-up | peak RSS ours / keras (GiB) | load avg |",
        "|---|---|---|---|---|---|",
        f"| {args.vocab:,} | {ours['median_ms']:.1f} ms | {keras_['median_ms']:.1f} ms "
        f"| {ratio:.1f}x | {ours['peak_rss_gib']:.2f} / {keras_['peak_rss_gib']:.2f} "
        f"| {max(ours['load_avg'], keras_['load_avg']):.1f} |",
        "",
    ]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "sparse_dense.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
