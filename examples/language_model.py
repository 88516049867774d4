"""Train a small word-level language model on the State of the Union addresses.

Words (and the punctuation marks . , ; : ? !) are mapped to ids by a
`keras.layers.TextVectorization` vocabulary of the most frequent training
tokens. The model reads windows of consecutive ids and predicts the next id at
every position:

    ids -> keras_lookup.Embedding(mask_zero=True) -> GRU -> Dense(dim)
        -> the same keras_lookup.Embedding with reverse=True -> logits

The output projection is the embedding table itself (weight tying: the logits
are `features @ embeddings.T`), so the vocabulary costs one table, not two. It
trains with `keras_lookup.optimizers.LazyAdam`. About 10% of the addresses
(whole speeches) are held out; the example reports their perplexity next to
two baselines fitted on the same training tokens and scored on the same
validation tokens: a unigram model (add-one smoothing) and an interpolated
Kneser-Ney bigram model, which the GRU beats only by using more context than
the previous word. It then samples a few lines of text.

Training stops when the validation loss has not improved for `--patience`
epochs, and the weights of the best epoch are kept. Where one fixed value would
not fit every corpus, the defaults come from the size of the training data:
the most epochs (about the same number of training steps on any corpus, so a
small corpus gets more passes), the vocabulary (tokens seen at least twice, up
to `--vocab-size`) and the GRU width. `--epochs N` trains exactly N epochs.

Usage:

    python examples/language_model.py --quick        # ~1 minute on 2 CPU cores
    python examples/language_model.py                # full run, ~9 minutes
    python examples/language_model.py --data my_texts/   # a folder of .txt files

The full run on the State of the Union data saves the model (token ids ->
logits) to `saved_models/language_model.keras`, with sidecars
`language_model.inputs.json` (token-id inputs), `language_model.expected.npz`
(the logits it gave on them) and `language_model.vocabulary.txt` (line i holds
the token of id i). `--quick` and `--smoke` save nothing unless given
`--save-dir`.
"""

import argparse
import os
import re
import time

