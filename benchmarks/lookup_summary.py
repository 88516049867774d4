"""What several runs of the lookup benchmark say together.

Reads the tables that `python -m keras_lookup.bench` wrote (one `.md` per run)
and writes `benchmarks/results/lookup/summary.md`: per run, auto against the
fastest of the five columns and against our column of the strategy it ran
(the same graph where its choice is static), then, pooled over the runs, what
the per-batch decision costs and how our columns compare with Keras's. The
per-batch points are those whose vocabulary lies between the smallest and the
largest shipped crossover of their form (`keras_lookup._cost_model`).

    python benchmarks/lookup_summary.py            # the runs kept in results/
"""

import argparse
import os
import re
import statistics

from keras_lookup import _cost_model

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
GRID_RUNS = ["lookup/runs/run1.md", "lookup/runs/run2.md", "lookup/results.md"]
MULTI_HOT_RUNS = [
    "lookup_multi_hot/runs/run1.md",
    "lookup_multi_hot/runs/run2.md",
    "lookup_multi_hot/results.md",
]
HEADING = re.compile(r"^### (single ids|(padded|ragged|multi-hot) \w+ of (\d+) ids)")
COLUMNS = ("keras Embedding", "keras Dense", "gather", "matmul", "auto")


def read_run(path):
    """`[{form, k, V, <column>: ms, ran}]` from one run's Markdown tables."""
    points, form, k, header = [], None, None, []
    with open(path) as f:
        for line in f:
            heading = HEADING.match(line)
            if heading:
                form = "single" if heading[1] == "single ids" else heading[2]
                form = "multi_hot" if form == "multi-hot" else form
                k = int(heading[3]) if heading[3] else 1
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0] == "V":
                header = [c.removesuffix(" ms") for c in cells]
            if form is None or not cells[0].replace(",", "").isdigit():
                continue
            row = dict(zip(header, cells, strict=True))
            point = {"form": form, "k": k, "V": int(cells[0].replace(",", ""))}
            for name in COLUMNS:
                cell = row.get(name, "—")
                point[name] = float(cell) if cell not in ("—", "") else None
            point["ran"] = row["auto ran"]
            points.append(point)
    return points


def per_batch(point):
    table = _cost_model.CPU_DEFAULTS.get(point["form"])
    if point["form"] not in ("ragged", "multi_hot"):
        return False
    return min(table.values()) < point["V"] <= max(table.values())


def ratios(points):
    """auto over the fastest column, and over our column of what it ran."""
    out = []
    for p in points:
        fastest = min(p[c] for c in COLUMNS if p[c] is not None)
        out.append((p, p["auto"] / fastest, p["auto"] / p[p["ran"]]))
    return out


def quantiles(values):
    values = sorted(values)
    p90 = values[min(len(values) - 1, round(0.9 * (len(values) - 1)))]
    return f"median {statistics.median(values):.2f}, 90th percentile {p90:.2f}"


def section(title, paths):
    runs = [read_run(os.path.join(RESULTS, p)) for p in paths]
    lines = [f"## {title}", ""]
    lines += [
        "| run | file | auto within 10% of the fastest column | worst | "
        "same graph: within 10% | worst |",
        "|---|---|---|---|---|---|",
    ]
    pooled, beyond = [], 0
    for index, (path, points) in enumerate(zip(paths, runs, strict=True), 1):
        pooled += ratios(points)
        # The bench's own summary lines (from its unrounded timings).
        with open(os.path.join(RESULTS, path)) as f:
            head = f.read(3000)
        within, total = map(int, re.search(r"fastest at (\d+) of (\d+)", head).groups())
        worst = float(re.search(r"ratio ([\d.]+)", head)[1])
        same, same_worst = re.search(
            r"within 10% at (\d+) of \d+ points, worst ([\d.]+)", head
        ).groups()
        beyond += total - within
        lines.append(
            f"| {index} | [`{path}`]({os.path.relpath(path, 'lookup')}) | "
            f"{within} of {total} | {worst:.2f} | {same} of {total} | "
            f"{float(same_worst):.2f} |"
        )
    static = [r[2] for r in pooled if not per_batch(r[0])]
    batch = [r[2] for r in pooled if per_batch(r[0])]
    lines += [
        "",
        f"Pooled over the {len(runs)} runs ({len(pooled)} points; beyond 10% of "
        f"the fastest column: {beyond}):",
        "",
        f"- auto over our column of the strategy it ran, at the {len(static)} "
        f"points decided once: {quantiles(static)}.",
    ]
    if batch:
        lines.append(
            f"- the same at the {len(batch)} points decided per batch: "
            f"{quantiles(batch)} (what the per-batch `tf.cond` costs)."
        )
    both = [
        max(p["gather"], p["matmul"]) / min(p["gather"], p["matmul"])
        for p, _, _ in pooled
        if p["gather"] and p["matmul"] and p["ran"] != _faster(p)
    ]
    lines.append(
        f"- points where auto ran the slower of our two strategies: {len(both)}"
        + (f", by at most {max(both):.2f}×." if both else ".")
    )
    for form, label in (("single", "single ids"), ("padded", "dense bags")):
        values = [
            p["gather"] / p["keras Embedding"]
            for p, _, _ in pooled
            if p["form"] == form and p["keras Embedding"]
        ]
        if values:
            lines.append(
                f"- our gather over `keras.layers.Embedding` (+ a sum), {label}: "
                f"{quantiles(values)}."
            )
    values = [
        p["keras Embedding"] / p["gather"]
        for p, _, _ in pooled
        if p["form"] == "ragged" and p["keras Embedding"]
    ]
    if values:
        lines.append(
            "- `keras.layers.Embedding` over our gather, ragged bags: "
            f"{min(values):.2f}–{max(values):.2f}×."
        )
    values = [
        p["matmul"] / p["keras Dense"]
        for p, _, _ in pooled
        if p["form"] != "single" and p["keras Dense"] and p["V"] <= 4096
    ]
    lines.append(
        "- our matmul over `keras.layers.Dense` on the same counts, bags up to "
        f"V = 4,096: {quantiles(values)}."
    )
    return lines


def _faster(point):
    return "gather" if point["gather"] <= point["matmul"] else "matmul"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(RESULTS, "lookup", "summary.md"))
    args = parser.parse_args()
    lines = [
        "# Lookup vs matmul: what the runs say together",
        "",
        "Command: `python benchmarks/lookup_summary.py`, from the runs of "
        "`python -m keras_lookup.bench` kept under `benchmarks/results/` (each "
        'file names its own command). "same graph": auto over our column of '
        "the strategy it ran, the very graph auto runs where its choice is "
        "static, so it reads the machine's noise.",
        "",
        *section("Single ids, dense and ragged bags (V = 2 … 2²⁰)", GRID_RUNS),
        "",
        *section("Dense multi-hot rows against `keras.layers.Dense`", MULTI_HOT_RUNS),
        "",
    ]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
