"""Training-step time and peak memory of an embedding model against vocabulary size.

Trains `Embedding -> GlobalAveragePooling1D -> Dense(1)` with `train_on_batch`
(batch 32 x 128 ids, D=128) and compares, at each vocabulary size V:

- ours:  `keras_lookup.Embedding` + `keras_lookup.optimizers.LazyAdam`
- keras: `keras.layers.Embedding` + `keras.optimizers.Adam`
- keras+lazy: `keras.layers.Embedding` + `LazyAdam`: the optimizer with
  Keras's own layer, which reads the table densely (cheap only because the
  optimizer switches TensorFlow's copy-on-read mode back off after each
  sparse update).

Each (system, V) runs in its own subprocess, so that its peak RSS
(`ru_maxrss`, read at the end of the child) is its own. Writes a Markdown table
to `benchmarks/results/train_step.md` and a log-log plot to
`benchmarks/results/train_step.png`.

Usage:

    python benchmarks/train_step.py                # V = 1k, 100k, 1M
    python benchmarks/train_step.py --quick        # V = 1k, 100k; few steps
    python benchmarks/train_step.py --vocab-sizes 1000 10000 --steps 30
    python benchmarks/train_step.py --build-optimizer-first   # see below
    python benchmarks/train_step.py --scale        # the scale curve, see below

`--build-optimizer-first` calls `optimizer.build` right after `compile`. The
table's initializer frees about two tables' worth of temporaries that
TensorFlow's allocator keeps; slots created at once reuse them, while slots
created inside the first `train_on_batch` may not fit there any more, which
shows as about +0.5 GiB of peak RSS for Adam's two slots at V=1M.

`--scale` runs the scale curve instead: V in {1k, 100k, 1M, 10M, 50M} x
D=64, `keras_lookup.Embedding` with `LazyAdam`, `LazyRowwiseAdagrad` and
`LazyRowwiseAdam`, and `keras.layers.Embedding` with Keras's `Adam`; the
`*_bf16` systems store the table in bfloat16 (`table_dtype="bfloat16"`,
stochastic rounding; run them with `--systems`, e.g. at V=100M). Each
configuration runs in its own process, which the parent kills once its RSS
exceeds `--memory-limit-gib` (polled every 10 ms), so that one that does not
fit never wakes the machine's OOM killer; it is reported as "out of
memory". Each record is appended to
`benchmarks/results/scale.jsonl` (`--vocab-sizes` runs a subset; the
latest record of each configuration wins), and `scale.md` / `scale.png`
are written from all of them. Peak RSS is reported after building (model,
compile, optimizer slots) and over the whole run.
"""

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

