"""How `strategy="auto"` picks gather or matmul: a cost model fed by measurements.

One-hot (or multi-hot) matmul costs O(rows · V · D) forward and backward; a
gather costs O(ids · D). So for a bag of k ids per row the two meet at a
vocabulary size V*(k) that grows with k, and for single ids (one id per
position) at a fixed V*. A calibration is those crossovers, measured on one
device by `keras_lookup.calibrate()` (or shipped: `CPU_DEFAULTS`) for three
input forms:

- `"single"`: one id per position (no combiner), k = 1;
- `"padded"`: dense `(rows, k)` bags, k known from the shape;
- `"ragged"`: ragged or sparse bags (sparse multi-hot rows included), with a
  varying number of ids per row;
- `"multi_hot"`: dense `(rows, V)` multi-hot or count rows
  (`input_format="multi_hot"`), k their nonzeros per row. Matmul multiplies
  the input itself here, and a gather must first find the nonzeros, a pass
  over all rows · V entries, so matmul wins up to larger V than on ragged
  bags.

Between measured bag sizes V*(k) is interpolated linearly in log k / log V,
and it is held flat beyond the smallest and largest measured k (so a table
larger than every measured crossover always gathers and keeps its row-sparse
gradient). Where the bag size is known when the layer is built, the choice is
made then; for ragged, sparse and multi-hot bags it is made per batch inside
the graph: matmul when the batch's ids per row, `ids / rows`, reach `k*(V)`,
the bag size at which V*(k) = V. Nothing here times anything: for a given
calibration every choice is a pure function of its arguments.

A calibration written before `"multi_hot"` was measured (keras_lookup 0.2)
still reads: dense multi-hot rows then follow its ragged crossovers, as they
did then, and the calibration's source says so.
"""

import json
import math
import os
import re
from typing import NamedTuple

import tensorflow as tf

FORMS = ("single", "padded", "ragged", "multi_hot")

# Crossovers V*(k) (matmul is as fast as gather at this vocabulary size) for
# float32 on CPU: per crossover, the median (in log V) of six runs of `python
# -m keras_lookup.bench --calibrate --rounds 21` (forward + backward, D=64, 256
# rows of bags, 4,096 single ids, fastest calls of interleaved rounds) on a
# shared 2-core x86_64 CPU, TensorFlow 2.21, 2026-11-30, after the id check
# became one reduction. The six files are in
# `benchmarks/results/calibration/` (a test recomputes these medians from
# them). Single scans move by up to 1.9x with the machine's load (padded bags
# of 8 ids: 186-266; multi-hot rows of 1: 162-309), hence six runs and the
# median. Single ids and dense bags of one id never take matmul (V* = 1:
# matmul wins at most at V = 2 or 4, in some runs). Dense multi-hot rows take
# matmul to far larger V than ragged bags: their gather must first find the
# nonzeros, a pass over all rows * V entries.
CPU_DEFAULTS = {
    "single": {1: 1.0},
    "padded": {1: 1.0, 8: 230.0, 64: 355.0},
    "ragged": {1: 58.0, 8: 351.0, 64: 801.0},
    "multi_hot": {1: 175.0, 8: 974.0, 64: 3798.0},
}
CPU_DEFAULTS_SOURCE = "shipped CPU defaults (2-core x86_64, TensorFlow 2.21)"


class StrategyChoice(NamedTuple):
    """What `strategy="auto"` picked, and why.

    `strategy` is `"gather"`, `"matmul"` or `"per_batch"` (decided for each
    batch from its ids per row: matmul when they reach `min_ids_per_row`).
    """

    strategy: str
    reason: str
    min_ids_per_row: float | None = None


