"""The examples run end to end in their smallest mode, and fail clearly on bad data.

Each example runs as a subprocess, as a user would run it. Errors about the
data are raised before TensorFlow is imported, so those cases take a second.
"""

import csv
import importlib
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from test_saved_models import check_saved_model
from tf_warnings import tf_warnings

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
SCRIPTS = (
    "text_classification.py",
    "language_model.py",
    "lookup_vs_matmul.py",
    "dynamic_vocabulary.py",
)
NUMBER = r"(\d+(?:\.\d+)?)"
# "trained 5 epochs (stopped early: no improvement for 2 epochs after epoch
# 3); kept the weights of epoch 3"
TRAINED = re.compile(
    r"trained (\d+) epochs? \((stopped early|reached the most epochs|fixed by "
    r"--epochs)[^)]*\)(?:; kept the weights of epoch (\d+))?"
)
# What TensorFlow writes at start-up when nothing silences it.
STARTUP_LOG = re.compile(r"absl::InitializeLog|^[IWE]\d{4} |cuInit|oneDNN", re.M)


def run(script, *args, cwd, timeout=240, user_env=False):
    """Runs an example; with `user_env`, in the environment a user would have."""
    # TensorFlow's full log, so that `assert_ok` sees any warning.
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="0")
    if user_env:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("TF_", "KERAS"))
        }
    return subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, script), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Summary" in result.stdout, result.stdout[-3000:]
    assert not tf_warnings(result.stderr), tf_warnings(result.stderr)


