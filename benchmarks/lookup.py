"""Lookup vs matmul, forward + backward, side by side with Keras's own layers.

For each vocabulary size V it times one training-style step (forward pass,
gradient with respect to the table) of:

- `keras.layers.Embedding` (the baseline every ratio is taken against),
- `keras.layers.Dense` on a one-hot matrix (Keras's matmul formulation),
- `keras_lookup.Embedding`, with its id check on (`invalid_ids="raise"`),
- `keras_lookup.DimensionReducer` with `strategy="gather"`, `"matmul"` and
  `"auto"` (reporting which one `"auto"` picked and whether it was the faster).

Two workloads: single ids (one id per position) and bags of k ids per row
reduced with `combiner="sum"` (Keras baseline: Embedding then a sum).

    python benchmarks/lookup.py            # full grid, a few minutes on 2 cores
    python benchmarks/lookup.py --quick    # a smaller grid

Writes `benchmarks/results/lookup.md` (the tables) and `lookup.png` (plot).
"""

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_lookup  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _time(step, repeats, warmup=3):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _step_fn(layer, inputs, reduce_sum_axis=None):
    if not layer.built:
        layer.build()
    variables = layer.trainable_variables

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            out = layer(inputs)
            if reduce_sum_axis is not None:
                out = tf.reduce_sum(out, axis=reduce_sum_axis)
            loss = tf.reduce_sum(out * out)
        grads = tape.gradient(loss, variables)
        # Densify inside the step so both formulations pay for a usable gradient
        # the same way an optimizer would read it.
        return [tf.reduce_sum(tf.convert_to_tensor(g)) for g in grads]

    return lambda: [g.numpy() for g in step()]


def _dense_one_hot_step(vocab, dim, ids):
    dense = keras.layers.Dense(dim, use_bias=False)
    dense.build((None, vocab))
    variables = dense.trainable_variables

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            out = dense(tf.one_hot(ids, vocab))
            loss = tf.reduce_sum(out * out)
        return [tf.reduce_sum(g) for g in tape.gradient(loss, variables)]

    return lambda: [g.numpy() for g in step()]


def single_ids(vocab, args, rng):
    ids = tf.constant(rng.integers(0, vocab, size=(args.batch, args.length)), tf.int32)
    dim = args.dim
    cases = {
        "keras Embedding": _step_fn(keras.layers.Embedding(vocab, dim), ids),
        "keras Dense(one_hot)": _dense_one_hot_step(vocab, dim, ids),
        "Embedding": _step_fn(keras_lookup.Embedding(vocab, dim), ids),
    }
    for strategy in ("gather", "matmul", "auto"):
        layer = keras_lookup.DimensionReducer(vocab, dim, strategy=strategy)
        cases[f"DR {strategy}"] = _step_fn(layer, ids)
        if strategy == "auto":
            picked = layer._strategy
    if vocab > args.max_matmul_vocab:
        del cases["keras Dense(one_hot)"], cases["DR matmul"]
    times = {name: _time(step, args.repeats) for name, step in cases.items()}
    return times, picked


def bags(vocab, k, args, rng):
    ids = tf.constant(rng.integers(0, vocab, size=(args.bag_rows, k)), tf.int32)
    dim = args.dim
    cases = {
        "keras Embedding+sum": _step_fn(
            keras.layers.Embedding(vocab, dim), ids, reduce_sum_axis=1
        ),
        "Embedding(sum)": _step_fn(
            keras_lookup.Embedding(vocab, dim, combiner="sum"), ids
        ),
    }
    for strategy in ("gather", "matmul", "auto"):
        layer = keras_lookup.DimensionReducer(
            vocab, dim, strategy=strategy, combiner="sum"
        )
        layer.build((None, k))
        cases[f"DR {strategy}"] = _step_fn(layer, ids)
        if strategy == "auto":
            picked = layer._strategy
    times = {name: _time(step, args.repeats) for name, step in cases.items()}
    return times, picked


def _table(rows, baseline):
    names = list(rows[0][1])
    head = "| V | " + " | ".join(f"{n} ms" for n in names) + " | auto picked |"
    lines = [head, "|" + "---|" * (len(names) + 2)]
    for label, times, picked in rows:
        measured = {
            s: times[f"DR {s}"] for s in ("gather", "matmul") if f"DR {s}" in times
        }
        fastest = min(measured, key=measured.get)
        # Within 10% counts as a tie: either choice is right.
        right = measured[picked] <= measured[fastest] * 1.10
        cells = []
        for n in names:
            if n not in times:
                cells.append("—")
            elif n == baseline:
                cells.append(f"{times[n]:.2f}")
            else:
                cells.append(f"{times[n]:.2f} ({times[baseline] / times[n]:.2f}×)")
        verdict = "right" if right else f"wrong, {fastest} was faster"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {picked} ({verdict}) |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller grid")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--bag-rows", type=int, default=256)
    parser.add_argument("--max-matmul-vocab", type=int, default=16384)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "lookup"))
    args = parser.parse_args(argv)
    vocabs = [8, 16, 32, 64, 256, 1024, 4096, 16384, 100_000]
    bag_vocabs = [64, 256, 1024, 4096, 16384]
    bag_sizes = [8, 64]
    if args.quick:
        vocabs, bag_vocabs, bag_sizes, args.repeats = (
            [8, 64, 1024, 100_000],
            [
                256,
                4096,
            ],
            [8, 64],
            7,
        )
    rng = np.random.default_rng(0)
    single_rows, bag_rows = [], []
    total = len(vocabs) + len(bag_vocabs) * len(bag_sizes)
    done = 0
    for vocab in vocabs:
        times, picked = single_ids(vocab, args, rng)
        single_rows.append((f"{vocab:,}", times, picked))
        done += 1
        print(
            f"[{done}/{total}] single ids V={vocab:,}: "
            + ", ".join(f"{n} {t:.2f} ms" for n, t in times.items()),
            flush=True,
        )
    for k in bag_sizes:
        for vocab in bag_vocabs:
            times, picked = bags(vocab, k, args, rng)
            bag_rows.append((f"{vocab:,}, k={k}", times, picked))
            done += 1
            print(
                f"[{done}/{total}] bags k={k} V={vocab:,}: "
                + ", ".join(f"{n} {t:.2f} ms" for n, t in times.items()),
                flush=True,
            )

    header = (
        f"Forward + backward step, median of {args.repeats} (after 3 warm-up), "
        f"D={args.dim}. Ratios are the Keras baseline's time over each column's "
        f"(>1× means faster than Keras). TF {tf.__version__}, Keras "
        f"{keras.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores.\n\nCommand: `python benchmarks/lookup.py"
        f"{' --quick' if args.quick else ''}`\n"
    )
    report = (
        "# Lookup vs matmul\n\n"
        + header
        + f"\n## Single ids ({args.batch} x {args.length} ids per step)\n\n"
        + _table(single_rows, "keras Embedding")
        + f"\n\n## Bags of k ids, combiner=sum ({args.bag_rows} rows per step)\n\n"
        + _table(bag_rows, "keras Embedding+sum")
        + "\n"
    )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(report)
    print("\n" + report)
    _plot(vocabs, single_rows, args.out + ".png")
    print(f"wrote {args.out}.md and {args.out}.png", file=sys.stderr)


def _plot(vocabs, rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in rows[0][1]:
        xs = [v for v, (_, t, _) in zip(vocabs, rows, strict=True) if name in t]
        ys = [t[name] for _, t, _ in rows if name in t]
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("vocabulary size V")
    ax.set_ylabel("forward + backward step (ms)")
    ax.set_title("Single ids: lookup vs one-hot matmul")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