import _cli
import _data
import _startup
import _training
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SAVE_DIR = os.path.join(REPO, "saved_models")
MODEL_NAME = "language_model"
PUNCTUATION = ".,;:?!"
# Settings per mode; any of them can be overridden from the command line.
# `None` means "from the size of the training data" (see `fit_to_data`).
MODES = {
    "full": {
        "vocab_size": 10000,
        "seq_length": 32,
        "dim": 64,
        "units": None,
        "epochs": None,
        "max_epochs": None,
        "patience": 2,
        "batch_size": 128,
        "learning_rate": 1e-2,
        "max_train_tokens": None,
        "max_val_tokens": None,
    },
    "quick": {
        "vocab_size": 5000,
        "seq_length": 32,
        "dim": 64,
        "units": 128,
        "epochs": None,
        "max_epochs": None,
        "patience": 1,
        "batch_size": 128,
        "learning_rate": 1e-2,
        "max_train_tokens": 600_000,
        "max_val_tokens": 100_000,
    },
    "smoke": {
        "vocab_size": 1000,
        "seq_length": 16,
        "dim": 16,
        "units": 32,
        "epochs": None,
        "max_epochs": None,
        "patience": 1,
        "batch_size": 64,
        "learning_rate": 1e-2,
        "max_train_tokens": 30_000,
        "max_val_tokens": 5_000,
    },
}
# The most epochs is about this many training tokens' worth of steps, at least
# MIN_EPOCHS and at most MAX_EPOCHS passes. On the State of the Union text
# (1.93M training tokens) the full run makes 2 passes, as many as fit in about
# 9 minutes on 2 CPU cores; a corpus of 150k tokens gets up to 27, and early
# stopping usually ends it sooner.
TOKEN_BUDGET = {"full": 4_000_000, "quick": 700_000, "smoke": 60_000}
MIN_EPOCHS, MAX_EPOCHS = 1, 50
# Validation loss must fall by more than this (0.1% of perplexity) to count as
# an improvement for early stopping.
MIN_DELTA = 1e-3
# Tokens seen fewer times than this in training map to [UNK]: a word seen once
# teaches the model next to nothing, and costs a row of the table.
MIN_COUNT = 2
# GRU units for the full run: wide on a large corpus, narrower on a small one,
# where a wide GRU only overfits sooner.
LARGE_CORPUS_TOKENS, UNITS_LARGE, UNITS_SMALL = 1_000_000, 256, 128
# Interpolated Kneser-Ney discount for the bigram baseline (the usual 0.75).
BIGRAM_DISCOUNT = 0.75
SOTU_PROMPTS = (
    "the state of the union is",
    "my fellow americans ,",
    "the congress must",
    "our foreign relations",
)
SAMPLE_TOKENS = 24
SIDECAR_SHAPE = (2, 8)  # token-id inputs stored with the saved model


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=(
            "Train a small word-level language model (keras_lookup.Embedding, "
            "a GRU and a tied output projection) on the State of the Union "
            "addresses or on your own .txt files, report validation "
            "perplexity against a unigram baseline, and sample text."
        ),
    )
    _cli.add_modes(parser, "a smaller model on 600k tokens (~1 minute on 2 CPU cores)")
    parser.add_argument(
        "--data",
        metavar="FOLDER",
        help="a folder of UTF-8 .txt files (at least two; whole files are held "
        "out for validation) instead of the State of the Union addresses",
    )
    _cli.add_saving(parser, "model")
    for flag, kind, text in (
        ("--epochs", int, "train exactly this many epochs, no early stopping"),
        (
            "--max-epochs",
            int,
            "most epochs with early stopping; 'data' = about "
            f"{TOKEN_BUDGET['full']:,} (quick {TOKEN_BUDGET['quick']:,}) "
            "training tokens' worth of passes",
        ),
        ("--patience", int, "epochs without improvement before stopping"),
        ("--vocab-size", int, f"vocabulary size at most (tokens seen >= {MIN_COUNT}x)"),
        ("--seq-length", int, "tokens per training window"),
        ("--dim", int, "embedding dimension"),
        (
            "--units",
            int,
            f"GRU units; 'data' = {UNITS_LARGE} from "
            f"{LARGE_CORPUS_TOKENS:,} training tokens, else {UNITS_SMALL}",
        ),
        ("--batch-size", int, "training batch size"),
        ("--learning-rate", float, "LazyAdam learning rate"),
        ("--max-train-tokens", int, "train on at most this many tokens"),
        ("--max-val-tokens", int, "validate on at most this many tokens"),
    ):
        parser.add_argument(flag, type=kind, help=f"{text} ({per_mode(flag)})")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="fraction of the documents held out for validation (default: 0.1)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="sampling temperature (default: 0.8)",
    )
    _cli.add_seed(parser)
    _cli.add_quiet(parser)
    args = _cli.apply_mode(parser.parse_args(argv), MODES)
    positive = ("epochs", "max_epochs", "vocab_size", "seq_length", "dim", "units")
    _cli.check_positive(parser, args, (*positive, "batch_size"))
    if args.patience < 0:
        parser.error("--patience must be 0 or a positive integer")
    if not 0 < args.val_fraction < 1:
        parser.error("--val-fraction must lie strictly between 0 and 1")
    if args.temperature <= 0:
        parser.error("--temperature must be positive")
    _cli.resolve_save_dir(args, DEFAULT_SAVE_DIR)
    return args


def per_mode(flag):
    key = flag.lstrip("-").replace("-", "_")
    if key == "epochs":
        return "default: none, train until the validation loss stops improving"
    unset = "data" if key in ("units", "max_epochs") else "all"
    return _cli.per_mode_help(MODES, key, unset)


def load_documents(args):
    """`(train texts, validation texts, source description)`."""
    if args.data is not None:
        documents = _data.read_text_folder(args.data)
        source = f"{len(documents)} .txt files in {args.data}"
    else:
        documents = _data.sotu_documents()
        source = f"{len(documents)} State of the Union addresses"
    names = [name for name, _ in documents]
    train, val = _data.split_groups(
        names, ["document"] * len(names), args.val_fraction, args.seed
    )
    print(f"Data: {source}; {len(train)} for training, {len(val)} held out.")
    return [documents[i][1] for i in train], [documents[i][1] for i in val]


def standardize(text):
    """Lower-cases, and splits . , ; : ? ! off as tokens of their own."""
    import tensorflow as tf

    text = tf.strings.lower(text)
    text = tf.strings.regex_replace(text, f"([{re.escape(PUNCTUATION)}])", r" \1 ")
    return tf.strings.regex_replace(text, rf"[^a-z0-9'{re.escape(PUNCTUATION)}]+", " ")