def assert_fails(result, *fragments):
    """Exit status 1 or 2 and an error message holding every fragment."""
    assert result.returncode in (1, 2), result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def toy_rows(count=240):
    """Two separable classes of short texts."""
    words = {"sports": "goal match team score", "weather": "rain cloud wind sun"}
    rows = []
    for i in range(count):
        label = "sports" if i % 2 else "weather"
        vocab = words[label].split()
        text = " ".join(vocab[(i + k) % 4] for k in range(6)) + f" item{i % 7}"
        rows.append((text, label, f"{label}{i // 8}"))
    return rows


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, tmp_path):
    result = run(script, "--help", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    assert "--quick" in result.stdout


def trained(stdout):
    """`(epochs run, how it stopped, best epoch or None)` per model in `stdout`."""
    runs = [
        (int(ran), how, int(best) if best else None)
        for ran, how, best in TRAINED.findall(stdout)
    ]
    assert runs, stdout
    return runs


def test_text_classification_smoke_saves_working_models(tmp_path):
    save_dir = tmp_path / "models"
    # As a user runs it, with no TensorFlow settings of their own: nothing
    # from TensorFlow's start-up reaches the terminal.
    result = run(
        "text_classification.py",
        "--smoke",
        "--quiet",
        "--save-dir",
        save_dir,
        cwd=tmp_path,
        user_env=True,
    )
    assert_ok(result)
    assert not STARTUP_LOG.search(result.stderr), result.stderr
    accuracies = re.findall(rf"test accuracy {NUMBER}%", result.stdout)
    assert len(accuracies) == 3, result.stdout  # the baseline and two models
    for name in ("embedding", "reducer"):
        check_saved_model(save_dir / f"text_classification_era_{name}", tmp_path)


def test_text_classification_on_a_csv(tmp_path):
    path = write_csv(tmp_path / "toy.csv", ["body", "topic", "doc"], toy_rows())
    result = run(
        "text_classification.py",
        "--smoke",
        "--quiet",
        "--data",
        path,
        "--text-column",
        "body",
        "--label-column",
        "topic",
        "--group-column",
        "doc",
        "--max-epochs",
        "30",
        "--learning-rate",
        "0.05",
        cwd=tmp_path,
    )
    assert_ok(result)
    accuracies = [float(a) for a in re.findall(rf"accuracy {NUMBER}%", result.stdout)]
    assert len(accuracies) == 3, result.stdout
    assert min(accuracies[1:]) > accuracies[0], result.stdout
    # The toy classes are separable: validation accuracy reaches its best
    # within a few epochs, and training stops `patience` (2) epochs later.
    for ran, how, best in trained(result.stdout):
        assert how == "stopped early", result.stdout
        assert ran == best + 2 and ran < 30, result.stdout
    assert os.listdir(tmp_path) == ["toy.csv"]  # user data: nothing saved


def test_language_model_smoke(tmp_path):
    result = run("language_model.py", "--smoke", "--quiet", cwd=tmp_path)
    assert_ok(result)
    unigram = float(
        re.search(rf"unigram baseline .*perplexity {NUMBER}", result.stdout)[1]
    )
    bigram = float(
        re.search(rf"bigram baseline .*perplexity {NUMBER}", result.stdout)[1]
    )
    assert bigram < unigram, result.stdout
    assert re.search(rf"language model.*perplexity {NUMBER}", result.stdout)
    assert "Samples" in result.stdout
    [(ran, how, best)] = trained(result.stdout)
    assert 1 <= best <= ran, result.stdout
    assert sorted(os.listdir(tmp_path)) == []  # --smoke saves nothing


def test_language_model_on_a_folder_stops_early(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    sentence = "the quick brown fox jumps over the lazy dog . "
    for i in range(4):
        (folder / f"part{i}.txt").write_text(sentence * 200, encoding="utf-8")
    result = run(
        "language_model.py",
        "--smoke",
        "--quiet",
        "--data",
        folder,
        "--max-epochs",
        "40",
        "--learning-rate",
        "0.05",
        cwd=tmp_path,
    )
    assert_ok(result)
    perplexity = float(
        re.search(rf"language model.*perplexity {NUMBER}", result.stdout)[1]
    )
    assert perplexity < 1.5, result.stdout  # the text is fully predictable
    # The validation loss stops falling by 1e-3 long before 40 epochs.
    [(ran, how, best)] = trained(result.stdout)
    assert how == "stopped early", result.stdout
    assert ran == best + 1 and ran < 40, result.stdout  # smoke patience: 1


def test_epochs_forces_a_fixed_count(tmp_path):
    result = run(
        "language_model.py", "--smoke", "--quiet", "--epochs", "3", cwd=tmp_path
    )
    assert_ok(result)
    assert trained(result.stdout) == [(3, "fixed by --epochs", None)], result.stdout


def language_model_module():
    sys.path.insert(0, EXAMPLES)
    try:
        return importlib.import_module("language_model")
    finally:
        sys.path.remove(EXAMPLES)


def test_bigram_baseline_by_hand():
    lm = language_model_module()
    # Training pairs 2->3 (twice), 3->2, 3->4 over a vocabulary of 5 ids.
    model = lm.bigram_model([2, 3, 2, 3], [3, 2, 3, 4], vocab_size=5, discount=0.75)
    # Continuation probabilities, (distinct predecessors + 1) / (3 distinct
    # pairs + 5 ids): ids 0 and 1 get 1/8, ids 2, 3 and 4 get 2/8.
    expected = {
        (2, 3): 0.71875,  # (2 - .75) / 2 + .75 * 1 / 2 * 2/8: c(2) = 2, T(2) = 1
        (3, 4): 0.3125,  # (1 - .75) / 2 + .75 * 2 / 2 * 2/8: c(3) = 2, T(3) = 2
        (2, 4): 0.09375,  # unseen pair: back-off mass .75 * 1 / 2 times 2/8
        (4, 2): 0.25,  # 4 never precedes anything: continuation 2/8 alone
        (3, 0): 0.09375,  # .75 * 2 / 2 * 1/8: an id never seen gets some mass
    }
    previous, following = np.array(list(expected)).T
    np.testing.assert_allclose(
        model(previous, following), list(expected.values()), rtol=1e-12
    )
    # A distribution over the next id after every id.
    grid = np.arange(5)
    for v in grid:
        total = model(np.full(5, v), grid).sum()
        np.testing.assert_allclose(total, 1.0, rtol=1e-12)
    perplexity = lm.bigram_perplexity(
        [2, 3, 2, 3], [3, 2, 3, 4], previous, following, 5
    )
    by_hand = math.exp(-np.mean(np.log(list(expected.values()))))
    np.testing.assert_allclose(perplexity, by_hand, rtol=1e-12)


def test_lookup_vs_matmul_smoke(tmp_path):
    result = run("lookup_vs_matmul.py", "--smoke", cwd=tmp_path)
    assert_ok(result)
    assert re.search(rf"outputs identical: max \|difference\| {NUMBER}", result.stdout)


def test_dynamic_vocabulary_smoke_writes_its_results(tmp_path):
    result = run(
        "dynamic_vocabulary.py", "--smoke", "--results-dir", "out", cwd=tmp_path
    )
    assert_ok(result)
    scores = re.findall(rf"^  (.+?): accuracy {NUMBER}%", result.stdout, re.M)
    names = [name for name, _ in scores]
    assert names[1:] == ["StringLookup adapted on the early part", "Hashing"]
    assert names[0].startswith("DynamicEmbedding (eviction=lru, min_count=3")
    assert all(0 <= float(score) <= 100 for _, score in scores)
    # 256 rows for a stream of a few thousand distinct words: evictions.
    admitted, evicted = re.search(
        r"first table: ([\d,]+) words admitted, ([\d,]+) evicted", result.stdout
    ).groups()
    assert int(evicted.replace(",", "")) > 0
    assert int(admitted.replace(",", "")) > 256
    written = sorted(os.listdir(tmp_path / "out"))
    assert written == [f"dynamic_vocabulary.{e}" for e in ("json", "md", "png")]
    with open(tmp_path / "out" / "dynamic_vocabulary.json") as f:
        record = json.load(f)
    years = {row["year"] for row in record["speeches"]}
    assert min(years) >= 2017 and 2026 in years  # the later part only
    assert "| 2020s |" in (tmp_path / "out" / "dynamic_vocabulary.md").read_text()


def test_dynamic_vocabulary_refuses_a_split_outside_the_stream(tmp_path):
    result = run(
        "dynamic_vocabulary.py", "--smoke", "--split-year", "1700", cwd=tmp_path
    )
    assert_fails(result, "--split-year 1700 leaves no speeches", "pick a year")


# Bad data: each message names the file and the fix.


def test_csv_missing_column(tmp_path):
    path = write_csv(tmp_path / "data.csv", ["body", "label"], [("some text", "a")])
    result = run("text_classification.py", "--smoke", "--data", path, cwd=tmp_path)
    assert_fails(result, str(path), "no column 'text'", "--text-column", "'body'")


def test_csv_missing_label_column(tmp_path):
    path = write_csv(tmp_path / "data.csv", ["text", "y"], [("some text", "a")])
    result = run(
        "text_classification.py",
        "--smoke",
        "--data",
        path,
        "--label-column",
        "stars",
        cwd=tmp_path,
    )
    assert_fails(result, str(path), "no column 'stars'", "--label-column")


def test_csv_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    result = run("text_classification.py", "--smoke", "--data", path, cwd=tmp_path)
    assert_fails(result, str(path), "is empty")


def test_csv_header_only(tmp_path):
    path = write_csv(tmp_path / "header.csv", ["text", "label"], [])
    result = run("text_classification.py", "--smoke", "--data", path, cwd=tmp_path)
    assert_fails(result, str(path), "no rows")


def test_csv_single_label(tmp_path):
    rows = [(f"text number {i}", "only") for i in range(10)]
    path = write_csv(tmp_path / "one.csv", ["text", "label"], rows)
    result = run("text_classification.py", "--smoke", "--data", path, cwd=tmp_path)
    assert_fails(result, str(path), "single label", "--label-column")


def test_csv_missing_file(tmp_path):
    path = tmp_path / "nowhere.csv"
    result = run("text_classification.py", "--smoke", "--data", path, cwd=tmp_path)
    assert_fails(result, str(path), "does not exist")


def test_unknown_task(tmp_path):
    result = run("text_classification.py", "--smoke", "--task", "topic", cwd=tmp_path)
    assert_fails(result, "--task", "invalid choice: 'topic'", "'era'", "'party'")


@pytest.mark.parametrize("case", ["missing", "file", "no_txt", "empty", "one_file"])
def test_language_model_bad_folder(case, tmp_path):
    folder = tmp_path / "texts"
    expected = {
        "missing": "does not exist",
        "file": "takes a folder of .txt files",
        "no_txt": "has no .txt files",
        "empty": "is empty",
        "one_file": "at least two",
    }[case]
    if case == "file":
        folder.write_text("some text")
    elif case != "missing":
        folder.mkdir()
        if case == "no_txt":
            (folder / "notes.md").write_text("some text")
        elif case == "empty":
            (folder / "a.txt").write_text("  \n")
        else:
            (folder / "a.txt").write_text("some text")
    result = run("language_model.py", "--smoke", "--data", folder, cwd=tmp_path)
    assert_fails(result, str(folder), expected)


def test_startup_filter_drops_only_early_info_lines():
    sys.path.insert(0, EXAMPLES)
    try:
        startup = importlib.import_module("_startup")
    finally:
        sys.path.remove(EXAMPLES)
    # Lines TensorFlow 2.21 writes on import, before absl logging is set up.
    dropped = [
        "WARNING: All log messages before absl::InitializeLog() is called are "
        "written to STDERR\n",
        "I0000 00:00:1795753574.914797    4212 port.cc:153] oneDNN custom "
        "operations are on.\n",
        "I0000 00:00:1795753574.915055    4212 cudart_stub.cc:31] Could not find "
        "cuda drivers on your machine, GPU will not be used.\n",
        "To enable the following instructions: AVX2 FMA, in other operations, "
        "rebuild TensorFlow with the appropriate compiler flags.\n",
    ]
    kept = [
        "E0000 00:00:1795753576.779999    4212 cuda_platform.cc:52] failed call "
        "to cuInit\n",
        "W0000 00:00:1795753576.779999    4212 some.cc:1] a warning\n",
        "/path/keras/__init__.py:3: UserWarning: something the user should see\n",
        "Traceback (most recent call last):\n",
    ]
    assert all(startup._early_info(line) for line in dropped)
    assert not any(startup._early_info(line) for line in kept)
