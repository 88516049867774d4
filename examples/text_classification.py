"""Classify State of the Union paragraphs by era or by party, from raw strings.

Each paragraph of the 237 addresses (1790 onwards) is one example, labelled
with its speech's era (before 1900 / 1900-1959 / 1960 on; `--task era`) or the
president's party (Democratic or Republican, other parties left out; `--task
party`). About 20% of the *speeches* are held out for testing, so no speech has
paragraphs on both sides of the split.

Two end-to-end models take raw strings; `keras.layers.TextVectorization`
(adapted on the training text) turns them into padded token ids, and then:

- (a) `keras_lookup.Embedding(mask_zero=True)` -> `GlobalAveragePooling1D` ->
  `keras_lookup.Dense`: average the word vectors, then classify.
- (b) `keras_lookup.DimensionReducer(strategy="auto", combiner="mean",
  mask_zero=True, activation="relu")` -> `keras_lookup.Dense`: the same padded
  ids read as a bag of words. This is the first layer of a bag-of-words MLP,
  `relu(mean(one_hot(ids)) @ kernel + bias)`, computed by lookup or by matmul,
  whichever `"auto"` picks for this vocabulary and bag size.

Both train with `keras_lookup.optimizers.LazyAdam` (row-sparse Adam) and are
scored against the majority-class baseline on the held-out speeches.

Training stops when the validation accuracy has not improved for `--patience`
epochs, and the weights of the best epoch are kept; `--epochs N` trains exactly
N epochs instead. The most epochs comes from the size of the training data
(about the same number of training steps on any data set, so a small one gets
more passes), and the vocabulary is the training text's, up to `--vocab-size`.

Usage:

    python examples/text_classification.py --quick    # ~15 s on 2 CPU cores
    python examples/text_classification.py            # full run, ~30 s
    python examples/text_classification.py --task party
    python examples/text_classification.py --data reviews.csv \\
        --text-column review --label-column stars

The full run on the State of the Union data saves both models to
`saved_models/` (as `.keras` files that take raw strings, with sidecars
`NAME.inputs.json` and `NAME.expected.npz`); `--quick` and `--smoke` save
nothing unless given `--save-dir`.
"""

import argparse
import os
import time

import _cli
import _data
import _startup
import _training
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SAVE_DIR = os.path.join(REPO, "saved_models")
VARIANTS = {
    "embedding": "(a) Embedding + average pooling",
    "reducer": "(b) DimensionReducer bag of words",
}
# Settings per mode; any of them can be overridden from the command line.
MODES = {
    "full": {
        "vocab_size": 20000,
        "max_length": 200,
        "dim": 32,
        "epochs": None,
        "max_epochs": None,
        "patience": 2,
        "batch_size": 64,
        "learning_rate": 5e-3,
        "max_train": None,
    },
    "quick": {
        "vocab_size": 20000,
        "max_length": 128,
        "dim": 32,
        "epochs": None,
        "max_epochs": None,
        "patience": 2,
        "batch_size": 64,
        "learning_rate": 5e-3,
        "max_train": None,
    },
    "smoke": {
        "vocab_size": 2000,
        "max_length": 64,
        "dim": 16,
        "epochs": None,
        "max_epochs": 1,
        "patience": 2,
        "batch_size": 64,
        "learning_rate": 5e-3,
        "max_train": 1500,
    },
}
# The most epochs is about this many training examples' worth of steps, and
# at least the second number of passes, at most MAX_EPOCHS. The full run makes
# up to 10 passes over the 16,114 training paragraphs of the era task (early
# stopping ends both models by epoch 7 there), and up to 80 over 2,000
# examples; --quick makes up to 3 and 24.
EXAMPLE_BUDGET = {"full": (160_000, 10), "quick": (48_000, 3)}
MAX_EPOCHS = 100
SAMPLES_PER_CLASS = 2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=(
            "Train two keras_lookup text classifiers (an Embedding with average "
            "pooling, and a DimensionReducer over a bag of words) on State of "
            "the Union paragraphs or on your own CSV, and report held-out "
            "accuracy against the majority-class baseline."
        ),
    )
    _cli.add_modes(parser, "fewer epochs and shorter inputs (~15 s on 2 CPU cores)")
    parser.add_argument(
        "--task",
        choices=_data.TASKS,
        default="era",
        help="State of the Union label: the speech's era (3 classes) or the "
        "president's party (Democratic vs Republican); default: era",
    )
    parser.add_argument(
        "--data",
        metavar="CSV",
        help="your own CSV file (header row, one example per row) instead of "
        "the State of the Union paragraphs; --task is then ignored",
    )
    parser.add_argument(
        "--text-column", default="text", help="CSV text column (default: text)"
    )
    parser.add_argument(
        "--label-column", default="label", help="CSV label column (default: label)"
    )
    parser.add_argument(
        "--group-column",
        help="CSV column whose rows must stay together on one side of the "
        "train/test split (e.g. a document id); default: split by row",
    )
    _cli.add_saving(parser, "models")
    for flag, kind, text in (
        ("--epochs", int, "train exactly this many epochs, no early stopping"),
        (
            "--max-epochs",
            int,
            "most epochs with early stopping; 'data' = about "
            f"{EXAMPLE_BUDGET['full'][0]:,} (quick {EXAMPLE_BUDGET['quick'][0]:,}) "
            "training examples' worth of passes",
        ),
        ("--patience", int, "epochs without improvement before stopping"),
        ("--vocab-size", int, "TextVectorization max_tokens"),
        ("--max-length", int, "token ids kept per example"),
        ("--dim", int, "embedding / hidden dimension"),
        ("--batch-size", int, "training batch size"),
        ("--learning-rate", float, "LazyAdam learning rate"),
        ("--max-train", int, "use at most this many training examples"),
    ):
        parser.add_argument(flag, type=kind, help=f"{text} ({per_mode(flag)})")
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="fraction of speeches (or groups) held out for testing (default: 0.2)",
    )
    _cli.add_seed(parser)
    _cli.add_quiet(parser)
    args = _cli.apply_mode(parser.parse_args(argv), MODES)
    positive = ("epochs", "max_epochs", "vocab_size", "max_length", "dim")
    _cli.check_positive(parser, args, (*positive, "batch_size"))
    if args.patience < 0:
        parser.error("--patience must be 0 or a positive integer")
    if not 0 < args.test_fraction < 1:
        parser.error("--test-fraction must lie strictly between 0 and 1")
    _cli.resolve_save_dir(args, DEFAULT_SAVE_DIR)
    return args