def token_stream(vectorizer, texts, limit):
    """All ids of `texts`, one document after the other, cut to `limit`."""
    import tensorflow as tf

    pieces, total = [], 0
    for text in texts:
        ids = vectorizer(tf.constant([text])).numpy()[0].astype("int32")
        pieces.append(ids)
        total += len(ids)
        if limit is not None and total > limit:
            break
    stream = np.concatenate(pieces)
    return stream if limit is None else stream[: limit + 1]


def windows(stream, length):
    """Non-overlapping `(inputs, next-token targets)` windows of `length` ids."""
    count = (len(stream) - 1) // length
    if count < 1:
        raise SystemExit(
            f"error: only {len(stream)} tokens, too few for one window of "
            f"{length}. Add text or lower --seq-length."
        )
    inputs = stream[: count * length].reshape(count, length)
    targets = stream[1 : count * length + 1].reshape(count, length)
    return inputs, targets


def build_model(args):
    import keras

    import keras_lookup

    ids = keras.Input((None,), dtype="int32", name="token_ids")
    embedding = keras_lookup.Embedding(
        args.vocab_size, args.dim, mask_zero=True, name="embedding"
    )
    x = embedding(ids)
    x = keras.layers.GRU(args.units, return_sequences=True, name="gru")(x)
    x = keras.layers.Dense(args.dim, name="to_embedding_space")(x)
    # Weight tying: the same table scores every vocabulary entry.
    logits = embedding(x, reverse=True)
    return keras.Model(ids, logits, name=MODEL_NAME)


def unigram_perplexity(train_stream, targets, vocab_size):
    """Perplexity of add-one-smoothed training frequencies on `targets`."""
    counts = np.bincount(train_stream.ravel(), minlength=vocab_size).astype("float64")
    probabilities = (counts + 1) / (counts.sum() + vocab_size)
    return float(np.exp(-np.mean(np.log(probabilities[targets.ravel()]))))


def bigram_model(previous, following, vocab_size, discount=BIGRAM_DISCOUNT):
    """An interpolated Kneser-Ney bigram model fitted on `previous -> following` pairs.

    Returns `probability(previous, following)`, vectorized over id arrays:

        P(w | v) = max(c(v, w) - d, 0) / c(v) + d * T(v) / c(v) * P_cont(w)

    where c counts training pairs, T(v) is the number of distinct tokens seen
    after v, and P_cont(w) is how many distinct tokens w was seen after (its
    "continuation count"), add-one smoothed so that every token gets some
    probability. After a token never seen in training, P(w | v) = P_cont(w).
    For every v the probabilities sum to one over the vocabulary.
    """
    v = np.asarray(previous, "int64").ravel()
    w = np.asarray(following, "int64").ravel()
    pairs, counts = np.unique(v * vocab_size + w, return_counts=True)
    context = np.bincount(v, minlength=vocab_size).astype("float64")
    followers = np.bincount(pairs // vocab_size, minlength=vocab_size)
    preceders = np.bincount(pairs % vocab_size, minlength=vocab_size)
    continuation = (preceders + 1.0) / (len(pairs) + vocab_size)

    def probability(previous, following):
        v = np.asarray(previous, "int64")
        w = np.asarray(following, "int64")
        code = v * vocab_size + w
        index = np.minimum(np.searchsorted(pairs, code), len(pairs) - 1)
        count = np.where(pairs[index] == code, counts[index], 0)
        seen = context[v] > 0
        total = np.where(seen, context[v], 1.0)
        backoff = np.where(seen, discount * followers[v] / total, 1.0)
        return np.maximum(count - discount, 0) / total + backoff * continuation[w]

    return probability


def bigram_perplexity(train_inputs, train_targets, inputs, targets, vocab_size):
    """Perplexity on `inputs -> targets` of `bigram_model` fitted on training pairs."""
    probability = bigram_model(train_inputs, train_targets, vocab_size)
    return float(np.exp(-np.mean(np.log(probability(inputs, targets)))))


def fit_to_data(args, train_tokens):
    """Fills in the settings left to the data: the most epochs and GRU units."""
    if args.max_epochs is None:
        passes = round(TOKEN_BUDGET[args.mode] / train_tokens)
        args.max_epochs = int(np.clip(passes, MIN_EPOCHS, MAX_EPOCHS))
    if args.units is None:
        large = train_tokens >= LARGE_CORPUS_TOKENS
        args.units = UNITS_LARGE if large else UNITS_SMALL


def frequent_vocabulary(vocabulary, train_stream, min_count):
    """The entries of `vocabulary` seen at least `min_count` times in `train_stream`.

    Padding and [UNK] (the first two entries) are always kept, and the order
    is kept too.
    """
    counts = np.bincount(train_stream, minlength=len(vocabulary))
    keep = counts >= min_count
    keep[:2] = True
    return [token for token, kept in zip(vocabulary, keep, strict=True) if kept]


def train(model, data, args):
    """Fits `model`; returns `(epochs run, best epoch or None, seconds)`.

    With `--epochs`, exactly that many epochs and the last weights; otherwise
    up to `args.max_epochs`, stopping after `args.patience` epochs without a
    validation improvement and restoring the best epoch's weights.
    """
    import keras

    x_train, y_train, x_val, y_val = data
    callbacks = []
    if args.epochs is None:
        stop = keras.callbacks.EarlyStopping(
            monitor="val_loss",
            min_delta=MIN_DELTA,
            patience=args.patience,
            restore_best_weights=True,
        )
        callbacks.append(stop)
    start = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=args.epochs or args.max_epochs,
        batch_size=args.batch_size,
        callbacks=callbacks,
        verbose=_training.progress(args),
    )
    seconds = time.perf_counter() - start
    ran = len(history.history["loss"])
    best = None if args.epochs else callbacks[0].best_epoch + 1
    return ran, best, seconds


