"""Lookup vs matmul on this device: `python -m keras_lookup.bench --help`.

Times one training-style step (forward pass, then the gradient with respect to
the table, in the form an optimizer receives it: row-sparse for a gather,
dense for a matmul) of each way to turn ids into vectors, over a grid of
vocabulary sizes V and input forms:

- single ids: `rows x seq_len` ids, one vector per id;
- padded bags: dense `(rows, k)` ids, each row summed (`combiner="sum"`);
- ragged bags: `tf.RaggedTensor` rows of about k ids (k/2 to 3k/2), summed;
- multi-hot rows (`--forms multi_hot`, not in the default grid): the counts of
  those ragged bags as a dense `(rows, V)` matrix, `input_format="multi_hot"`
  (no `keras.layers.Embedding` column; skipped where rows x V exceeds
  `--max-one-hot`).

Columns: `keras.layers.Embedding` (plus a sum for bags) and
`keras.layers.Dense` on a one-hot / bag-count matrix, Keras's own layers, as
baselines; `keras_lookup.DimensionReducer` with `strategy="gather"`,
`"matmul"` and `"auto"`. At each point every column is traced and warmed up,
then timed in interleaved rounds (each round runs every column, in a shuffled
order, for a few milliseconds, and keeps its fastest call); the table reports
the minimum over rounds (the median over rounds is in results.json), and
`auto / fastest`: auto's time over the fastest of all the columns (1.00 when
auto is the fastest), whose worst point the summary line names.
Outputs, under `--out`: `results.json`, `results.md`, and one plot per form
(`lookup_<form>.png`: time vs V, a line per column, a panel per ids-per-row,
the measured crossover marked).

`--calibrate` instead measures the crossovers `strategy="auto"` uses and stores
them for this device (see `keras_lookup.calibrate`).

    python -m keras_lookup.bench --quick --out /tmp/bench   # under 2 minutes
    python -m keras_lookup.bench --out bench                # the full grid
    python -m keras_lookup.bench --forms ragged --vocabs 4 1024 65536
    python -m keras_lookup.bench --calibrate
"""

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_lookup import _cost_model, calibration  # noqa: E402
from keras_lookup._timing import (  # noqa: E402
    COLUMNS,
    DEFAULT_FORMS,
    FORMS,
    ONE_HOT_COLUMNS,
    Settings,
    crossover_from_times,
    input_ids,
    make_column,
    make_inputs,
    one_hot_rows,
    rows_of,
    time_interleaved,
)


def auto_pick(layer, inputs):
    """What the `"auto"` layer runs on `inputs`, `"gather"` or `"matmul"`."""
    choice = layer.strategy_choice
    multi_hot = layer.input_format == "multi_hot"
    if layer.combiner is None and not multi_hot:  # single ids
        return choice.strategy
    use = _cost_model.use_matmul(
        layer._choice, layer.vocab_size, inputs, multi_hot, layer._calibration
    )
    return "matmul" if bool(use) else "gather"


def run_point(form, vocab, k, settings, columns, rng):
    inputs = make_inputs(form, vocab, k, settings, rng)
    too_big = one_hot_rows(form, inputs) * vocab > settings.max_one_hot
    steps, picked, reason = {}, None, None
    for column in columns:
        if too_big and column in ONE_HOT_COLUMNS:
            continue
        if form == "multi_hot" and column == "keras Embedding":
            continue
        steps[column], layer = make_column(column, form, vocab, k, settings, inputs)
        if column == "auto":
            picked, reason = auto_pick(layer, inputs), layer.strategy_choice.reason
    times = time_interleaved(steps, settings.rounds, settings.round_ms)
    point = {
        "form": form,
        "ids_per_row": k,
        "vocab": vocab,
        "ids": input_ids(form, inputs),
        "rows": rows_of(inputs),
        "min_ms": {c: min(t) for c, t in times.items()},
        "median_ms": {c: float(np.median(t)) for c, t in times.items()},
        "auto_picked": picked,
        "auto_reason": reason,
    }
    if times:
        # The fastest of every column timed, Keras's own layers and auto
        # included: "is anything faster than auto here?"
        point["fastest"] = min(point["min_ms"], key=point["min_ms"].get)
        if "auto" in times:
            fastest = point["min_ms"][point["fastest"]]
            point["auto_over_fastest"] = point["min_ms"]["auto"] / fastest
    return point