def per_mode(flag):
    key = flag.lstrip("-").replace("-", "_")
    if key == "epochs":
        return "default: none, train until the validation accuracy stops improving"
    return _cli.per_mode_help(MODES, key, "data" if key == "max_epochs" else "all")


def load_data(args):
    """Texts, integer labels, class names and train/val/test index arrays."""
    if args.data is not None:
        texts, labels, groups, class_names = _data.read_csv_dataset(
            args.data, args.text_column, args.label_column, args.group_column
        )
        source = f"{args.data} (column {args.label_column!r})"
    else:
        texts, labels, groups, class_names = _data.sotu_paragraphs(args.task)
        source = f"State of the Union paragraphs, task {args.task!r}"
    train, test = _data.split_groups(groups, labels, args.test_fraction, args.seed)
    # A validation part of the training groups picks the best epoch; the test
    # groups are only used once, at the end.
    sub_train, sub_val = _data.split_groups(
        [groups[i] for i in train], [labels[i] for i in train], 0.1, args.seed + 1
    )
    train, val = train[sub_train], train[sub_val]
    if args.max_train is not None and len(train) > args.max_train:
        rng = np.random.default_rng(args.seed)
        train = np.sort(rng.choice(train, args.max_train, replace=False))
    y = np.array([class_names.index(label) for label in labels], "int32")
    n_groups = len(set(groups))
    print(f"Data: {source}: {len(texts):,} examples from {n_groups:,} groups.")
    print(
        f"Split by group: {len(train):,} train, {len(val):,} validation, "
        f"{len(test):,} test examples."
    )
    for k, name in enumerate(class_names):
        share = np.mean(y[test] == k)
        print(f"  class {k} {name!r}: {share:.1%} of the test examples")
    return texts, y, class_names, (train, val, test)


def build_layers(variant, args, num_classes):
    import keras

    import keras_lookup

    if variant == "embedding":
        body = [
            keras_lookup.Embedding(
                args.vocab_size, args.dim, mask_zero=True, name="embedding"
            ),
            keras.layers.GlobalAveragePooling1D(name="average"),
        ]
    else:
        body = [
            keras_lookup.DimensionReducer(
                args.vocab_size,
                args.dim,
                strategy="auto",
                combiner="mean",
                mask_zero=True,
                use_bias=True,
                activation="relu",
                name="bag_of_words",
            )
        ]
    head = [
        keras.layers.Dropout(0.2, name="dropout"),
        keras_lookup.Dense(num_classes, activation="softmax", name="classes"),
    ]
    return body + head


def stack(layers, x):
    for layer in layers:
        x = layer(x)
    return x


def train_variant(variant, vectorizer, ids, y, splits, class_names, args):
    """Trains one variant on token ids.

    Returns `(end-to-end model on raw strings, test accuracy, training seconds,
    epochs run, best epoch or None)`; the best epoch is None with `--epochs`.
    """
    import keras

    from keras_lookup.optimizers import LazyAdam

    train, val, test = splits
    keras.utils.set_random_seed(args.seed)
    layers = build_layers(variant, args, len(class_names))
    # Training runs on token ids computed once (string ops every step would
    # slow it down); the saved model wraps the same layers behind the
    # TextVectorization layer so that it takes raw strings.
    id_input = keras.Input((args.max_length,), dtype="int64", name="token_ids")
    trainer = keras.Model(id_input, stack(layers, id_input), name=f"{variant}_ids")
    trainer.compile(
        optimizer=LazyAdam(args.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    callbacks = []
    if args.epochs is None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy",
                patience=args.patience,
                restore_best_weights=True,
            )
        )
    start = time.perf_counter()
    history = trainer.fit(
        ids[train],
        y[train],
        validation_data=(ids[val], y[val]),
        epochs=args.epochs or args.max_epochs,
        batch_size=args.batch_size,
        callbacks=callbacks,
        verbose=_training.progress(args),
    )
    seconds = time.perf_counter() - start
    ran = len(history.history["loss"])
    best = callbacks[0].best_epoch + 1 if callbacks else None
    _, accuracy = trainer.evaluate(ids[test], y[test], verbose=0)

    text_input = keras.Input((1,), dtype="string", name="text")
    model = keras.Model(
        text_input,
        stack(layers, vectorizer(text_input)),
        name=f"text_classification_{variant}",
    )
    return model, float(accuracy), seconds, ran, best


