"""What `bench` and `calibrate()` both time: one step of each way to look up ids.

A step is a forward pass, then the gradient with respect to the table in the
form an optimizer receives it (row-sparse for a gather, dense for a matmul).
`time_interleaved` times several steps side by side, and `scan_crossover`
finds the vocabulary size where matmul stops beating gather. This module
imports neither `bench` nor `calibration`, which both import it.
"""

import dataclasses
import math
import random
import time

import keras
import numpy as np
import tensorflow as tf

from keras_lookup import _cost_model
from keras_lookup.dimension_reducer import DimensionReducer

FORMS = _cost_model.FORMS
# `bench`'s default grid: ids in their three forms (multi-hot rows, a dense
# `(rows, V)` count matrix, on request: `--forms multi_hot`).
DEFAULT_FORMS = ("single", "padded", "ragged")
COLUMNS = ("keras Embedding", "keras Dense", "gather", "matmul", "auto")
# Columns that build a (rows, V) one-hot or count matrix.
ONE_HOT_COLUMNS = ("keras Dense", "matmul")


@dataclasses.dataclass
class Settings:
    dim: int = 64
    rows: int = 256
    single_ids: int = 4096
    dtype: str = "float32"
    rounds: int = 21
    round_ms: float = 5.0
    max_one_hot: int = 2**25
    seed: int = 0

    def as_dict(self):
        return dataclasses.asdict(self)