def grid(forms, vocabs, ids_per_row, settings):
    for form in forms:
        for k in [1] if form == "single" else ids_per_row:
            for vocab in vocabs:
                # A multi-hot batch is itself a (rows, V) matrix.
                if form != "multi_hot" or settings.rows * vocab <= settings.max_one_hot:
                    yield form, k, vocab


def run(forms, vocabs, ids_per_row, settings, columns=COLUMNS, progress=True):
    rng = np.random.default_rng(settings.seed)
    points = list(grid(forms, vocabs, ids_per_row, settings))
    results, start = [], time.perf_counter()
    for i, (form, k, vocab) in enumerate(points):
        point = run_point(form, vocab, k, settings, columns, rng)
        results.append(point)
        if progress:
            ratio = point.get("auto_over_fastest")
            _progress(
                i + 1,
                len(points),
                time.perf_counter() - start,
                f"{form} k={k} V={vocab:,}"
                + (f", auto/fastest {ratio:.2f}" if ratio else ""),
            )
    if progress:
        sys.stdout.write("\n")
    return results


def _progress(done, total, elapsed, label, width=30):
    filled = width * done // total
    eta = elapsed / done * (total - done)
    bar = "=" * filled + ">" * (filled < width) + "." * (width - filled - 1)
    sys.stdout.write(
        f"\r{done}/{total} [{bar}] {elapsed:.0f}s, eta {eta:.0f}s - {label}\x1b[K"
    )
    sys.stdout.flush()


def _fmt(ms):
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def table(results, columns=COLUMNS):
    """Markdown tables, one per form and bag size."""
    lines = []
    for form, k in dict.fromkeys((p["form"], p["ids_per_row"]) for p in results):
        rows = [p for p in results if (p["form"], p["ids_per_row"]) == (form, k)]
        title = {"single": "single ids", "multi_hot": f"multi-hot rows of {k} ids"}
        title = title.get(form, f"{form} bags of {k} ids")
        n = rows[0]["ids"] if form == "single" else rows[0]["rows"]
        lines += [f"\n### {title} ({n} {'ids' if form == 'single' else 'rows'})\n"]
        present = [c for c in columns if any(c in p["min_ms"] for p in rows)]
        lines.append(
            "| V | "
            + " | ".join(f"{c} ms" for c in present)
            + " | auto ran | auto / fastest |"
        )
        lines.append("|" + "---|" * (len(present) + 3))
        for p in rows:
            cells = [_fmt(p["min_ms"][c]) if c in p["min_ms"] else "—" for c in present]
            ratio = p.get("auto_over_fastest")
            lines.append(
                f"| {p['vocab']:,} | "
                + " | ".join(cells)
                + f" | {p['auto_picked'] or '—'} | "
                + (f"{ratio:.2f}" if ratio else "—")
                + " |"
            )
    return "\n".join(lines)


def worst_auto(results):
    scored = [p for p in results if p.get("auto_over_fastest")]
    return max(scored, key=lambda p: p["auto_over_fastest"]) if scored else None


def same_graph_line(results):
    """Auto against our column of the strategy it ran, or None.

    Where auto's choice is static, that column runs the very graph auto runs,
    so their ratio is the machine's noise; where auto decides per batch, it
    adds the decision's cost. Read the line above against this one.
    """
    pairs = [
        (p, p["min_ms"]["auto"] / p["min_ms"][p["auto_picked"]])
        for p in results
        if "auto" in p["min_ms"] and p.get("auto_picked") in p["min_ms"]
    ]
    if not pairs:
        return None
    worst, ratio = max(pairs, key=lambda pair: pair[1])
    within = sum(r <= 1.1 for _, r in pairs)
    how = worst["auto_picked"]
    # A dense bag's reason also says how ragged bags would be decided; only a
    # reason that starts so was decided per batch.
    if (worst["auto_reason"] or "").startswith("per batch"):
        how += ", decided per batch"
    return (
        f"Auto against our column of the strategy it ran (the same graph where "
        f"its choice is static): within 10% at {within} of {len(pairs)} points, "
        f"worst {ratio:.3f} at {worst['form']} k={worst['ids_per_row']} "
        f"V={worst['vocab']:,} ({how})."
    )