class Calibration:
    """Crossovers `{form: {ids_per_row: V*}}` and where they come from."""

    def __init__(self, crossovers, source):
        self.source = source
        self.crossovers = {}
        for form, points in crossovers.items():
            if form not in FORMS:
                raise ValueError(
                    f"Calibration form must be one of {FORMS}. Received: {form!r}"
                )
            ks = sorted(float(k) for k in points)
            if not ks or ks[0] <= 0:
                raise ValueError(
                    f"Calibration for {form!r} needs positive ids per row. "
                    f"Received: {sorted(points)}"
                )
            by_k = {float(k): float(v) for k, v in points.items()}
            # Matmul's cost per row does not fall as bags grow, so neither can
            # the crossover; a dip is measurement noise.
            vocabs = []
            for k in ks:
                vocabs.append(max([by_k[k], *vocabs[-1:]]))
            self.crossovers[form] = (tuple(ks), tuple(vocabs))
        if "multi_hot" not in self.crossovers and "ragged" in self.crossovers:
            # Written before multi-hot rows were measured (0.2): they follow
            # the ragged crossovers, as they did then.
            self.crossovers["multi_hot"] = self.crossovers["ragged"]
            self.source += (
                "; multi-hot rows follow its ragged crossovers (it has no "
                "multi_hot form: run keras_lookup.calibrate() again to measure it)"
            )
        missing = [form for form in FORMS if form not in self.crossovers]
        if missing:
            raise ValueError(f"Calibration lacks the forms {missing}.")

    def crossover(self, form, ids_per_row):
        """V*(k): the vocabulary size up to which matmul is the faster."""
        ks, vocabs = self.crossovers[form]
        k = float(ids_per_row)
        if k <= ks[0]:
            return vocabs[0]
        if k >= ks[-1]:
            return vocabs[-1]
        if k in ks:
            return vocabs[ks.index(k)]
        i = next(i for i in range(len(ks) - 1) if ks[i] <= k <= ks[i + 1])
        t = math.log(k / ks[i]) / math.log(ks[i + 1] / ks[i])
        return math.exp(math.log(vocabs[i]) + t * math.log(vocabs[i + 1] / vocabs[i]))

    def min_ids_per_row(self, form, vocab_size):
        """k*(V): the fewest ids per row at which matmul wins at this V.

        0 when matmul wins even for the smallest measured bags, `inf` when V is
        above every measured crossover.
        """
        ks, vocabs = self.crossovers[form]
        if vocab_size <= vocabs[0]:
            return 0.0
        if vocab_size > vocabs[-1]:
            return math.inf
        if vocab_size in vocabs:
            return ks[vocabs.index(vocab_size)]
        for i in range(len(ks) - 1):
            lo, hi = vocabs[i], vocabs[i + 1]
            if lo < vocab_size <= hi:
                t = math.log(vocab_size / lo) / math.log(hi / lo)
                return math.exp(math.log(ks[i]) + t * math.log(ks[i + 1] / ks[i]))
        raise AssertionError("unreachable: the crossovers are non-decreasing")

    def describe(self, form):
        ks, vocabs = self.crossovers[form]
        points = ", ".join(
            f"V*={v:,.0f} at {k:g} ids per row" for k, v in zip(ks, vocabs, strict=True)
        )
        return f"{form} crossovers {points}; {self.source}"


def shipped_calibration(note=""):
    return Calibration(CPU_DEFAULTS, CPU_DEFAULTS_SOURCE + note)


