"""How close `keras_lookup.distribute.fit` on a cluster comes to one process.

Runs the two distributed examples as a user would, beside their
single-process references, and compares every array they save:

- `examples/multi_worker.py --local-workers 2` (MultiWorkerMirroredStrategy,
  2 processes on 127.0.0.1) against `--single-process`, in `--quick` mode and
  in the full mode (the example's defaults): the two workers against each
  other, and each against one process (weights and optimizer slots);
- `examples/parameter_server.py --local-cluster 1,2 --quick` (1 worker, 2 ps
  tasks; steps in order) against `--single-process --quick`: every array
  `save_state` wrote;
- in one process (two logical CPUs), `distribute.fit` against Keras's
  `model.fit`, without a strategy and under `MirroredStrategy`.

The tests assert bounds on the same comparisons (`tests/test_multi_worker.py`,
`tests/test_parameter_server_example.py`, `tests/test_distribute.py`); this
script records the values they take here, for the guides to quote.

    python benchmarks/distribute_equality.py

writes `benchmarks/results/distribute_equality.md` and `.json` (about 3
minutes on 2 cores; `--skip-full` leaves out the full-mode pair, `--repeats`
sets how many times each multi_worker.py pair runs).
"""

import argparse
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "distribute_equality.md"
# "worker 0: trained steps 1-100 in 6.7 s, last epoch's loss 0.4, held-out
# accuracy 84.9%"
TRAINED = re.compile(
    r"worker (\d+): trained steps \d+-\d+ in ([\d.]+) s, .*held-out accuracy "
    r"([\d.]+)%"
)
# "Summary: 2 local worker(s), embedding model, 100 steps of 32 examples: ..."
SUMMARY = re.compile(r"Summary: .*?(\d+) steps of (\d+) examples")
# "Table: 262,144 rows x 16 float32 = 0.02 GiB in 2 part(s): ..."
TABLE = re.compile(r"Table: ([\d,]+) rows x (\d+) (\w+) = .* in (\d+) part")
SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")

ONE_PROCESS = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)
import keras, numpy as np
import keras_lookup

rng = np.random.default_rng(0)
X = rng.integers(0, 1000, (512, 8))
Y = (X.mean(axis=1) > 500).astype("int32")


