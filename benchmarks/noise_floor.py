"""How far apart `bench` reads the very same graph: its noise floor here.

`python -m keras_lookup.bench` names auto's ratio to the fastest of five
columns. Where auto runs the same graph as one of them, any ratio above 1.00
is the machine, not the code. This script times `--copies` identical copies of
our `gather` column (same layer class, same batch, each a layer of its own)
side by side with the bench's own timer (`time_interleaved`, fastest call per
round, minimum over rounds), `--repeats` times per point, and reports:

- `copy 0 / fastest other`: the first copy's time over the fastest of the
  others, which is what `auto / fastest` reads when every column runs auto's
  graph (the bench's five columns run two to four different graphs, so it sits
  between this and 1.00);
- `slowest / fastest`: the spread of the identical copies.

Writes `benchmarks/results/noise_floor.md`.

Usage:

    python benchmarks/noise_floor.py                # 5 copies, 20 repeats, 21 rounds
    python benchmarks/noise_floor.py --rounds 41
"""

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_lookup import _timing  # noqa: E402

# (form, ids per row, V): points where the bench's runs read auto beyond 10%
# of our own column running the same graph, from tiny to 2**20-row tables.
POINTS = [
    ("single", 1, 16),
    ("padded", 8, 256),
    ("padded", 64, 4096),
    ("ragged", 8, 8192),
    ("padded", 64, 2**20),
]
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def measure(form, k, vocab, copies, repeats, settings):
    rng = np.random.default_rng(settings.seed)
    inputs = _timing.make_inputs(form, vocab, k, settings, rng)
    steps = {
        f"copy {i}": _timing.make_column("gather", form, vocab, k, settings, inputs)[0]
        for i in range(copies)
    }
    first, spread = [], []
    for repeat in range(repeats):
        times = _timing.time_interleaved(
            steps, settings.rounds, settings.round_ms, seed=repeat
        )
        best = [min(t) for t in times.values()]
        first.append(best[0] / min(best[1:]))
        spread.append(max(best) / min(best))
    return {"form": form, "k": k, "vocab": vocab, "first": first, "spread": spread}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=_timing.Settings.rounds)
    parser.add_argument("--out", default=os.path.join(RESULTS, "noise_floor.md"))
    args = parser.parse_args(argv)
    settings = _timing.Settings(rounds=args.rounds)
    start = time.perf_counter()
    rows = []
    for n, (form, k, vocab) in enumerate(POINTS, 1):
        point = measure(form, k, vocab, args.copies, args.repeats, settings)
        rows.append(point)
        print(
            f"[{n}/{len(POINTS)}] {form} k={k} V={vocab:,}: copy 0 / fastest other "
            + " ".join(f"{r:.2f}" for r in point["first"]),
            flush=True,
        )
    firsts = [r for p in rows for r in p["first"]]
    beyond = sum(r > 1.1 for r in firsts)
    lines = [
        "# The bench's noise floor: identical graphs timed side by side",
        "",
        f"`python benchmarks/noise_floor.py --rounds {args.rounds}`: "
        f"{args.copies} copies of our `gather` column, {args.repeats} repeats "
        f"per point, {args.rounds} interleaved rounds (the bench's timer).",
        "",
        "| point | copy 0 / fastest other, per repeat | slowest / fastest copy, "
        "per repeat |",
        "|---|---|---|",
    ]
    for p in rows:
        lines.append(
            f"| {p['form']} k={p['k']} V={p['vocab']:,} | "
            + " ".join(f"{r:.2f}" for r in p["first"])
            + " | "
            + " ".join(f"{r:.2f}" for r in p["spread"])
            + " |"
        )
    lines += [
        "",
        f"Copy 0 beyond 10% of the fastest other copy: {beyond} of {len(firsts)} "
        f"measurements (worst {max(firsts):.2f}); median "
        f"{float(np.median(firsts)):.3f}.",
        "",
        f"TF {tf.__version__}, {platform.machine()}, {os.cpu_count()} cores, "
        f"{time.perf_counter() - start:.0f} s, load (1 min) after "
        f"{os.getloadavg()[0]:.1f}.",
    ]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
