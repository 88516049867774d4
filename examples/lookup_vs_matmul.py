"""A table lookup and a one-hot matmul are the same function: check it, time it.

`W[ids]` (gather a row per id) equals `one_hot(ids) @ W` (multiply a one-hot
matrix with the table). This example gives one random table `W` to every
layer below, runs them on the same batch of ids, checks that the outputs are
identical, and times each forward pass:

- lookup: `keras_lookup.Embedding`, `keras_lookup.DimensionReducer(
  strategy="gather")`, and `keras.layers.Embedding` for reference;
- matmul: `keras_lookup.Dense` on a dense one-hot matrix and on a
  `tf.SparseTensor` one (multiplied with `sparse_dense_matmul`, never
  densified), `keras_lookup.DimensionReducer(strategy="matmul")`, and
  `keras.layers.Dense` on the dense one-hot matrix for reference.

Times are medians of repeated calls of a `tf.function`, and include building
the one-hot input from the ids (a model that multiplies has to). Expect the
lookups to stay nearly flat as the vocabulary grows while the dense one-hot
matmul grows with batch x vocabulary x dim; on a CPU one-hot matmul only pays
off for tiny vocabularies. The exact numbers depend on the machine.

Usage:

    python examples/lookup_vs_matmul.py --quick
    python examples/lookup_vs_matmul.py --vocab-sizes 16 1000 100000 --repeats 50
"""

import argparse
import time

import _cli
import _startup
import numpy as np

MODES = {
    "full": {"vocab_sizes": [16, 1000, 10000, 100000], "repeats": 30},
    "quick": {"vocab_sizes": [16, 1000, 10000], "repeats": 10},
    "smoke": {"vocab_sizes": [16, 256], "repeats": 3},
}
# Dense one-hot inputs beyond this many elements (1.6 GB of float32) are
# skipped rather than exhausting memory.
MAX_ONE_HOT_ELEMENTS = 4 * 10**8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=(
            "Check that keras_lookup's Embedding, Dense (on dense and sparse "
            "one-hot input) and DimensionReducer (gather and matmul) give "
            "identical outputs from the same weights, and time them against "
            "keras.layers.Embedding and keras.layers.Dense."
        ),
    )
    _cli.add_modes(
        parser,
        "three vocabulary sizes, 10 repeats",
        "a tiny run for tests (8 x 16 ids)",
    )
    parser.add_argument(
        "--vocab-sizes",
        type=int,
        nargs="+",
        metavar="V",
        help="vocabulary sizes (default: 16 1000 10000 100000; quick: 16 1000 10000)",
    )
    parser.add_argument(
        "--repeats", type=int, help="timed calls per layer (default: 30; quick: 10)"
    )
    parser.add_argument(
        "--batch", type=int, default=32, help="rows of ids (default: 32)"
    )
    parser.add_argument(
        "--length", type=int, default=128, help="ids per row (default: 128)"
    )
    parser.add_argument(
        "--dim", type=int, default=64, help="output dimension (default: 64)"
    )
    _cli.add_seed(parser)
    args = _cli.apply_mode(parser.parse_args(argv), MODES)
    if args.smoke:
        args.batch, args.length = min(args.batch, 8), min(args.length, 16)
    _cli.check_positive(parser, args, ("repeats", "batch", "length", "dim"))
    if min(args.vocab_sizes) < 1:
        parser.error("--vocab-sizes must be positive integers")
    return args