def build(strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = keras.Sequential([
            keras.Input((8,), dtype="int32"),
            keras_lookup.Embedding(1000, 16, combiner="mean"),
            keras.layers.Dense(2),
        ])
        model.compile(
            keras_lookup.optimizers.LazyAdam(0.01),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    return model


result = {}
for name, strategy in (
    ("no strategy", tf.distribute.get_strategy),
    ("MirroredStrategy (2 CPUs)", lambda: tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"])),
):
    data = tf.data.Dataset.from_tensor_slices((X, Y)).batch(32)
    reference = build(strategy())
    expected = reference.fit(data, epochs=3, validation_data=data, verbose=0)
    model = build(strategy())
    history = keras_lookup.distribute.fit(
        model, data, epochs=3, validation_data=data, verbose=0
    )
    result[name] = {
        "weights": max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(model.get_weights(), reference.get_weights())
        ),
        "history": max(
            abs(a - b)
            for key in expected.history
            for a, b in zip(history.history[key], expected.history[key])
        ),
        "steps": 3 * 16,
    }
print("RESULT " + json.dumps(result))
"""


def run(args, env=None):
    result = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        env=dict(os.environ, KERAS_BACKEND="tensorflow", **(env or {})),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        sys.exit(f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def max_abs_diff(a, b):
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    return max(float(np.max(np.abs(a[k] - b[k]), initial=0.0)) for k in a)


def npz(folder, worker):
    with np.load(folder / f"worker-{worker}.npz") as data:
        return dict(data)


def saved_state(folder):
    with open(folder / "manifest.json") as f:
        entries = json.load(f)["variables"]
    return {e["path"]: np.load(folder / e["file"]) for e in entries}


def trained(stdout):
    """{worker: (seconds, accuracy %)} from the example's output."""
    return {int(w): (float(s), float(a)) for w, s, a in TRAINED.findall(stdout)}


def difference(value):
    """`0.0`, or `1.8·10⁻⁷`: as the guides write it."""
    if value == 0:
        return "0.0"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}·10{str(int(exponent)).translate(SUPERSCRIPT)}"


def seconds(values):
    """`7.7 s (6.9–20.7 s)`: the median of the runs and their range."""
    text = f"{float(np.median(values)):.1f} s"
    if len(values) > 1:
        text += f" ({min(values):.1f}–{max(values):.1f} s)"
    return text


def multi_worker(folder, mode, repeats):
    """Both runs `repeats` times, in turns: the arrays of every repeat are
    compared (they are the same each time), the training times vary."""
    flags = ["--quick"] if mode == "quick" else []
    example = "examples/multi_worker.py"
    record = {
        "command": f"python {example} --local-workers 2 {' '.join(flags)} --out A "
        f"/ --single-process {' '.join(flags)} --out B".replace("  ", " "),
        "workers_apart": 0.0,
        "from_one_process": 0.0,
        "seconds_two": [],
        "seconds_one": [],
    }
    for repeat in range(repeats):
        two = folder / f"mw-{mode}-2-{repeat}"
        one = folder / f"mw-{mode}-1-{repeat}"
        out2 = run([example, "--local-workers", 2, *flags, "--out", two])
        out1 = run([example, "--single-process", *flags, "--out", one])
        workers = [npz(two, 0), npz(two, 1)]
        reference = npz(one, 0)
        times2, times1 = trained(out2), trained(out1)
        assert sorted(times2) == [0, 1] and sorted(times1) == [0], (times2, times1)
        steps, batch = map(int, SUMMARY.search(out1).groups())
        record["workers_apart"] = max(
            record["workers_apart"], max_abs_diff(workers[0], workers[1])
        )
        record["from_one_process"] = max(
            record["from_one_process"],
            max(max_abs_diff(w, reference) for w in workers),
        )
        # The slower worker's time: the run ends when both have.
        record["seconds_two"].append(max(s for s, _ in times2.values()))
        record["seconds_one"].append(times1[0][0])
        record.update(
            accuracy_two=times2[0][1],
            accuracy_one=times1[0][1],
            arrays=len(reference),
            steps=steps,
            batch_size=batch,
        )
        print(f"  {mode} run {repeat + 1}/{repeats}: {record}", flush=True)
    return record


def parameter_servers(folder):
    cluster, one = folder / "ps-cluster", folder / "ps-one"
    example = "examples/parameter_server.py"
    out = run([example, "--local-cluster", "1,2", "--quick", "--out", cluster])
    run([example, "--single-process", "--quick", "--out", one])
    rows, dim, dtype, parts = TABLE.search(out).groups()
    a, b = saved_state(cluster), saved_state(one)
    summaries = [json.loads((f / "summary.json").read_text()) for f in (cluster, one)]
    return {
        "command": f"python {example} --local-cluster 1,2 --quick --out A "
        "/ --single-process --quick --out B",
        "from_one_process": max_abs_diff(a, b),
        "arrays": len(a),
        "accuracy_cluster": 100 * summaries[0]["accuracy"],
        "accuracy_one": 100 * summaries[1]["accuracy"],
        "baseline": 100 * summaries[0]["baseline"],
        "steps": summaries[0]["steps"],
        "table": [int(rows.replace(",", "")), int(dim)],
        "table_dtype": dtype,
        "parts": int(parts),
    }


def one_process():
    out = run(["-c", ONE_PROCESS])
    return json.loads(out.split("RESULT ", 1)[1])


def render(records):
    import keras
    import tensorflow as tf

    lines = [
        "# `keras_lookup.distribute.fit` on a cluster against one process",
        "",
        "Command: `python benchmarks/distribute_equality.py` "
        f"({platform.machine()}, {os.cpu_count()} CPUs, TensorFlow "
        f"{tf.__version__}, Keras {keras.__version__}). Each difference is the "
        "largest absolute difference over every saved array (weights, "
        "optimizer slots, iteration count); the tests assert bounds on the same "
        "comparisons (`tests/test_multi_worker.py`, "
        "`tests/test_parameter_server_example.py`, `tests/test_distribute.py`).",
        "",
        "## MultiWorkerMirroredStrategy: `examples/multi_worker.py`",
        "",
        "| mode | steps of | 2 workers apart | 2 workers vs 1 process "
        "| held-out accuracy (2 workers / 1 process) "
        "| training time (2 workers / 1 process) | arrays |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in ("quick", "full"):
        r = records.get(f"multi_worker_{mode}")
        if r:
            lines.append(
                f"| {'`--quick`' if mode == 'quick' else 'full (the defaults)'} "
                f"| {r['steps']} × {r['batch_size']} "
                f"| {difference(r['workers_apart'])} "
                f"| {difference(r['from_one_process'])} "
                f"| {r['accuracy_two']:.1f}% / {r['accuracy_one']:.1f}% "
                f"| {seconds(r['seconds_two'])} / {seconds(r['seconds_one'])} "
                f"| {r['arrays']} |"
            )
    r = records["parameter_servers"]
    rows, dim = r["table"]
    lines += [
        "",
        "Training time: the example's own timing of `fit` (validation "
        "included), the slower worker's; the median of "
        f"{len(records['multi_worker_quick']['seconds_one'])} runs of each "
        "command, in turns (range in brackets); on one machine every step of "
        "two workers exchanges gradients over gRPC. Commands: "
        + "; ".join(
            f"`{records[k]['command']}`"
            for k in ("multi_worker_quick", "multi_worker_full")
            if k in records
        )
        + ". Both examples hold out the same State of the Union paragraphs "
        f"(era task, seed 0): majority-class baseline {r['baseline']:.1f}% "
        "(below).",
        "",
        "## ParameterServerStrategy, one worker: `examples/parameter_server.py`",
        "",
        "| run | table | cluster vs 1 process | held-out accuracy "
        "(cluster / 1 process) | majority-class baseline | steps | arrays |",
        "|---|---|---|---|---|---|---|",
        f"| 1 worker, 2 ps, `--quick` | {rows:,} × {dim} {r['table_dtype']} "
        f"in {r['parts']} parts "
        f"| {difference(r['from_one_process'])} "
        f"| {r['accuracy_cluster']:.1f}% / {r['accuracy_one']:.1f}% "
        f"| {r['baseline']:.1f}% | {r['steps']} | {r['arrays']} |",
        "",
        f"Command: `{r['command']}`.",
        "",
        "## One process: `distribute.fit` against `model.fit`",
        "",
        "| strategy | weights | History |",
        "|---|---|---|",
    ]
    for name, r in records["one_process"].items():
        lines.append(
            f"| {name} | {difference(r['weights'])} | {difference(r['history'])} |"
        )
    lines += [
        "",
        'A `keras_lookup.Embedding(1000, 16, combiner="mean")` → `Dense(2)` '
        "model, `LazyAdam(0.01)`, 3 epochs of 16 batches of 32 with validation, "
        "trained by each from the same seed.",
    ]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--skip-full", action="store_true", help="leave out the full-mode pair"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of each multi_worker.py pair (the times vary; default 3)",
    )
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    records = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        records["one_process"] = one_process()
        print("one process:", records["one_process"], flush=True)
        records["multi_worker_quick"] = multi_worker(folder, "quick", args.repeats)
        print("multi_worker --quick:", records["multi_worker_quick"], flush=True)
        if not args.skip_full:
            records["multi_worker_full"] = multi_worker(folder, "full", args.repeats)
            print("multi_worker full:", records["multi_worker_full"], flush=True)
        records["parameter_servers"] = parameter_servers(folder)
        print("parameter_server:", records["parameter_servers"], flush=True)
    out = pathlib.Path(args.out)
    out.write_text(render(records))
    out.with_suffix(".json").write_text(json.dumps(records, indent=1) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