def choose(vocab_size, form, ids_per_row, calibration):
    """Resolves `"auto"`: a `StrategyChoice` for one layer.

    `form` is `"single"` (no combiner), `"padded"` with a known `ids_per_row`,
    or `"bags"` when the bag size is only known per batch (ragged, sparse,
    multi-hot, or dense ids whose last axis is not static).
    """
    cal = calibration
    if form == "single":
        limit = cal.crossover("single", 1)
        side = "matmul" if vocab_size <= limit else "gather"
        sign = "<=" if side == "matmul" else ">"
        return StrategyChoice(
            side,
            f"{side}: one id per position and vocab_size={vocab_size:,} {sign} "
            f"{limit:,.0f}, the measured crossover ({cal.source})",
        )
    if form == "padded":
        limit = cal.crossover("padded", ids_per_row)
        side = "matmul" if vocab_size <= limit else "gather"
        sign = "<=" if side == "matmul" else ">"
        return StrategyChoice(
            side,
            f"{side}: dense bags of {ids_per_row} ids per row and "
            f"vocab_size={vocab_size:,} {sign} {limit:,.0f}, the crossover for "
            f"that bag size ({cal.describe('padded')})",
        )
    # Bags of ids (ragged or sparse) are measured as "ragged"; dense
    # multi-hot rows as "multi_hot".
    tables = {
        "bags": ("ragged", "bags"),
        "multi_hot": ("multi_hot", "dense multi-hot rows"),
    }
    if form not in tables:
        raise ValueError(f"Unknown form {form!r}")
    table, what = tables[form]
    smallest = cal.crossover(table, 1)
    largest = cal.crossover(table, math.inf)
    if vocab_size <= smallest:
        return StrategyChoice(
            "matmul",
            f"matmul: vocab_size={vocab_size:,} <= {smallest:,.0f}, where matmul "
            f"is faster even for {what} of one id ({cal.describe(table)})",
        )
    if vocab_size > largest:
        return StrategyChoice(
            "gather",
            f"gather: vocab_size={vocab_size:,} > {largest:,.0f}, above every "
            "measured crossover, so every batch gathers and the gradient stays "
            f"row-sparse ({cal.describe(table)})",
        )
    k = cal.min_ids_per_row(table, vocab_size)
    return StrategyChoice(
        "per_batch",
        f"per batch: at vocab_size={vocab_size:,} a batch of {what} takes matmul "
        f"when it averages >= {k:.3g} ids per row, gather otherwise "
        f"({cal.describe(table)})",
        min_ids_per_row=k,
    )


# Dense multi-hot rows: the ids per row are estimated from this many rows,
# evenly spaced. Counting every nonzero is a pass over all rows x V entries
# that the `tf.cond` must wait for: +0.1-0.25 ms on a 0.55-1.1 ms step (CPU,
# V = 512-2,048, 256 rows), against +0.03-0.05 ms for 32 gathered rows.
MULTI_HOT_SAMPLE_ROWS = 32


def batch_ids_per_row(inputs):
    """`(ids, rows)` of one batch of ragged or sparse bags, or of dense
    multi-hot rows (there counted on at most `MULTI_HOT_SAMPLE_ROWS` rows,
    evenly spaced: the count only places the batch against a threshold)."""
    if isinstance(inputs, tf.RaggedTensor):
        return tf.size(inputs.flat_values), inputs.nrows()
    if isinstance(inputs, tf.SparseTensor):
        return tf.size(inputs.values), inputs.dense_shape[0]
    matrix = tf.reshape(inputs, [-1, tf.shape(inputs)[-1]])
    rows = tf.shape(matrix)[0]
    sampled = tf.minimum(rows, MULTI_HOT_SAMPLE_ROWS)
    picked = tf.range(sampled) * rows // tf.maximum(sampled, 1)
    matrix = tf.gather(matrix, picked)
    if matrix.dtype not in (tf.float32, tf.float64):
        matrix = tf.cast(matrix, tf.float32)
    # A float sum of |sign(x)| is one fused pass (`count_nonzero` is three).
    return tf.reduce_sum(tf.abs(tf.sign(matrix))), sampled


def use_matmul(choice, vocab_size, inputs, multi_hot, calibration):
    """Whether a batch of bags takes matmul under `choice` (the layer's choice
    for its input format): a Python bool when that is static for these
    inputs, else a scalar boolean tensor computed from the batch (never from a
    timing).

    Ragged and sparse ids and dense multi-hot rows follow `choice`; dense ids
    follow the padded crossovers, statically when their width is; sparse
    multi-hot rows, the ragged ones.
    """
    sparse = isinstance(inputs, (tf.RaggedTensor, tf.SparseTensor))
    if multi_hot and sparse:
        choice = choose(vocab_size, "bags", None, calibration)
    if not multi_hot and not sparse:  # dense ids
        width = inputs.shape[-1] if inputs.shape.rank else None
        if width is not None:
            picked = choose(vocab_size, "padded", width, calibration)
            return picked.strategy == "matmul"
        if vocab_size <= calibration.crossover("padded", 1):
            return True
        if vocab_size > calibration.crossover("padded", math.inf):
            return False
        ids = tf.size(inputs)
        rows = ids // tf.maximum(tf.shape(inputs)[-1], 1)
        k = calibration.min_ids_per_row("padded", vocab_size)
    elif choice.strategy != "per_batch":
        return choice.strategy == "matmul"
    else:
        (ids, rows), k = batch_ids_per_row(inputs), choice.min_ids_per_row
    ids = tf.cast(ids, tf.float64)
    return tf.logical_and(ids > 0, ids >= k * tf.cast(rows, tf.float64))