def sample(model, vocabulary, prompts, args):
    """Continues each prompt by `SAMPLE_TOKENS` tokens, sampled at temperature."""
    rng = np.random.default_rng(args.seed)
    index = {token: i for i, token in enumerate(vocabulary)}
    contexts = [[index.get(t, 1) for t in p.split()] for p in prompts]
    generated = [[] for _ in prompts]
    for _ in range(SAMPLE_TOKENS):
        recent = [c[-args.seq_length :] for c in contexts]
        width = max(len(c) for c in recent)
        # Left padding with id 0, which mask_zero makes the GRU skip.
        batch = np.array([[0] * (width - len(c)) + c for c in recent], "int32")
        logits = np.asarray(model(batch, training=False)[:, -1, :], "float64")
        logits[:, :2] = -np.inf  # never sample padding or [UNK]
        logits = logits / args.temperature
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        for row, p in enumerate(probabilities):
            token = int(rng.choice(len(p), p=p))
            contexts[row].append(token)
            generated[row].append(token)
    return [
        detokenize(p.split() + [vocabulary[t] for t in g])
        for p, g in zip(prompts, generated, strict=True)
    ]


def detokenize(tokens):
    text = " ".join(tokens)
    return re.sub(rf" ([{re.escape(PUNCTUATION)}])", r"\1", text)


def save(model, vocabulary, val_inputs, args):
    import keras

    import keras_lookup

    os.makedirs(args.save_dir, exist_ok=True)
    stem = os.path.join(args.save_dir, MODEL_NAME)
    rows, length = SIDECAR_SHAPE
    inputs = val_inputs[:rows, :length].astype("int32")
    keras_lookup.save_model(model, stem + ".keras")
    expected = np.asarray(model.predict(inputs, verbose=0))
    sidecar = {
        "description": "Token ids, shape (n, length); the model maps them to "
        "next-token logits of shape (n, length, vocabulary size). Decode ids "
        "with language_model.vocabulary.txt (line i holds the token of id i).",
        "dtype": "int32",
        "inputs": inputs.tolist(),
        "tokens": [[vocabulary[i] for i in row] for row in inputs],
    }
    _data.write_json(stem + ".inputs.json", sidecar)
    np.savez(stem + ".expected.npz", outputs=expected)
    with open(stem + ".vocabulary.txt", "w", encoding="utf-8") as f:
        f.write("\n".join(vocabulary) + "\n")
    reloaded = keras.saving.load_model(stem + ".keras")
    if not np.allclose(reloaded.predict(inputs, verbose=0), expected, atol=1e-5):
        raise SystemExit(f"error: {stem}.keras does not reproduce its outputs")
    return stem + ".keras"