def candidates(table):
    """`name -> (kind, function of ids)`, every one holding `table`."""
    import keras
    import tensorflow as tf

    import keras_lookup

    vocab, dim = table.shape

    def one_hot(ids):
        return tf.reshape(tf.one_hot(ids, vocab), [-1, vocab])

    def sparse_one_hot(ids):
        flat = tf.reshape(tf.cast(ids, tf.int64), [-1])
        rows = tf.range(tf.size(flat, out_type=tf.int64))
        return tf.SparseTensor(
            tf.stack([rows, flat], axis=1),
            tf.ones_like(flat, tf.float32),
            [tf.size(flat, out_type=tf.int64), vocab],
        )

    def dense(layer_cls):
        layer = layer_cls(dim, use_bias=False)
        layer.build((None, vocab))
        layer.set_weights([table])
        return layer

    def reducer(strategy):
        layer = keras_lookup.DimensionReducer(vocab, dim, strategy=strategy)
        layer.build()
        layer.set_weights([table])
        return layer

    def unflatten(ids, out):
        return tf.reshape(out, tf.concat([tf.shape(ids), [dim]], 0))

    keras_embedding = keras.layers.Embedding(vocab, dim, weights=[table])
    our_embedding = keras_lookup.Embedding(vocab, dim, weights=table)
    keras_dense, our_dense = dense(keras.layers.Dense), dense(keras_lookup.Dense)
    gather, matmul = reducer("gather"), reducer("matmul")
    return {
        "keras.layers.Embedding": ("lookup", keras_embedding),
        "keras_lookup.Embedding": ("lookup", our_embedding),
        'keras_lookup.DimensionReducer("gather")': ("lookup", gather),
        "keras.layers.Dense, dense one-hot": (
            "one-hot",
            lambda ids: unflatten(ids, keras_dense(one_hot(ids))),
        ),
        "keras_lookup.Dense, dense one-hot": (
            "one-hot",
            lambda ids: unflatten(ids, our_dense(one_hot(ids))),
        ),
        "keras_lookup.Dense, tf.SparseTensor one-hot": (
            "sparse",
            lambda ids: unflatten(ids, our_dense(sparse_one_hot(ids))),
        ),
        'keras_lookup.DimensionReducer("matmul")': ("one-hot", matmul),
    }


def median_ms(function, ids, repeats):
    function(ids)  # trace and warm up
    function(ids)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.asarray(function(ids))
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def run_vocab(vocab, args, rng):
    import tensorflow as tf

    table = rng.normal(size=(vocab, args.dim)).astype("float32")
    ids = tf.constant(rng.integers(0, vocab, size=(args.batch, args.length)))
    expected = table[ids.numpy()]
    one_hot_elements = args.batch * args.length * vocab
    rows = []
    for name, (kind, layer) in candidates(table).items():
        if kind == "one-hot" and one_hot_elements > MAX_ONE_HOT_ELEMENTS:
            gigabytes = 4 * one_hot_elements / 1e9
            rows.append((name, None, None, f"skipped: one-hot is {gigabytes:.1f} GB"))
            continue
        function = tf.function(layer)
        difference = float(np.max(np.abs(np.asarray(function(ids)) - expected)))
        rows.append((name, difference, median_ms(function, ids, args.repeats), ""))
    return rows


def print_table(vocab, rows, args):
    times = {name: ms for name, _, ms, _ in rows}
    embedding_ms = times["keras.layers.Embedding"]
    dense_ms = times["keras.layers.Dense, dense one-hot"]
    print(
        f"\nV = {vocab:,}: {args.batch} x {args.length} ids, dim {args.dim}, "
        f"forward pass, median of {args.repeats} calls"
    )
    header = f"  {'layer':<44} {'max |diff|':>10} {'ms':>9} "
    print(header + f"{'/ keras Embedding':>18} {'/ keras Dense':>14}")
    for name, difference, ms, note in rows:
        if ms is None:
            print(f"  {name:<44} {note}")
            continue
        ratio_dense = f"{ms / dense_ms:.2f}x" if dense_ms else "-"
        print(
            f"  {name:<44} {difference:>10.1g} {ms:>9.3f} "
            f"{ms / embedding_ms:>17.2f}x {ratio_dense:>14}"
        )


def main(argv=None):
    args = parse_args(argv)
    keras, _ = _startup.import_keras()

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    results = {}
    for vocab in args.vocab_sizes:
        results[vocab] = run_vocab(vocab, args, rng)
        print_table(vocab, results[vocab], args)

    checked = [d for rows in results.values() for _, d, _, _ in rows if d is not None]
    worst = max(checked)
    print(f"\nSummary ({args.mode} run):")
    verdict = "identical" if worst == 0 else "NOT identical"
    print(
        f"  outputs {verdict}: max |difference| {worst:g} over {len(checked)} "
        f"layer runs at V = {', '.join(f'{v:,}' for v in args.vocab_sizes)}"
    )
    for vocab, rows in results.items():
        times = {name: ms for name, _, ms, _ in rows}
        lookup = times["keras_lookup.Embedding"]
        parts = [f"Embedding {lookup:.2f} ms"]
        for label, name in (
            ("Dense on one-hot", "keras_lookup.Dense, dense one-hot"),
            ("Dense on sparse one-hot", "keras_lookup.Dense, tf.SparseTensor one-hot"),
        ):
            if times[name] is not None:
                parts.append(f"{label} {times[name] / lookup:.1f}x that")
        print(f"  V = {vocab:,}: " + ", ".join(parts))
    if worst != 0:
        raise SystemExit("error: the layers disagree; see the table above")


if __name__ == "__main__":
    main()