def plot(results, out_dir, columns=COLUMNS):
    """One PNG per form: time vs V, one panel per ids per row, stacked, so a
    page that shrinks the figure to its width keeps the labels legible.
    Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_lookup import _plot_style

    _plot_style.use_style(matplotlib)
    paths = []
    for form in dict.fromkeys(p["form"] for p in results):
        ks = list(dict.fromkeys(p["ids_per_row"] for p in results if p["form"] == form))
        fig, axes = plt.subplots(
            len(ks), 1, figsize=(8, 4.4 * len(ks)), squeeze=False, sharex=True
        )
        for ax, k in zip(axes[:, 0], ks, strict=True):
            rows = [p for p in results if (p["form"], p["ids_per_row"]) == (form, k)]
            for column in columns:
                xs = [p["vocab"] for p in rows if column in p["min_ms"]]
                ys = [p["min_ms"][column] for p in rows if column in p["min_ms"]]
                if xs:
                    ax.plot(
                        xs,
                        ys,
                        marker="o",
                        ms=3,
                        label=column,
                        **_plot_style.style(column),
                    )
            both = [p for p in rows if {"gather", "matmul"} <= set(p["min_ms"])]
            if len(both) >= 2:
                v = crossover_from_times(
                    [p["vocab"] for p in both],
                    [p["min_ms"]["gather"] for p in both],
                    [p["min_ms"]["matmul"] for p in both],
                )
                ax.axvline(v, color="grey", ls=":", lw=1)
                ax.annotate(
                    f"crossover\nV≈{v:,.0f}",
                    (v, 0.97),
                    xycoords=("data", "axes fraction"),
                    va="top",
                    color="grey",
                )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_ylabel("forward + backward (ms, min)")
            ids = f"{k} id{'' if k == 1 else 's'} per row"
            name = {"single": "single ids", "multi_hot": f"multi-hot rows, {ids}"}
            name = name.get(form, f"{form} bags, {ids}")
            ax.set_title(name)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(loc="upper left")
        axes[-1, 0].set_xlabel("vocabulary size V")
        fig.tight_layout()
        path = os.path.join(out_dir, f"lookup_{form}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def replot(folder):
    """Draws the plots again from `folder`/results.json (no timing)."""
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)["points"]
    columns = [c for c in COLUMNS if any(c in p["min_ms"] for p in results)]
    return plot(results, folder, columns)


QUICK = {
    "vocabs": [4, 64, 1024, 65536],
    "ids_per_row": [1, 64],
    "rounds": 5,
    "round_ms": 3.0,
}


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m keras_lookup.bench",
        description=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Timings depend on the machine and its load; compare columns "
        "within one run only.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a small grid (V in {QUICK['vocabs']}, ids per row "
        f"{QUICK['ids_per_row']}, {QUICK['rounds']} rounds); under 2 minutes "
        "on 2 cores",
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="measure the crossovers `strategy='auto'` uses on this device and "
        "store them (see keras_lookup.calibrate); --quick scans fewer points",
    )
    parser.add_argument("--out", default="bench_results", help="output directory")
    parser.add_argument(
        "--forms",
        nargs="+",
        choices=FORMS,
        default=list(DEFAULT_FORMS),
        help="input forms (default: %(default)s)",
    )
    parser.add_argument(
        "--vocabs",
        nargs="+",
        type=int,
        help="vocabulary sizes (default: powers of 2 from 2 to 2**20)",
    )
    parser.add_argument(
        "--ids-per-row", nargs="+", type=int, default=[1, 8, 64], help="bag sizes"
    )
    parser.add_argument(
        "--columns",
        nargs="+",
        choices=COLUMNS,
        default=list(COLUMNS),
        help="what to time",
    )
    parser.add_argument("--rows", type=int, default=256, help="rows (bags) per batch")
    parser.add_argument(
        "--single-ids", type=int, default=4096, help="ids per batch for single ids"
    )
    parser.add_argument("--dim", type=int, default=64, help="output width D")
    parser.add_argument("--dtype", default="float32", help="compute dtype")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 21)")
    parser.add_argument(
        "--round-ms",
        type=float,
        help="calls per column per round fill about this long (default 5)",
    )
    parser.add_argument(
        "--max-one-hot",
        type=int,
        default=2**25,
        help="skip one-hot columns when rows x V exceeds this (memory, time)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random ids")
    parser.add_argument(
        "--no-plot", action="store_true", help="skip the PNG plots (no matplotlib)"
    )
    parser.add_argument(
        "--replot",
        metavar="DIR",
        help="draw the plots again from DIR/results.json, timing nothing",
    )
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.replot:
        written = replot(args.replot)
        print(
            f"wrote {', '.join(os.path.basename(p) for p in written)} to {args.replot}"
        )
        return written
    quick = QUICK if args.quick else {}
    settings = Settings(
        dim=args.dim,
        rows=args.rows,
        single_ids=args.single_ids,
        dtype=args.dtype,
        rounds=args.rounds or quick.get("rounds", 21),
        round_ms=args.round_ms or quick.get("round_ms", 5.0),
        max_one_hot=args.max_one_hot,
        seed=args.seed,
    )
    if args.calibrate:
        record = calibration.calibrate(
            dtype=args.dtype,
            dim=args.dim,
            rows=args.rows,
            single_ids=args.single_ids,
            ids_per_row=args.ids_per_row,
            vocabs=args.vocabs
            or ([2**i for i in range(1, 14, 2)] if args.quick else None),
            rounds=args.rounds or (3 if args.quick else 7),
        )
        print(json.dumps(record["crossover"], indent=1))
        print(f"wrote {record['path']}")
        return record
    vocabs = args.vocabs or quick.get("vocabs") or [2**i for i in range(1, 21)]
    ids_per_row = quick.get("ids_per_row", args.ids_per_row)
    start = time.perf_counter()
    results = run(args.forms, vocabs, ids_per_row, settings, args.columns)
    elapsed = time.perf_counter() - start
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    env = {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": calibration.device_kind(),
        "calibration": calibration.load_calibration(args.dtype).source,
        "load_average_1min_after": load,
        "seconds": round(elapsed, 1),
        "command": "python -m keras_lookup.bench " + " ".join(argv or sys.argv[1:]),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(
            {"settings": settings.as_dict(), "environment": env, "points": results},
            f,
            indent=1,
        )
    report = table(results, args.columns)
    worst = worst_auto(results)
    scored = [p for p in results if p.get("auto_over_fastest")]
    within = sum(p["auto_over_fastest"] <= 1.1 for p in scored)
    summary = (
        f"Forward + backward, D={settings.dim}, {settings.dtype}, minimum of "
        f"{settings.rounds} interleaved rounds; TF {tf.__version__}, Keras "
        f"{keras.__version__}, {env['device']}, {os.cpu_count()} cores, "
        f"{elapsed:.0f} s. auto: {env['calibration']}."
    )
    if worst is not None:
        summary += (
            f"\nWorst auto point: {worst['form']} k={worst['ids_per_row']} "
            f"V={worst['vocab']:,}: auto {worst['min_ms']['auto']:.3f} ms, "
            f"fastest of all columns ({worst['fastest']}) "
            f"{worst['min_ms'][worst['fastest']]:.3f} ms, "
            f"ratio {worst['auto_over_fastest']:.3f}; auto within 10% of the "
            f"fastest at {within} of {len(scored)} points."
        )
        same = same_graph_line(results)
        if same:
            summary += "\n" + same
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(
            f"# Lookup vs matmul\n\n{summary}\n\n"
            f"Command: `{env['command']}`\n{report}\n"
        )
    print(report)
    print("\n" + summary)
    written = ["results.json", "results.md"]
    plots = not args.no_plot and _has_matplotlib()
    if plots:
        written += [os.path.basename(p) for p in plot(results, args.out, args.columns)]
    print(f"wrote {', '.join(written)} to {args.out}")
    if not args.no_plot and not plots:
        print(NO_MATPLOTLIB)
    return results


NO_MATPLOTLIB = (
    "No plots: matplotlib is not installed. For the plots too, "
    'pip install "keras_lookup[examples]" (or pip install matplotlib) and run '
    "this again; --no-plot skips them without this note."
)


def _has_matplotlib():
    # The core install has no matplotlib: the tables are the result, the
    # plots an extra.
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