def sample_texts(texts, y, test, num_classes, words=60):
    """A few held-out paragraphs per class, cut to their first `words` words."""
    picked = []
    for k in range(num_classes):
        members = [i for i in test if y[i] == k]
        step = max(1, len(members) // SAMPLES_PER_CLASS)
        members = members[step // 2 :: step][:SAMPLES_PER_CLASS]
        picked.extend(" ".join(texts[i].split()[:words]) for i in members)
    return picked


def save(model, name, samples, class_names, args):
    import keras
    import tensorflow as tf

    import keras_lookup

    os.makedirs(args.save_dir, exist_ok=True)
    path = os.path.join(args.save_dir, name + ".keras")
    keras_lookup.save_model(model, path)
    inputs = [[text] for text in samples]
    expected = model.predict(tf.constant(inputs), verbose=0)
    sidecar = {
        "description": "Raw strings, shape (n, 1); the model maps each row to "
        "the probabilities of class_names.",
        "dtype": "string",
        "inputs": inputs,
        "class_names": class_names,
    }
    _data.write_json(os.path.join(args.save_dir, name + ".inputs.json"), sidecar)
    np.savez(os.path.join(args.save_dir, name + ".expected.npz"), outputs=expected)
    # The file must work on its own: reload it and check it gives the same
    # numbers on raw strings.
    reloaded = keras.saving.load_model(path)
    again = reloaded.predict(tf.constant(inputs), verbose=0)
    if not np.allclose(again, expected, atol=1e-6):
        raise SystemExit(f"error: {path} does not reproduce its outputs on reload")
    return path


def main(argv=None):
    args = parse_args(argv)
    texts, y, class_names, splits = load_data(args)
    train, val, test = splits

    # Imported only now, so that bad data fails before TensorFlow starts up.
    keras, tf = _startup.import_keras()

    keras.utils.set_random_seed(args.seed)
    vectorizer = keras.layers.TextVectorization(
        max_tokens=args.vocab_size,
        output_sequence_length=args.max_length,
        name="text_vectorization",
    )
    vectorizer.adapt(tf.constant([texts[i] for i in train]), batch_size=1024)
    ids = vectorizer(tf.constant(texts)).numpy()
    # A vocabulary smaller than max_tokens (small data) shrinks the tables.
    args.vocab_size = vectorizer.vocabulary_size()
    print(
        f"TextVectorization: {args.vocab_size:,} tokens, {args.max_length} "
        f"ids per example ({np.mean(ids[:, -1] != 0):.0%} of examples cut)."
    )
    if args.max_epochs is None:
        budget, least = EXAMPLE_BUDGET[args.mode]
        passes = round(budget / len(train))
        args.max_epochs = int(np.clip(passes, least, MAX_EPOCHS))
    schedule = (
        _training.epochs(args.epochs)
        if args.epochs
        else f"up to {_training.epochs(args.max_epochs)}, early stopping on validation "
        f"accuracy with patience {args.patience}"
    )
    print(f"Training: LazyAdam {args.learning_rate:g}, {schedule}.")

    # The best constant guess on the test examples (at least as strong as the
    # training set's majority class), so the gains below are not flattered.
    counts = np.bincount(y[test], minlength=len(class_names))
    majority = int(np.argmax(counts))
    baseline = float(counts[majority] / len(test))
    results = []
    prefix = f"text_classification_{args.task if args.data is None else 'csv'}"
    samples = sample_texts(texts, y, test, len(class_names))
    for variant, title in VARIANTS.items():
        print(f"\n{title}")
        model, accuracy, seconds, ran, best = train_variant(
            variant, vectorizer, ids, y, splits, class_names, args
        )
        path = None
        if args.save_dir is not None:
            path = save(model, f"{prefix}_{variant}", samples, class_names, args)
        training = _training.describe_training(ran, best, args)
        results.append((title, accuracy, seconds, training, path))

    print(f"\nSummary ({args.mode} run, {len(test):,} held-out examples):")
    print(
        f"  majority-class baseline ({class_names[majority]!r}): "
        f"test accuracy {baseline:.1%}"
    )
    for title, accuracy, seconds, training, path in results:
        gain = 100 * (accuracy - baseline)
        print(
            f"  {title}: test accuracy {accuracy:.1%} "
            f"({gain:+.1f} points over the baseline; trained in {seconds:.0f} s)"
        )
        print(f"    trained {training}")
        if path is not None:
            print(_cli.saved_line(path))


if __name__ == "__main__":
    main()
