"""`python -m keras_lookup.bench`: runs, reports and plots (timings never
asserted, only that they were taken)."""

import json
import math
import os
import subprocess
import sys

import pytest

from keras_lookup import _cost_model, bench, calibration

TINY = [
    "--vocabs", "4", "64",
    "--ids-per-row", "8",
    "--rounds", "1",
    "--round-ms", "0.1",
    "--rows", "8",
    "--single-ids", "32",
    "--dim", "4",
]  # fmt: skip


def test_bench_module_runs_and_writes_its_outputs(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "keras_lookup.bench", *TINY, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert result.returncode == 0, result.stderr
    assert "Worst auto point" in result.stdout
    assert "Auto against our column of the strategy it ran" in result.stdout
    with open(out / "results.json") as f:
        report = json.load(f)
    points = report["points"]
    # single ids, then padded and ragged bags of 8 ids, for each V.
    assert [(p["form"], p["ids_per_row"], p["vocab"]) for p in points] == [
        (form, k, vocab)
        for form, k in [("single", 1), ("padded", 8), ("ragged", 8)]
        for vocab in (4, 64)
    ]
    for p in points:
        assert set(p["min_ms"]) == set(bench.COLUMNS)
        assert all(p["min_ms"][c] <= p["median_ms"][c] for c in bench.COLUMNS)
        assert p["auto_picked"] in ("gather", "matmul")
        if p["form"] == "single":  # shipped defaults: matmul up to V*
            limit = _cost_model.CPU_DEFAULTS["single"][1]
            assert p["auto_picked"] == ("matmul" if p["vocab"] <= limit else "gather")
        assert p["auto_over_fastest"] > 0
    for form in bench.DEFAULT_FORMS:
        assert (out / f"lookup_{form}.png").stat().st_size > 10_000
    assert "| V | keras Embedding ms" in (out / "results.md").read_text()


def test_help_describes_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--quick", "--calibrate", "--out", "--rows", "--dim"):
        assert option in text


def test_large_vocabularies_skip_the_one_hot_columns(tmp_path):
    args = ["--forms", "ragged", "--vocabs", "64", "--ids-per-row", "2"]
    args += ["--rounds", "1", "--round-ms", "0.1", "--rows", "4", "--dim", "2"]
    results = bench.main([*args, "--max-one-hot", "100", "--no-plot"] + [
        "--out", str(tmp_path)
    ])  # fmt: skip
    point = results[0]
    assert set(point["min_ms"]) == {"keras Embedding", "gather", "auto"}
    # auto is compared with the fastest of every column timed.
    fastest = min(point["min_ms"].values())
    assert point["min_ms"][point["fastest"]] == fastest
    assert point["auto_over_fastest"] == pytest.approx(
        point["min_ms"]["auto"] / fastest
    )


def test_multi_hot_rows_are_timed_against_keras_dense(tmp_path):
    args = ["--forms", "multi_hot", "--vocabs", "4", "64", "--ids-per-row", "8"]
    args += ["--rounds", "1", "--round-ms", "0.1", "--rows", "4", "--dim", "2"]
    results = bench.main([*args, "--max-one-hot", "100", "--no-plot"] + [
        "--out", str(tmp_path)
    ])  # fmt: skip
    # rows x V = 4 x 64 is above --max-one-hot: the input itself is that big.
    assert [p["vocab"] for p in results] == [4]
    point = results[0]
    assert set(point["min_ms"]) == {"keras Dense", "gather", "matmul", "auto"}
    assert point["auto_picked"] in ("gather", "matmul")
    assert point["rows"] == 4 and point["ids"] > 0
    assert "multi-hot rows of 8 ids" in (tmp_path / "results.md").read_text()


def test_calibrate_option_stores_a_calibration():
    record = bench.main(
        ["--calibrate", "--vocabs", "2", "8", "--ids-per-row", "1"]
        + ["--rounds", "1", "--rows", "4", "--single-ids", "16", "--dim", "2"]
    )
    assert os.path.exists(record["path"])
    assert record["path"] == calibration.calibration_path("float32")
    assert set(record["crossover"]["padded"]) == {"1"}


# One slower point followed by a faster one is noise: the crossover lies
# between V=4 (matmul 0.9x gather) and V=8 (4x), where the log-ratio is 0.
BLIP = 4 * 2 ** (-math.log(0.9) / (math.log(4) - math.log(0.9)))


@pytest.mark.parametrize(
    "matmul, expected",
    [
        ([0.5, 1.0, 4.0, 8.0], 2.0),  # level at V=2, then slower
        ([0.5, 0.5, 2.0, 4.0], 2 * 2**0.5),  # halfway in log
        ([2.0, 3.0, 4.0, 5.0], 0.5),  # never won
        ([0.5, 0.5, 0.5, 0.5], 8.0),  # never lost
        ([0.5, 1.1, 0.9, 4.0], BLIP),
    ],
    ids=["level", "halfway", "never_won", "never_lost", "noise_blip"],
)
def test_crossover_from_times(matmul, expected):
    got = bench.crossover_from_times([1, 2, 4, 8], [1.0] * 4, matmul)
    assert got == pytest.approx(expected)


def test_the_same_graph_line_says_per_batch_only_where_auto_decided_so():
    def point(form, reason):
        return {
            "form": form,
            "ids_per_row": 8,
            "vocab": 256,
            "min_ms": {"gather": 1.0, "auto": 1.2},
            "auto_picked": "gather",
            "auto_reason": reason,
        }

    static = point(
        "padded",
        "gather: dense bags of 8 ids per row ... Ragged or sparse bags are "
        "decided per batch: per batch: at vocab_size=256 ...",
    )
    line = bench.same_graph_line([static])
    assert "within 10% at 0 of 1 points, worst 1.200" in line
    assert line.endswith("(gather).")
    per_batch = point("ragged", "per batch: at vocab_size=256 a batch of bags ...")
    assert bench.same_graph_line([per_batch]).endswith("(gather, decided per batch).")