def per_batch(use_matmul, bag_sums):
    """`bag_sums(strategy)` with the strategy a scalar boolean tensor picks.

    A `tf.cond` whose branches hold only what differs: the caller builds the
    bags, reads the table once (densely: reading the variable inside the
    branches cost ~40 us more per training step on CPU; the per-batch range
    only holds small tables) and applies the combiner outside it. The
    gradient stays an `IndexedSlices` on the gather side.
    """
    return tf.cond(use_matmul, lambda: bag_sums("matmul"), lambda: bag_sums("gather"))


def with_bag_width(choice, vocab_size, width, calibration):
    """The choice as a built layer reports it: a per-batch choice becomes
    static for dense bags whose width the build shape fixed."""
    if choice.strategy != "per_batch" or width is None:
        return choice
    dense = choose(vocab_size, "padded", width, calibration)
    return StrategyChoice(
        dense.strategy,
        f"{dense.reason}. Ragged or sparse bags are decided per batch: {choice.reason}",
        choice.min_ids_per_row,
    )


# Where calibrations live (see `keras_lookup.calibration`): read by every
# "auto" layer, written by `calibrate()`.
CACHE_DIR_ENV = "KERAS_LOOKUP_CACHE_DIR"
# 2: with the "multi_hot" form (0.2.1); version-1 files still read.
FORMAT_VERSION = 2


def cache_dir():
    """Where calibrations are stored (see the module docstring)."""
    if os.environ.get(CACHE_DIR_ENV):
        return os.environ[CACHE_DIR_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return os.path.join(base, "keras_lookup")


def device_kind():
    """`"CPU"`, `"TPU"` or `"GPU:<name>"`: the device TensorFlow places ops on."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return "GPU:" + details.get("device_name", "unknown")
    if tf.config.list_physical_devices("TPU"):
        return "TPU"
    return "CPU"


def calibration_path(dtype="float32", device=None):
    device = device or device_kind()
    slug = re.sub(r"[^A-Za-z0-9.]+", "_", device).strip("_").lower()
    name = f"{slug}-{tf.as_dtype(dtype).name}-tf{tf.__version__}.json"
    return os.path.join(cache_dir(), name)


def load_calibration(dtype="float32"):
    """The `Calibration` `"auto"` uses on this device for this compute dtype.

    A file written by `calibrate()` for this device, dtype and TensorFlow
    version; else the float32 one for this device; else the shipped CPU
    defaults, whose source then names what is missing.
    """
    device = device_kind()
    for candidate in dict.fromkeys([tf.as_dtype(dtype).name, "float32"]):
        path = calibration_path(candidate, device)
        if os.path.exists(path):
            note = "" if candidate == tf.as_dtype(dtype).name else f", for {dtype}"
            return _read(path, f"calibrated on this {device}{note}: {path}")
    if device == "CPU":
        return shipped_calibration()
    return shipped_calibration(
        f"; no calibration for {device} yet, run keras_lookup.calibrate()"
    )


def _read(path, source):
    try:
        with open(path) as f:
            return Calibration(json.load(f)["crossover"], source)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            f"Cannot read the keras_lookup calibration {path}: {error!r}. "
            "Delete the file, or run `keras_lookup.calibrate()` again to "
            f"rewrite it (or point {CACHE_DIR_ENV} elsewhere)."
        ) from error