def main(argv=None):
    args = parse_args(argv)
    train_texts, val_texts = load_documents(args)

    # Imported only now, so that bad data fails before TensorFlow starts up.
    keras, tf = _startup.import_keras()

    from keras_lookup.optimizers import LazyAdam

    keras.utils.set_random_seed(args.seed)
    vectorizer = keras.layers.TextVectorization(
        max_tokens=args.vocab_size, standardize=standardize, name="tokens"
    )
    vectorizer.adapt(tf.constant(train_texts), batch_size=16)
    vocabulary = [str(t) for t in vectorizer.get_vocabulary()]
    train_stream = token_stream(vectorizer, train_texts, args.max_train_tokens)
    frequent = frequent_vocabulary(vocabulary, train_stream, MIN_COUNT)
    if len(frequent) < len(vocabulary):
        vocabulary = frequent
        vectorizer = keras.layers.TextVectorization(
            vocabulary=vocabulary[2:], standardize=standardize, name="tokens"
        )
        train_stream = token_stream(vectorizer, train_texts, args.max_train_tokens)
    most, args.vocab_size = args.vocab_size, len(vocabulary)
    val_stream = token_stream(vectorizer, val_texts, args.max_val_tokens)
    x_train, y_train = windows(train_stream, args.seq_length)
    x_val, y_val = windows(val_stream, args.seq_length)
    fit_to_data(args, y_train.size)
    print(
        f"Vocabulary: {args.vocab_size:,} tokens (id 0 padding, id 1 [UNK]; "
        f"training tokens seen {MIN_COUNT}+ times, at most --vocab-size "
        f"{most:,}); {y_train.size:,} training and "
        f"{y_val.size:,} validation tokens ({np.mean(val_stream == 1):.1%} of "
        "validation tokens are [UNK])."
    )
    schedule = (
        _training.epochs(args.epochs)
        if args.epochs
        else f"up to {_training.epochs(args.max_epochs)}, early stopping with patience "
        f"{args.patience}"
    )
    print(
        f"Model: embedding {args.dim}, GRU {args.units} units; LazyAdam "
        f"{args.learning_rate:g}; {schedule}."
    )

    model = build_model(args)
    model.compile(
        optimizer=LazyAdam(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    ran, best, seconds = train(model, (x_train, y_train, x_val, y_val), args)
    val_loss = model.evaluate(x_val, y_val, batch_size=args.batch_size, verbose=0)
    perplexity = float(np.exp(val_loss))
    baseline = unigram_perplexity(y_train, y_val, args.vocab_size)
    bigram = bigram_perplexity(x_train, y_train, x_val, y_val, args.vocab_size)

    # A fresh, uncompiled model over the same layers: what gets saved and
    # sampled from carries no optimizer state.
    inference = keras.Model(model.input, model.output, name=MODEL_NAME)
    if args.data is None:
        prompts = SOTU_PROMPTS
    else:
        prompts = [
            " ".join(vocabulary[i] for i in x_val[k, :4])
            for k in range(min(2, len(x_val)))
        ]
    lines = sample(inference, vocabulary, prompts, args)
    path = None
    if args.save_dir is not None:
        path = save(inference, vocabulary, x_val, args)

    print(f"\nSamples (temperature {args.temperature}, seed {args.seed}):")
    for line in lines:
        print(f"  {line}")
    print(f"\nSummary ({args.mode} run, {y_val.size:,} held-out tokens):")
    print(f"  unigram baseline (add-one smoothing): perplexity {baseline:.1f}")
    print(
        f"  bigram baseline (interpolated Kneser-Ney): perplexity {bigram:.1f} "
        f"({bigram / baseline:.2f} x unigram)"
    )
    print(
        f"  GRU language model, tied embedding: perplexity {perplexity:.1f} "
        f"({perplexity / baseline:.2f} x unigram, {perplexity / bigram:.2f} x "
        f"bigram; trained in {seconds:.0f} s)"
    )
    print(f"    trained {_training.describe_training(ran, best, args)}")
    if path is not None:
        print(_cli.saved_line(path))


if __name__ == "__main__":
    main()