BATCH, LENGTH, DIM = 32, 128, 128
SYSTEMS = ("ours", "keras", "keras+lazy")
LABELS = {
    "ours": "keras_lookup.Embedding + LazyAdam",
    "keras": "keras.layers.Embedding + keras Adam",
    "keras+lazy": "keras.layers.Embedding + LazyAdam",
}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def child(system, vocab, steps, warmup, seed, build_first):
    """Runs one configuration and prints one JSON line."""
    import resource

    import keras
    import numpy as np

    import keras_lookup
    from keras_lookup.optimizers import LazyAdam

    keras.utils.set_random_seed(seed)
    if system == "ours":
        embedding, optimizer = keras_lookup.Embedding(vocab, DIM), LazyAdam()
    elif system == "keras":
        embedding = keras.layers.Embedding(vocab, DIM)
        optimizer = keras.optimizers.Adam()
    else:
        embedding, optimizer = keras.layers.Embedding(vocab, DIM), LazyAdam()
    model = keras.Sequential(
        [
            keras.Input((LENGTH,), dtype="int32"),
            embedding,
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=optimizer, loss="mse")
    if build_first:
        # Slots created now reuse the memory the table's initializer just
        # freed; built inside the first `train_on_batch`, one of Adam's two
        # slots may not fit there any more (about +0.5 GiB at V=1M).
        optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(seed)
    batches = [
        (
            rng.integers(0, vocab, size=(BATCH, LENGTH), dtype=np.int32),
            rng.normal(size=(BATCH, 1)).astype("float32"),
        )
        for _ in range(8)
    ]
    (times,), (loss,) = _harness.time_steps(
        # train_on_batch returns a float: the step is done when it returns.
        [lambda i: model.train_on_batch(*batches[i % len(batches)])],
        steps,
        warmup,
    )
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _harness.emit(
        {
            "system": system,
            "vocab": vocab,
            "median_ms": 1e3 * float(np.median(times)),
            "p10_ms": 1e3 * float(np.percentile(times, 10)),
            "p90_ms": 1e3 * float(np.percentile(times, 90)),
            "peak_rss_mb": peak_kb / 1024,
            "steps": steps,
            "final_loss": float(loss),
            "load_avg": os.getloadavg()[0],
        }
    )


def run_config(system, vocab, args):
    return _harness.run_or_exit(
        __file__,
        [
            *("--child", system, "--vocab-sizes", vocab),
            *("--steps", args.steps, "--warmup", args.warmup),
            *(["--build-optimizer-first"] if args.build_optimizer_first else []),
        ],
        f"{system} V={vocab}",
    )


def _fmt_v(vocab):
    for unit, size in (("M", 10**6), ("k", 10**3)):
        if vocab >= size and vocab % size == 0:
            return f"{vocab // size}{unit}"
    return str(vocab)


def table(records, vocab_sizes):
    by = {(r["system"], r["vocab"]): r for r in records}
    first = vocab_sizes[0]
    ratio = f"V/{_fmt_v(first)}"
    has_mixed = any(r["system"] == "keras+lazy" for r in records)
    header = [
        "V",
        "ours step (ms)",
        "keras step (ms)",
        "speed-up keras/ours",
        f"ours {ratio}",
        f"keras {ratio}",
        "ours peak RSS (GiB)",
        "keras peak RSS (GiB)",
    ]
    if has_mixed:
        header += ["keras+lazy step (ms)", "keras+lazy peak RSS (GiB)"]
    header.append("load avg")
    header.append("step range over processes (ms)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for vocab in vocab_sizes:
        ours, ref = by[("ours", vocab)], by[("keras", vocab)]
        row = [
            f"{vocab:,}",
            f"{ours['median_ms']:.1f}",
            f"{ref['median_ms']:.1f}",
            f"{ref['median_ms'] / ours['median_ms']:.1f}x",
            f"{ours['median_ms'] / by[('ours', first)]['median_ms']:.2f}x",
            f"{ref['median_ms'] / by[('keras', first)]['median_ms']:.2f}x",
            f"{ours['peak_rss_mb'] / 1024:.2f}",
            f"{ref['peak_rss_mb'] / 1024:.2f}",
        ]
        runs = [ours, ref]
        if has_mixed:
            mixed = by[("keras+lazy", vocab)]
            runs.append(mixed)
            row += [f"{mixed['median_ms']:.1f}", f"{mixed['peak_rss_mb'] / 1024:.2f}"]
        row.append(f"{max(r['load_avg'] for r in runs):.1f}")
        row.append(
            "; ".join(
                f"{r['system']}: {min(r['process_medians_ms']):.1f}–"
                f"{max(r['process_medians_ms']):.1f}"
                for r in runs
                if len(r.get("process_medians_ms", [])) > 1
            )
        )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(records, vocab_sizes, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_lookup import _plot_style

    _plot_style.use_style(matplotlib)
    fig, ax = plt.subplots(figsize=(8, 5))
    for system, marker in zip(SYSTEMS, "os^", strict=True):
        rows = sorted(
            (r for r in records if r["system"] == system), key=lambda r: r["vocab"]
        )
        if not rows:
            continue
        ax.errorbar(
            [r["vocab"] for r in rows],
            [r["median_ms"] for r in rows],
            yerr=[
                [r["median_ms"] - r["p10_ms"] for r in rows],
                [r["p90_ms"] - r["median_ms"] for r in rows],
            ],
            marker=marker,
            capsize=3,
            label=LABELS[system],
            **_plot_style.style(system),
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("vocabulary size V")
    ax.set_ylabel("train_on_batch step time (ms, median; p10-p90)")
    ax.set_title(f"Adam step, batch {BATCH}x{LENGTH} ids, D={DIM}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------
# The scale curve (`--scale`).

SCALE_DIM = 64
SCALE_VOCAB_SIZES = (1000, 100_000, 10**6, 10**7, 5 * 10**7)
SCALE_SYSTEMS = (
    "lazy_adam",
    "rowwise_adagrad",
    "rowwise_adam",
    "keras_adam",
    "lazy_adam_bf16",
    "rowwise_adagrad_bf16",
)
SCALE_LABELS = {
    "lazy_adam": "keras_lookup.Embedding + LazyAdam",
    "rowwise_adagrad": "keras_lookup.Embedding + LazyRowwiseAdagrad",
    "rowwise_adam": "keras_lookup.Embedding + LazyRowwiseAdam",
    "keras_adam": "keras.layers.Embedding + keras Adam",
    "lazy_adam_bf16": "bfloat16 table + LazyAdam",
    "rowwise_adagrad_bf16": "bfloat16 table + LazyRowwiseAdagrad",
}


def _scale_model(system, vocab):
    import keras

    import keras_lookup
    from keras_lookup import optimizers

    if system == "keras_adam":
        embedding = keras.layers.Embedding(vocab, SCALE_DIM)
        optimizer = keras.optimizers.Adam()
    else:
        table_dtype = "bfloat16" if system.endswith("_bf16") else "float32"
        embedding = keras_lookup.Embedding(vocab, SCALE_DIM, table_dtype=table_dtype)
        optimizer = {
            "lazy_adam": optimizers.LazyAdam,
            "rowwise_adagrad": optimizers.LazyRowwiseAdagrad,
            "rowwise_adam": optimizers.LazyRowwiseAdam,
        }[system.removesuffix("_bf16")]()
    model = keras.Sequential(
        [
            keras.Input((LENGTH,), dtype="int32"),
            embedding,
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=optimizer, loss="mse")
    optimizer.build(model.trainable_variables)
    return model


def _scale_batches(vocab):
    import numpy as np

    rng = np.random.default_rng(0)
    return [
        (
            rng.integers(0, vocab, size=(BATCH, LENGTH), dtype=np.int32),
            rng.normal(size=(BATCH, 1)).astype("float32"),
        )
        for _ in range(8)
    ]


def scale_child(system, vocab, steps, warmup, limit_gib, reference_vocab=None):
    """One scale configuration; prints one JSON line (the parent limits RSS)."""
    record = {"system": system, "vocab": vocab, "limit_gib": limit_gib}
    stage = "import"
    try:
        import keras
        import numpy as np

        stage = "build"
        keras.utils.set_random_seed(0)
        start = time.perf_counter()
        model = _scale_model(system, vocab)
        record["build_s"] = time.perf_counter() - start
        record["build_peak_rss_gib"] = _harness.status_gib("VmHWM")
        stage = "train"
        _harness.emit(record, tag="BUILT ")
        runs = [(model, _scale_batches(vocab))]
        if reference_vocab:
            # The same system at a small V in the same process, its steps
            # alternating with the large model's: the ratio of the two is
            # then measured under the same load.
            runs.append(
                (
                    _scale_model(system, reference_vocab),
                    _scale_batches(reference_vocab),
                )
            )
        step_times, _ = _harness.time_steps(
            [
                lambda i, m=run_model, b=batches: m.train_on_batch(*b[i % len(b)])
                for run_model, batches in runs
            ],
            steps,
            warmup,
        )
        times = step_times[0]
        record.update(
            median_ms=1e3 * float(np.median(times)),
            p10_ms=1e3 * float(np.percentile(times, 10)),
            p90_ms=1e3 * float(np.percentile(times, 90)),
            steps=steps,
        )
        if reference_vocab:
            record["reference_vocab"] = reference_vocab
            record["reference_median_ms"] = 1e3 * float(np.median(step_times[1]))
    except Exception as error:  # TensorFlow's ResourceExhaustedError, MemoryError
        text = f"{type(error).__name__}: {error}"
        if not ("OOM" in text or "MemoryError" in text or "ResourceExhausted" in text):
            raise
        record.update(oom=True, stage=stage, error=text[:300])
    record["peak_rss_gib"] = _harness.status_gib("VmHWM")
    record["peak_vm_gib"] = _harness.status_gib("VmPeak")
    record["load_avg"] = os.getloadavg()[0]
    _harness.emit(record)


def run_scale_config(system, vocab, args):
    child = _harness.run_child(
        __file__,
        [
            *("--scale-child", system, "--vocab-sizes", vocab),
            *("--steps", args.steps, "--warmup", args.warmup),
            *("--memory-limit-gib", args.memory_limit_gib),
            *(
                ["--reference-vocab", args.reference_vocab]
                if args.reference_vocab
                else []
            ),
        ],
        memory_limit_gib=args.memory_limit_gib,
    )
    record = child.record()
    if record is None:
        record = {"system": system, "vocab": vocab, "limit_gib": args.memory_limit_gib}
        built = child.record("BUILT ")
        if built:
            record.update(built)
        if child.peak_gib > args.memory_limit_gib:
            stage = "train" if built else "build"
            record.update(oom=True, stage=stage, peak_rss_gib=child.peak_gib)
        else:
            record["failed"] = f"exit {child.returncode}: {child.stderr[-300:]}"
    record["wall_s"] = child.wall_s
    return record


def _scale_records(path):
    return _harness.latest_records(path, lambda r: (r["system"], r["vocab"]))


def _state_gib(system, vocab):
    """Table plus optimizer slots (float32), in GiB (what must fit)."""
    if system.endswith("_bf16"):
        base = system.removesuffix("_bf16")
        return _state_gib(base, vocab) - vocab * SCALE_DIM * 2 / 2**30
    table = vocab * SCALE_DIM * 4 / 2**30
    per_row = {"lazy_adam": 2 * table, "rowwise_adagrad": vocab * 4 / 2**30}
    per_row["rowwise_adam"] = table + vocab * 4 / 2**30
    per_row["lazy_adagrad"] = table  # not timed here; in the sizing table
    per_row["keras_adam"] = 2 * table
    return table + per_row[system]


def _scale_cell(system, vocab, record, compact):
    if record is None:
        return ["not run", ""] if not compact else "not run"
    if record.get("oom") or record.get("failed"):
        need = _state_gib(system, vocab)
        where = record.get("stage", "run")
        if compact:
            what = "the table" if system == "keras_adam" else "the slots"
            return f"out of memory building {what} (needs {need:.1f} GiB)"
        return [
            f"out of memory at {where} (table + slots alone: "
            f"{need:.1f} GiB; limit {record['limit_gib']:g} GiB)",
            f"– / {record.get('peak_rss_gib', float('nan')):.2f}",
        ]
    ratio = ""
    if record.get("reference_median_ms"):
        ratio = (
            f"{record['median_ms'] / record['reference_median_ms']:.2f}× "
            f"V={_fmt_v(record['reference_vocab'])}"
        )
    if compact:  # the ratio only: the text above the table names the V
        ratio = f" ({ratio.split()[0]})" if ratio else ""
        return f"{record['median_ms']:.1f} ms{ratio}, {record['peak_rss_gib']:.2f} GiB"
    step = f"{record['median_ms']:.1f}"
    step += f" ({ratio}, same process" if ratio else " ("
    step += f"{'; ' if ratio else ''}load {record['load_avg']:.1f})"
    return [
        step,
        f"{record['build_peak_rss_gib']:.2f} / {record['peak_rss_gib']:.2f}",
    ]


def scale_compact_table(latest, vocab_sizes, systems):
    """Step and peak RSS of `systems`, one cell each (what the guides show)."""
    header = ["V × 64", *(SCALE_LABELS[s].split(" + ", 1)[1] for s in systems)]
    if "keras_adam" in systems:
        header[1 + systems.index("keras_adam")] = "Keras `Embedding` + `Adam`"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for vocab in vocab_sizes:
        if not any((s, vocab) in latest for s in systems):
            continue
        cells = [_scale_cell(s, vocab, latest.get((s, vocab)), True) for s in systems]
        lines.append("| " + " | ".join([f"{vocab:,}", *cells]) + " |")
    return "\n".join(lines)


def scale_table(latest, vocab_sizes):
    header = ["V × 64", "table + slots (GiB)"]
    for system in SCALE_SYSTEMS:
        header += [f"{system}: step (ms)", f"{system}: peak RSS build / run (GiB)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for vocab in vocab_sizes:
        row = [
            f"{vocab:,}",
            f"{_state_gib('rowwise_adagrad', vocab):.2f} – "
            f"{_state_gib('lazy_adam', vocab):.2f}",
        ]
        for system in SCALE_SYSTEMS:
            row += _scale_cell(system, vocab, latest.get((system, vocab)), False)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# Budgets for the sizing table: this machine's 24 GiB less room for the
# system, and a 16 GiB machine's.
BUDGETS_GIB = (14, 22)


def scale_sizing(latest):
    """What a table costs beyond its state, and the largest table that fits.

    The overhead of a run is its peak RSS less its table and slots (TensorFlow
    itself, the step's temporaries); only the lazy and row-wise optimizers'
    runs with at least 1 GiB of state count (below that the fixed part hides
    the rest; Keras's Adam adds dense temporaries of the table's size). The
    largest table of a budget is (budget - largest overhead) / bytes a row.
    """
    rows = []
    for (system, vocab), record in sorted(latest.items()):
        state = _state_gib(system, vocab)
        if system == "keras_adam" or "peak_rss_gib" not in record or state < 1:
            continue
        if "median_ms" not in record:
            continue
        rows.append((system, vocab, state, record["peak_rss_gib"]))
    if not rows:
        return ""
    overheads = [peak - state for _, _, state, peak in rows]
    worst = max(overheads)
    lines = [
        "| run | table + slots (GiB) | peak RSS (GiB) | peak - (table + slots) (GiB) |",
        "|---|---|---|---|",
    ]
    for (system, vocab, state, peak), over in zip(rows, overheads, strict=True):
        lines.append(
            f"| {SCALE_LABELS[system]}, V = {vocab:,} | {state:.2f} | {peak:.2f} "
            f"| {over:.2f} |"
        )
    optimizers = {
        "LazyRowwiseAdagrad": "rowwise_adagrad",
        "LazyRowwiseAdagrad, bfloat16 table": "rowwise_adagrad_bf16",
        "LazyRowwiseAdam": "rowwise_adam",
        "LazyAdagrad": "lazy_adagrad",
        "LazyAdam": "lazy_adam",
    }
    sizing = [
        "| optimizer | bytes a row (table + state) | "
        + " | ".join(f"largest V × {SCALE_DIM} in {b} GiB" for b in BUDGETS_GIB)
        + " |",
        "|---|---|" + "---|" * len(BUDGETS_GIB),
    ]
    for name, system in optimizers.items():
        size = round(_state_gib(system, 1) * 2**30)
        fits = [int((b - worst) * 2**30 / size / 1e6) for b in BUDGETS_GIB]
        sizing.append(
            f"| {name} | {size} | " + " | ".join(f"{n}M" for n in fits) + " |"
        )
    return (
        "Peak RSS beyond the table and slots, over the lazy and row-wise "
        "optimizers' runs with at least 1 GiB of state: "
        f"{min(overheads):.2f}–{worst:.2f} GiB.\n\n"
        + "\n".join(lines)
        + f"\n\nSo a table of V rows needs about {worst:.2f} GiB + V × (bytes a "
        "row); the largest that fit a budget by that rule (1M = 10^6 rows):\n\n"
        + "\n".join(sizing)
    )


def scale_plot(latest, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_lookup import _plot_style

    _plot_style.use_style(matplotlib)
    # Stacked, so that a page that shrinks the figure keeps it legible.
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 9.5), sharex=True)
    for system, marker in zip(SCALE_SYSTEMS, "os^Dvx", strict=True):
        rows = sorted(
            (r for (s, _), r in latest.items() if s == system and "median_ms" in r),
            key=lambda r: r["vocab"],
        )
        if not rows:
            continue
        vocab = [r["vocab"] for r in rows]
        for ax, key in ((top, "median_ms"), (bottom, "peak_rss_gib")):
            ax.plot(
                vocab,
                [r[key] for r in rows],
                marker=marker,
                label=SCALE_LABELS[system],
                **_plot_style.style(system),
            )
    for ax, label in (
        (top, "train_on_batch step (ms, median)"),
        (bottom, "peak RSS, build + training (GiB)"),
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    bottom.set_xlabel(f"vocabulary size V (D = {SCALE_DIM})")
    top.legend(fontsize=_plot_style.FONT_SIZE - 2)
    top.set_title(
        f"Scale: batch {BATCH}x{LENGTH} ids; missing points ran out of memory"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def scale_main(args):
    vocab_sizes = sorted(args.vocab_sizes or SCALE_VOCAB_SIZES)
    systems = args.systems or SCALE_SYSTEMS
    jsonl = os.path.join(args.out, "scale.jsonl")
    os.makedirs(args.out, exist_ok=True)
    for vocab in vocab_sizes:
        for system in systems:
            print(f"{system:>16} V={vocab:>11,} ...", end=" ", flush=True)
            record = run_scale_config(system, vocab, args)
            with open(jsonl, "a") as f:
                f.write(json.dumps(record) + "\n")
            if "median_ms" in record:
                print(
                    f"{record['median_ms']:8.2f} ms/step  peak RSS "
                    f"{record['peak_rss_gib']:5.2f} GiB ({record['wall_s']:.0f} s)",
                    flush=True,
                )
            else:
                print(f"out of memory / failed ({record['wall_s']:.0f} s)", flush=True)
    scale_render(args)


FLOAT32_SYSTEMS = ("lazy_adam", "rowwise_adagrad", "rowwise_adam", "keras_adam")
BF16_SYSTEMS = ("lazy_adam_bf16", "rowwise_adagrad_bf16")


def scale_render(args):
    import keras
    import tensorflow as tf

    latest = _scale_records(os.path.join(args.out, "scale.jsonl"))
    vocab_sizes = sorted({v for _, v in latest})
    text = scale_table(latest, vocab_sizes)
    steps = sorted({r["steps"] for r in latest.values() if "steps" in r})
    limits = sorted({r["limit_gib"] for r in latest.values()})
    about = (
        "Command: `nice -n 10 python benchmarks/train_step.py --scale "
        "--reference-vocab 1000 --steps 100 --memory-limit-gib 14`, run in parts "
        "with `--vocab-sizes` and `--systems`; `--reference-vocab 1000` also "
        "times a V=1k model in the same process, its steps alternating with the "
        "large one's. Each cell is the latest record of its configuration in "
        "`scale.jsonl`.  \n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, TensorFlow "
        f"{tf.__version__}, Keras {keras.__version__}; load: the 1-minute load "
        "average at the end of the configuration's run (2 is the benchmark "
        "itself; above that, other jobs shared the CPUs).  \n"
        f"Model: Embedding(V, {SCALE_DIM}) -> GlobalAveragePooling1D -> Dense(1), "
        f"`train_on_batch` on {BATCH}x{LENGTH} uniform random ids, "
        f"{args.warmup} warm-up steps, median of "
        f"{' or '.join(map(str, steps))} timed steps, "
        "each configuration in its own process, killed by the parent once its "
        f"RSS exceeds the limit ({' or '.join(f'{x:g}' for x in limits)} GiB). "
        "Peak RSS: `VmHWM` after building the model and the "
        'optimizer\'s slots, and at the end. "table + slots" is the float32 '
        "state from LazyRowwiseAdagrad's (table + 1 number a row) to "
        "LazyAdam's (3 tables)."
    )
    compact = scale_compact_table(latest, vocab_sizes, FLOAT32_SYSTEMS)
    half = scale_compact_table(latest, vocab_sizes, BF16_SYSTEMS)
    with open(os.path.join(args.out, "scale.md"), "w") as f:
        f.write(
            f"# Scale: step time and memory up to 50M rows\n\n{about}\n\n"
            "Step (median `train_on_batch`; in brackets, over the V=1k model's "
            "step in the same process) and peak RSS over build and training, "
            f"float32 tables:\n\n{compact}\n\n"
            f'bfloat16 tables (`table_dtype="bfloat16"`):\n\n{half}\n\n'
            f"Every system, with build and run peaks and the load:\n\n{text}\n\n"
        )
        sizing = scale_sizing(latest)
        if sizing:
            f.write(f"## Memory beyond the table\n\n{sizing}\n\n")
        f.write("Raw records (build time, load average, errors): `scale.jsonl`.\n")
    plotted = _harness.write_plot(
        scale_plot, latest, os.path.join(args.out, "scale.png")
    )
    print(text)
    print(f"\nwrote {args.out}/scale.md" + (" and scale.png" if plotted else ""))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument(
        "--vocab-sizes",
        type=int,
        nargs="+",
        default=None,
        help="vocabulary sizes (default: 1000 100000 1000000)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="V = 1k, 100k and 10 steps: a smoke run"
    )
    parser.add_argument("--out", default=RESULTS, help="folder for the .md and .png")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="processes per configuration; the median one is reported",
    )
    parser.add_argument(
        "--no-keras-lazy",
        action="store_true",
        help="skip the keras.layers.Embedding + LazyAdam configuration",
    )
    parser.add_argument(
        "--build-optimizer-first",
        action="store_true",
        help="build the optimizer right after compile (lower peak RSS)",
    )
    parser.add_argument(
        "--scale", action="store_true", help="run the scale curve (see above)"
    )
    parser.add_argument(
        "--systems", nargs="+", choices=SCALE_SYSTEMS, help="scale: systems to run"
    )
    parser.add_argument(
        "--memory-limit-gib",
        type=float,
        default=14.0,
        help="scale: RSS limit of each configuration's process",
    )
    parser.add_argument(
        "--reference-vocab",
        type=int,
        default=None,
        help="scale: also time this V in the same process, steps alternating",
    )
    parser.add_argument(
        "--render", action="store_true", help="scale: rewrite scale.md/png only"
    )
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--scale-child", choices=SCALE_SYSTEMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scale_child:
        scale_child(
            args.scale_child,
            args.vocab_sizes[0],
            args.steps or 50,
            args.warmup,
            args.memory_limit_gib,
            args.reference_vocab,
        )
        return
    if args.render:
        scale_render(args)
        return
    if args.scale:
        args.steps = args.steps or 50
        scale_main(args)
        return
    if args.steps is None:
        args.steps = 10 if args.quick else 50
    if args.vocab_sizes is None:
        args.vocab_sizes = [1000, 100_000] if args.quick else [1000, 100_000, 10**6]
    if args.child:
        child(
            args.child,
            args.vocab_sizes[0],
            args.steps,
            args.warmup,
            seed=0,
            build_first=args.build_optimizer_first,
        )
        return

    vocab_sizes = sorted(args.vocab_sizes)
    systems = SYSTEMS[:2] if args.no_keras_lazy else SYSTEMS
    records = []
    for vocab in vocab_sizes:
        for system in systems:
            print(f"{system:>10} V={vocab:>9,} ...", end=" ", flush=True)
            # One step time per process varies more between processes than
            # within one (where the table's pages land): the record of the
            # median process, with every process's median kept.
            runs = [run_config(system, vocab, args) for _ in range(args.repeats)]
            runs.sort(key=lambda r: r["median_ms"])
            record = dict(runs[len(runs) // 2])
            record["process_medians_ms"] = [r["median_ms"] for r in runs]
            record["load_avg"] = max(r["load_avg"] for r in runs)
            records.append(record)
            print(
                f"{record['median_ms']:8.2f} ms/step  "
                f"peak RSS {record['peak_rss_mb'] / 1024:5.2f} GiB  "
                f"({', '.join(f'{r:.2f}' for r in record['process_medians_ms'])})",
                flush=True,
            )

    import keras
    import tensorflow as tf

    text = table(records, vocab_sizes)
    command = "python benchmarks/train_step.py " + " ".join(sys.argv[1:])
    about = (
        f"Command: `{command.strip()}`  \n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
        f"Python {platform.python_version()}.  \n"
        f"Model: Embedding(V, {DIM}) -> GlobalAveragePooling1D -> Dense(1), "
        f"`train_on_batch` on {BATCH}x{LENGTH} uniform random ids, "
        f"{args.warmup} warm-up steps, median of {args.steps} timed steps. "
        f"Each configuration ran in {args.repeats} processes of its own; the "
        "table shows the process with the median step time (its peak RSS is "
        "its `ru_maxrss`), and the range of the processes' medians. Load avg: "
        "the highest 1-minute load average seen at the end of the row's runs "
        "(this machine has "
        f"{os.cpu_count()} cores; above that, other work shared the CPUs)."
    )
    print()
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "train_step.md"), "w") as f:
        f.write(f"# Training step vs vocabulary size\n\n{about}\n\n{text}\n")
    # The records, so that the plot can be drawn again without timing.
    with open(os.path.join(args.out, "train_step.json"), "w") as f:
        json.dump({"vocab_sizes": vocab_sizes, "records": records}, f, indent=1)
    plotted = _harness.write_plot(
        plot, records, vocab_sizes, os.path.join(args.out, "train_step.png")
    )
    print(
        f"\nwrote {args.out}/train_step.md" + (" and train_step.png" if plotted else "")
    )


if __name__ == "__main__":
    main()
