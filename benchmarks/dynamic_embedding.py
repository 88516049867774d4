"""Training step and peak memory of `DynamicEmbedding` against its capacity.

Trains `Input(int64 ids) -> embedding -> Dense(1)` with `train_on_batch`
(`--batch` single ids a step, D = `--dim`, mse, `LazyAdam`) and compares, at
each capacity C:

- dynamic: `keras_lookup.DynamicEmbedding(C, D)` (eviction "lru");
- hashing: `keras.layers.Hashing(C)` -> `keras_lookup.Embedding(C, D)`, the
  same number of rows, shared by colliding ids.

Two kinds of batches, the same for both systems:

- warm: the table is first filled with C random int64 ids (training steps of
  65,536 ids each, untimed), and every batch draws from those ids, so every
  id already holds a row: the steady state of a table that fits the ids.
- new: filled the same way, then every batch holds ids never seen before:
  every id takes a row and another id is evicted. Eviction frees
  `max(needed, C // 64)` rows in one pass (a `top_k` over the C rows), so at
  C > 64 x batch most steps run no pass and a few run one: the mean is the
  amortized cost, the median the step without a pass.

Each (system, C, kind) runs in its own process, so its peak RSS (`VmHWM`) is
its own; the parent kills one whose RSS passes `--memory-limit-gib` and
reports it as out of memory. Records go to
`benchmarks/results/dynamic_embedding.jsonl` (the latest record of a
configuration wins, so `--capacities` can re-run a subset), and the table and
plot to `dynamic_embedding.md` / `.png`.

Usage:

    python benchmarks/dynamic_embedding.py             # C = 2^14 ... 2^20, 2^23
    python benchmarks/dynamic_embedding.py --quick     # C = 2^10, 2^12; few steps
    python benchmarks/dynamic_embedding.py --capacities 16384 1048576 --steps 400
"""

import argparse
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

SYSTEMS = ("dynamic", "hashing")
KINDS = ("warm", "new")
LABELS = {
    "dynamic": "DynamicEmbedding",
    "hashing": "Hashing + keras_lookup.Embedding",
}
CAPACITIES = (2**14, 2**16, 2**18, 2**20, 2**23)
FILL_CHUNK = 2**16
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _model(system, capacity, dim):
    import keras

    import keras_lookup

    if system == "dynamic":
        layers = [keras_lookup.DynamicEmbedding(capacity, dim)]
    else:
        layers = [keras.layers.Hashing(capacity), keras_lookup.Embedding(capacity, dim)]
    model = keras.Sequential(
        [keras.Input((), dtype="int64"), *layers, keras.layers.Dense(1)]
    )
    model.compile(keras_lookup.optimizers.LazyAdam(), "mse")
    model.optimizer.build(model.trainable_variables)
    return model