def make_inputs(form, vocab, k, settings, rng):
    """One batch of ids for `form` (`k` ids per row for bags)."""
    if form == "single":
        seq_len = max(1, settings.single_ids // settings.rows)
        shape = (settings.rows, seq_len)
        return tf.constant(rng.integers(0, vocab, size=shape), tf.int32)
    if form == "padded":
        shape = (settings.rows, k)
        return tf.constant(rng.integers(0, vocab, size=shape), tf.int32)
    lengths = rng.integers(max(1, k // 2), k + k // 2 + 1, size=settings.rows)
    ids = rng.integers(0, vocab, size=int(lengths.sum()))
    if form == "multi_hot":  # the counts of the ragged bags below
        rows = np.repeat(np.arange(settings.rows), lengths)
        counts = np.zeros((settings.rows, vocab), np.float32)
        np.add.at(counts, (rows, ids), 1.0)
        return tf.constant(counts)
    return tf.RaggedTensor.from_row_lengths(
        tf.constant(ids, tf.int32), tf.constant(lengths, tf.int64)
    )


def rows_of(inputs):
    if isinstance(inputs, tf.RaggedTensor):
        return int(inputs.nrows())
    return int(np.prod(inputs.shape[:-1])) if inputs.shape.rank > 1 else 1


def one_hot_rows(form, inputs):
    return int(tf.size(inputs)) if form == "single" else rows_of(inputs)


def input_ids(form, inputs):
    """How many ids a batch holds (nonzero counts for multi-hot rows)."""
    if form == "ragged":
        return int(tf.size(inputs.flat_values))
    if form == "multi_hot":
        return int(tf.math.count_nonzero(inputs))
    return int(tf.size(inputs))


def _touch(gradient):
    # What an optimizer reads: the rows of a row-sparse gradient, or all of a
    # dense one.
    if isinstance(gradient, tf.IndexedSlices):
        return tf.reduce_sum(gradient.values)
    return tf.reduce_sum(gradient)


def _step(forward, variables, inputs):
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            out = forward(x)
            loss = tf.reduce_sum(tf.cast(out, tf.float32) ** 2)
        return [_touch(g) for g in tape.gradient(loss, variables)]

    # The batch is an argument, not a captured constant: as in training,
    # nothing about it can be folded into the graph.
    return lambda: [g.numpy() for g in step(inputs)]


def make_column(column, form, vocab, k, settings, inputs):
    """`(step, layer)` for one column at one grid point."""
    dim, dtype = settings.dim, settings.dtype
    bags = form != "single"
    if column == "keras Embedding":
        layer = keras.layers.Embedding(vocab, dim, dtype=dtype)
        layer.build()

        def forward(x):
            out = layer(x)
            return tf.reduce_sum(out, axis=1) if bags else out

    elif column == "keras Dense":
        layer = keras.layers.Dense(dim, use_bias=False, dtype=dtype)
        layer.build((None, vocab))

        def forward(x):
            if form == "multi_hot":
                return layer(x)
            if bags:
                counts = tf.math.bincount(
                    x, minlength=vocab, maxlength=vocab, axis=-1, dtype=tf.float32
                )
                return layer(tf.reshape(counts, [-1, vocab]))
            return layer(tf.one_hot(x, vocab))

    elif form == "multi_hot":
        layer = DimensionReducer(
            vocab, dim, strategy=column, input_format="multi_hot", dtype=dtype
        )
        layer.build((None, vocab))
        forward = layer
    else:
        layer = DimensionReducer(
            vocab,
            dim,
            strategy=column,
            combiner="sum" if bags else None,
            dtype=dtype,
        )
        layer.build((None, k if form == "padded" else None))
        forward = layer
    return _step(forward, layer.trainable_variables, inputs), layer


def time_interleaved(steps, rounds, round_ms=5.0, seed=0):
    """`{name: [ms, one per round]}`, the steps timed side by side.

    Each step is warmed up; then every round runs each step, in an order
    shuffled from round to round (seeded), for about `round_ms` (at least one
    call), timing every call. A round's figure for a step is its fastest call there:
    on a shared machine a call either runs undisturbed or is slowed by others,
    so the fastest is the least noisy estimate of the step's own cost.
    """
    calls = {}
    for name, step in steps.items():
        # Warm up for a few calls and at least ~20 ms: a process's first
        # steps run slower (thread pools, allocator).
        start = time.perf_counter()
        for n in range(1, 1000):
            step()
            if n >= 3 and time.perf_counter() - start > 0.02:
                break
        start = time.perf_counter()
        step()
        once = max(time.perf_counter() - start, 1e-6) * 1e3
        calls[name] = max(1, min(200, math.ceil(round_ms / once)))
    names = list(steps)
    times = {name: [] for name in names}
    # Shuffled, not rotated: with a rotation a step follows the same neighbour
    # in most rounds, and a slow neighbour (a 50 ms one-hot matmul) leaves the
    # machine slowed for the next one, so that step looked slower than it is.
    order = random.Random(seed)
    for _ in range(rounds):
        for name in order.sample(names, len(names)):
            fastest = math.inf
            for _ in range(calls[name]):
                start = time.perf_counter()
                steps[name]()
                fastest = min(fastest, time.perf_counter() - start)
            times[name].append(fastest * 1e3)
    return times


def crossover_from_times(vocabs, gather_ms, matmul_ms):
    """The V where matmul stops being faster, interpolated in log V.

    The first V from which matmul is slower at two grid points in a row (one
    slower point can be noise); half the smallest V if matmul never won, the
    largest V if it never lost.
    """
    ratios = [math.log(m / g) for g, m in zip(gather_ms, matmul_ms, strict=True)]
    for i, r in enumerate(ratios):
        if r > 0 and (i + 1 == len(ratios) or ratios[i + 1] > 0):
            if i == 0:
                return vocabs[0] / 2
            lo, hi = ratios[i - 1], r
            t = -lo / (hi - lo)
            return math.exp(
                math.log(vocabs[i - 1]) + t * math.log(vocabs[i] / vocabs[i - 1])
            )
    return float(vocabs[-1])


def scan_crossover(form, k, vocabs, settings):
    """Times gather and matmul over `vocabs` (ascending) until matmul is
    clearly the slower; returns the timings and the crossover."""
    rng = np.random.default_rng(settings.seed)
    seen, gather_ms, matmul_ms = [], [], []
    for vocab in vocabs:
        inputs = make_inputs(form, vocab, k, settings, rng)
        if one_hot_rows(form, inputs) * vocab > settings.max_one_hot:
            break
        steps = {
            s: make_column(s, form, vocab, k, settings, inputs)[0]
            for s in ("gather", "matmul")
        }
        times = time_interleaved(steps, settings.rounds, settings.round_ms)
        seen.append(vocab)
        gather_ms.append(min(times["gather"]))
        matmul_ms.append(min(times["matmul"]))
        # Matmul grows with V, gather hardly: twice as slow twice in a row
        # is past the crossover for good.
        if len(seen) >= 2 and all(
            m > 2 * g for g, m in zip(gather_ms[-2:], matmul_ms[-2:], strict=True)
        ):
            break
    return {
        "form": form,
        "ids_per_row": k,
        "vocabs": seen,
        "gather_ms": gather_ms,
        "matmul_ms": matmul_ms,
        "crossover": crossover_from_times(seen, gather_ms, matmul_ms),
    }