def child(system, capacity, kind, batch, dim, steps, warmup):
    """One configuration; prints one RESULT line."""
    import time

    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    record = {"system": system, "capacity": capacity, "kind": kind}
    record.update(batch=batch, dim=dim, steps=steps)
    start = time.perf_counter()
    model = _model(system, capacity, dim)
    pool = rng.integers(0, 2**62, capacity, dtype=np.int64)
    if system == "dynamic":
        layer = model.layers[0]
        fill = tf.function(lambda ids: layer(ids, training=True))
        for chunk in np.array_split(pool, max(1, capacity // FILL_CHUNK)):
            fill(chunk)
        assert layer.vocabulary_size() == capacity
    record["build_s"] = time.perf_counter() - start
    record["build_peak_rss_gib"] = _harness.status_gib("VmHWM")
    if kind == "warm":
        batches = [rng.choice(pool, batch) for _ in range(8)]
    else:  # ids never seen: 2**62 values, so practically no repeats
        batches = [
            rng.integers(2**62, 2**63 - 1, batch, dtype=np.int64)
            for _ in range(steps + warmup)
        ]
    target = np.zeros((batch, 1), "float32")
    (times,), _ = _harness.time_steps(
        [lambda i: model.train_on_batch(batches[i % len(batches)], target)],
        steps,
        warmup,
    )
    times = 1e3 * np.asarray(times)
    record.update(
        median_ms=float(np.median(times)),
        mean_ms=float(np.mean(times)),
        p10_ms=float(np.percentile(times, 10)),
        p90_ms=float(np.percentile(times, 90)),
        max_ms=float(np.max(times)),
        peak_rss_gib=_harness.status_gib("VmHWM"),
        load_avg=os.getloadavg()[0],
    )
    if system == "dynamic":
        record["counters"] = model.layers[0].counters()
    _harness.emit(record)


def run_config(system, capacity, kind, args):
    steps = args.steps
    if kind == "new":
        # At least three eviction passes among the timed steps.
        steps = max(steps, 3 * (capacity // 64) // args.batch)
    child_run = _harness.run_child(
        __file__,
        [
            *("--child", system, "--capacities", capacity, "--kind", kind),
            *("--batch", args.batch, "--dim", args.dim),
            *("--steps", steps, "--warmup", args.warmup),
        ],
        memory_limit_gib=args.memory_limit_gib,
    )
    record = child_run.record()
    key = {"system": system, "capacity": capacity, "kind": kind}
    if record is None:
        record = dict(key, batch=args.batch, dim=args.dim)
        if child_run.peak_gib > args.memory_limit_gib:
            record.update(oom=True, peak_rss_gib=child_run.peak_gib)
        else:
            sys.exit(child_run.failure(f"{system} C={capacity} {kind}"))
    record["wall_s"] = child_run.wall_s
    return record


def _key(record):
    return (
        record["system"],
        record["capacity"],
        record["kind"],
        record["batch"],
        record["dim"],
    )


def _capacity(c, plain=False):
    """`2^20`, or with `plain` `2^20 (1,048,576)` (the figure the guides quote
    as 2²⁰ is then in the file)."""
    exponent = c.bit_length() - 1
    if c != 2**exponent:
        return f"{c:,}"
    return f"2^{exponent} ({c:,})" if plain else f"2^{exponent}"


def table(records, batch, dim):
    by = {
        (r["system"], r["capacity"], r["kind"]): r
        for r in records
        if (r["batch"], r["dim"]) == (batch, dim)
    }
    capacities = sorted({c for _, c, _ in by})
    header = [
        "capacity",
        "ids",
        "dynamic median (ms)",
        "dynamic mean (ms)",
        "hashing median (ms)",
        "hashing mean (ms)",
        "dynamic / hashing (median)",
        f"dynamic / dynamic at {_capacity(capacities[0])} (median)",
        "dynamic slowest step (ms)",
        "dynamic peak RSS (GiB)",
        "hashing peak RSS (GiB)",
        "load avg",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for kind in KINDS:
        first = by.get(("dynamic", capacities[0], kind))
        for capacity in capacities:
            ours = by.get(("dynamic", capacity, kind))
            theirs = by.get(("hashing", capacity, kind))
            if ours is None or theirs is None:
                continue
            row = [_capacity(capacity, plain=True), kind]
            for run in (ours, theirs):
                if run.get("oom"):
                    row += ["out of memory", ""]
                else:
                    row += [f"{run['median_ms']:.2f}", f"{run['mean_ms']:.2f}"]
            if ours.get("oom") or theirs.get("oom"):
                row += ["", "", ""]
            else:
                row.append(f"{ours['median_ms'] / theirs['median_ms']:.2f}x")
                row.append(f"{ours['median_ms'] / first['median_ms']:.2f}x")
                row.append(f"{ours['max_ms']:.1f}")
            row += [f"{ours['peak_rss_gib']:.2f}", f"{theirs['peak_rss_gib']:.2f}"]
            row.append(f"{max(ours.get('load_avg', 0), theirs.get('load_avg', 0)):.1f}")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def targets(records, batch, dim):
    """The issue's two speed targets, read off the warm rows."""
    by = {
        (r["system"], r["capacity"]): r
        for r in records
        if r["kind"] == "warm" and (r["batch"], r["dim"]) == (batch, dim)
    }
    lines = []
    small, large = by.get(("dynamic", 2**14)), by.get(("dynamic", 2**20))
    hashing = by.get(("hashing", 2**20))
    if small and large:
        ratio = large["median_ms"] / small["median_ms"]
        lines.append(
            f"- Warm step at 2^20 (1,048,576 rows) / at 2^14 (16,384): "
            f"**{ratio:.2f}x** "
            f"({large['median_ms']:.2f} / {small['median_ms']:.2f} ms; "
            "target: at most 2x)."
        )
    if large and hashing:
        ratio = large["median_ms"] / hashing["median_ms"]
        lines.append(
            f"- Warm step at 2^20, DynamicEmbedding / Hashing + Embedding: "
            f"**{ratio:.2f}x** ({large['median_ms']:.2f} / "
            f"{hashing['median_ms']:.2f} ms; target: at most 1.5x)."
        )
    return "\n".join(lines)


def plot(records, batch, dim, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_lookup import _plot_style

    _plot_style.use_style(matplotlib)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for system, color in zip(SYSTEMS, ("C0", "C1"), strict=True):
        for kind, style in zip(KINDS, ("-", "--"), strict=True):
            rows = sorted(
                (
                    r
                    for r in records
                    if (r["system"], r["kind"], r["batch"], r["dim"])
                    == (system, kind, batch, dim)
                    and not r.get("oom")
                ),
                key=lambda r: r["capacity"],
            )
            if not rows:
                continue
            stat = "median_ms" if kind == "warm" else "mean_ms"
            ax.plot(
                [r["capacity"] for r in rows],
                [r[stat] for r in rows],
                style,
                color=color,
                marker="o",
                label=f"{LABELS[system]}, {kind} ids "
                f"({'median' if kind == 'warm' else 'mean'})",
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("capacity (rows)")
    ax.set_ylabel("train_on_batch step (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{batch} single int64 ids a step, D={dim}, LazyAdam")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=_plot_style.FONT_SIZE - 2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--capacities",
        type=int,
        nargs="+",
        default=None,
        help="capacities (default: 2^14 2^16 2^18 2^20 2^23)",
    )
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--batch", type=int, default=1024, help="ids a step")
    parser.add_argument("--dim", type=int, default=64, help="embedding width")
    parser.add_argument("--steps", type=int, default=None, help="timed steps")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    parser.add_argument(
        "--memory-limit-gib",
        type=float,
        default=10.0,
        help="RSS limit of each configuration's process",
    )
    parser.add_argument(
        "--quick", action="store_true", help="C = 2^10, 2^12 and 20 steps: a smoke run"
    )
    parser.add_argument("--out", default=RESULTS, help="folder for the results")
    parser.add_argument(
        "--render",
        action="store_true",
        help="only rewrite dynamic_embedding.md/png from the records already "
        "in dynamic_embedding.jsonl",
    )
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 20 if args.quick else 300
    if args.capacities is None:
        args.capacities = [2**10, 2**12] if args.quick else list(CAPACITIES)
    if args.child:
        child(
            args.child,
            args.capacities[0],
            args.kind,
            args.batch,
            args.dim,
            args.steps,
            args.warmup,
        )
        return

    os.makedirs(args.out, exist_ok=True)
    log = os.path.join(args.out, "dynamic_embedding.jsonl")
    for kind in [] if args.render else args.kinds:
        for capacity in sorted(args.capacities):
            for system in SYSTEMS:
                label = f"{system:>8} C={_capacity(capacity):>5} {kind:>4} ids"
                print(f"{label} ...", end=" ", flush=True)
                record = run_config(system, capacity, kind, args)
                with open(log, "a") as f:
                    f.write(json.dumps(record) + "\n")
                if record.get("oom"):
                    print(f"out of memory ({record['peak_rss_gib']:.1f} GiB)")
                    continue
                print(
                    f"median {record['median_ms']:7.2f} ms, mean "
                    f"{record['mean_ms']:7.2f} ms, peak RSS "
                    f"{record['peak_rss_gib']:5.2f} GiB ({record['wall_s']:.0f} s)",
                    flush=True,
                )

    import keras
    import tensorflow as tf

    records = list(_harness.latest_records(log, _key).values())
    text = table(records, args.batch, args.dim)
    command = "python benchmarks/dynamic_embedding.py " + " ".join(
        a for a in sys.argv[1:] if a != "--render"
    )
    about = (
        f"Command: `{command.strip()}` (rows from earlier runs of other "
        "capacities are kept from `dynamic_embedding.jsonl`; `--render` "
        "rewrites this file from it).  \n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
        f"Python {platform.python_version()}.  \n"
        f"Model: Input(int64) -> embedding(C, {args.dim}) -> Dense(1), mse, "
        f"LazyAdam, `train_on_batch` on {args.batch} single ids a step, "
        f"{args.warmup} warm-up steps, then timed steps ({args.steps} for warm "
        "ids; for new ids at least three eviction passes' worth). Each "
        "configuration ran in its own process; peak RSS is its `VmHWM`. Load "
        "avg: the 1-minute load average at the end of the row's runs "
        f"({os.cpu_count()} cores)."
    )
    print()
    print(text)
    goal = targets(records, args.batch, args.dim)
    with open(os.path.join(args.out, "dynamic_embedding.md"), "w") as f:
        f.write(f"# DynamicEmbedding: training step vs capacity\n\n{about}\n\n")
        if goal:
            f.write(f"{goal}\n\n")
        f.write(f"{text}\n")
    plotted = _harness.write_plot(
        plot,
        records,
        args.batch,
        args.dim,
        os.path.join(args.out, "dynamic_embedding.png"),
    )
    print(
        f"\nwrote {args.out}/dynamic_embedding.md"
        + (" and dynamic_embedding.png" if plotted else "")
    )


if __name__ == "__main__":
    main()
