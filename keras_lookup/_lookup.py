"""Row lookup and bag reduction, shared by `Embedding` and `DimensionReducer`.

Every input form is reduced to one of two shapes of work:

- one vector per id (`lookup`): dense, ragged or sparse ids;
- one vector per bag (`reduce_bags`): flat `(ids, weights, row)` triples with a
  row count, built from dense-padded, ragged, sparse or multi-hot input.

Each has two strategies over the same `(vocab, dim)` table: `"gather"` selects
rows (its gradient is a `tf.IndexedSlices`), `"matmul"` multiplies a one-hot or
multi-hot matrix with the table (its gradient is dense).
"""

import tensorflow as tf

from keras_lookup import _checks

SUPPORTED_COMBINERS = ("sum", "mean", "sqrtn")
SUPPORTED_STRATEGIES = ("auto", "gather", "matmul")
SUPPORTED_INPUT_FORMATS = ("ids", "multi_hot")
HALF_DTYPES = (tf.bfloat16, tf.float16)


@tf.custom_gradient
def _widen(values):
    # A cast to float32 whose gradient stays float32: TensorFlow's cast would
    # round the gradient to the table's half dtype on its way back.
    return tf.cast(values, tf.float32), lambda upstream: upstream


class TableReader:
    """A `(vocab_size, dim)` table, read by row (`gather`) or whole (`matmul`).

    `stored` holds the table: a float variable, or a quantized one that
    `dequantize(rows, ids)` turns into float32 rows. `lora`, when set, is
    `(a, b, factor)` and the table is `stored + factor * a @ b`. A gather
    dequantizes and adapts only the rows it reads, so its gradient (to the
    table, or to `a`) stays row-sparse. A bfloat16 or float16 table is read
    in float32 and its gradient is float32 (a `tf.IndexedSlices` for a
    gather), for the optimizer to round once, stochastically.
    """

    def __init__(self, stored, vocab_size, dim, dequantize=None, lora=None):
        self.vocab_size = vocab_size
        self.dim = dim
        self._half = tf.as_dtype(stored.dtype) in HALF_DTYPES
        if self._half:
            dequantize = lambda rows, ids: _widen(rows)  # noqa: E731
        self.dtype = tf.float32 if dequantize else tf.as_dtype(stored.dtype)
        self._stored = stored
        self._dequantize = dequantize
        self._lora = lora

    def gather(self, ids):
        rows = tf.gather(self._stored, ids)
        if self._dequantize is not None:
            rows = self._dequantize(rows, ids)
        if self._lora is not None:
            a, b, factor = self._lora
            low_rank = tf.tensordot(tf.gather(a, ids), tf.cast(b, a.dtype), 1)
            rows = rows + tf.cast(factor * low_rank, rows.dtype)
        return rows

    def matmul(self, x):
        """`x @ table` for a `(n, vocab_size)` float matrix `x`."""
        x = tf.cast(x, self.dtype)
        if self._dequantize is not None:
            return tf.matmul(x, self.whole())  # LoRA's delta included
        out = tf.matmul(x, self._stored)
        if self._lora is not None:
            a, b, factor = self._lora
            low_rank = tf.matmul(tf.matmul(x, tf.cast(a, x.dtype)), tf.cast(b, x.dtype))
            out = out + factor * low_rank
        return out

    def times_transpose(self, x):
        """`x @ table^T` for a `(n, dim)` matrix `x`."""
        return tf.matmul(tf.cast(x, self.dtype), self.whole(), transpose_b=True)

    def whole(self):
        """The whole float table, e.g. for a tied output projection."""
        if self._lora is None and (self._dequantize is None or self._half):
            table = tf.convert_to_tensor(self._stored)
            return _widen(table) if self._half else table
        return self.gather(tf.range(self.vocab_size))


def rows(table, ids, strategy):
    """One table row per id in the flat or dense int tensor `ids`."""
    if strategy == "gather":
        return table.gather(ids)
    one_hot = tf.one_hot(ids, table.vocab_size, dtype=table.dtype)
    out = table.matmul(tf.reshape(one_hot, [-1, table.vocab_size]))
    return tf.reshape(out, tf.concat([tf.shape(ids), [table.dim]], 0))


def _checked_rows(table, ids, valid, fill, strategy):
    """Rows for `ids`; where `valid` is False, `fill` instead (see validate_ids).

    With `fill=0` only the valid ids are looked up, so invalid ones send no
    gradient at all (as `safe_embedding_lookup_sparse` prunes them). XLA needs
    static shapes, so there invalid ids look up row 0 and are masked out: their
    gradient is zero, but a row-sparse gradient still lists row 0.
    """
    if valid is None:
        return rows(table, ids, strategy)
    if fill == 0.0 and not _checks.in_xla_context():
        positions = tf.where(valid)
        found = rows(table, tf.gather_nd(ids, positions), strategy)
        shape = tf.concat(
            [tf.shape(ids, tf.int64), tf.constant([table.dim], tf.int64)], 0
        )
        return tf.scatter_nd(positions, found, shape)
    out = rows(table, ids, strategy)
    return tf.where(valid[..., None], out, tf.constant(fill, out.dtype))


def lookup(table, ids, weights, strategy, check, layer_name):
    """One vector per id; `check(ids) -> (ids, valid, fill)` validates ids.

    Dense ids of shape `S` give `S + (dim,)`; ragged ids give ragged output;
    sparse ids give a dense `dense_shape + (dim,)` output with zero vectors
    where the sparse input has no entry. Per-id `weights` only mean something
    in a bag, so they are refused here.
    """
    if weights is not None:
        raise ValueError(
            f"Layer '{layer_name}' received `weights`, which only apply to bags "
            "of ids. Pass `combiner=` ('sum', 'mean' or 'sqrtn') to use them."
        )
    if isinstance(ids, tf.RaggedTensor):
        flat, valid, fill = check(ids.flat_values)
        return ids.with_flat_values(_checked_rows(table, flat, valid, fill, strategy))
    if isinstance(ids, tf.SparseTensor):
        flat, valid, fill = check(ids.values)
        out = _checked_rows(table, flat, valid, fill, strategy)
        shape = tf.concat([ids.dense_shape, tf.constant([table.dim], tf.int64)], 0)
        return tf.scatter_nd(ids.indices, out, shape)
    safe, valid, fill = check(ids)
    return _checked_rows(table, safe, valid, fill, strategy)


class Bags:
    """Flat bag contents: `ids[i]` with weight `weights[i]` belongs to row `row[i]`.

    `weights` is `None` when every id counts once. Output rows are laid out in
    `outer_shape` (the input's shape without its last axis). The layout the
    bags came in is kept, because it makes both strategies cheaper: `per_row`
    (dense padded ids: every bag holds exactly that many entries, row after
    row, so sums over a bag are plain reductions), `splits` (ragged ids: row
    splits, so rows are sorted and counts come from one `RaggedBincount`),
    `sparse` (sparse ids or multi-hot: `(indices, dense_shape)`), or `dense`
    (a dense `(nrows, vocab)` multi-hot matrix; `ids` is then `None`). `row`
    is only computed where a branch needs it. `keep`, when set, marks the
    entries that count: the others (invalid ids under `invalid_ids="zeros"`)
    already have weight 0, and the gather leaves them out, so that they send
    no gradient at all (see `_checked_rows`).
    """

    def __init__(
        self,
        ids,
        weights,
        nrows,
        outer_shape,
        per_row=None,
        splits=None,
        sparse=None,
        dense=None,
        keep=None,
    ):
        self.ids = ids
        self.weights = weights
        self.nrows = nrows
        self.outer_shape = outer_shape
        self.per_row = per_row
        self.splits = splits
        self.sparse = sparse
        self.dense = dense
        self.keep = keep

    def row(self):
        """The bag of each entry (not cached: it may be built inside a branch)."""
        if self.splits is not None:
            return tf.ragged.row_splits_to_segment_ids(self.splits)
        if self.sparse is not None:
            return self.sparse[0][:, 0]
        return tf.range(tf.size(self.ids)) // tf.maximum(self.per_row, 1)

    def entries(self):
        """`(ids, weights, row, per_row, sorted_rows)` of what a gather reads."""
        if self.dense is not None:
            coords = tf.where(tf.not_equal(self.dense, 0))
            ids = tf.cast(coords[:, 1], _checks.index_dtype(self.dense.shape[-1]))
            return ids, tf.gather_nd(self.dense, coords), coords[:, 0], None, True
        ids, weights, row = self.ids, self.weights, self.row()
        sorted_rows = self.sparse is None
        if self.keep is not None:
            entries = (ids, weights, row)
            ids, weights, row = (tf.boolean_mask(t, self.keep) for t in entries)
            return ids, weights, row, None, sorted_rows
        return ids, weights, row, self.per_row, sorted_rows

    def row_sums(self, values, row=None, per_row=None, sorted_rows=False):
        """Sums `values` (one per entry, or one row per entry) over each bag.

        Without `row`, `values` are laid out like all the bags' entries (or
        like `dense`).
        """
        if row is None:
            if self.dense is not None:
                return tf.reduce_sum(tf.reshape(values, tf.shape(self.dense)), axis=1)
            row, per_row = self.row(), self.per_row
            sorted_rows = self.sparse is None
        if per_row is not None:
            shape = tf.concat([[self.nrows, per_row], tf.shape(values)[1:]], 0)
            return tf.reduce_sum(tf.reshape(values, shape), axis=1)
        if sorted_rows and not _checks.in_xla_context():
            # On CPU the sorted kernel is ~2.5x faster (forward + backward,
            # 16k ids x 64); it leaves out trailing empty bags, so pad them.
            sums = tf.math.segment_sum(values, row)
            missing = tf.cast(self.nrows, tf.int64) - tf.shape(sums, tf.int64)[0]
            pad = [[0, missing]] + [[0, 0]] * (values.shape.rank - 1)
            return tf.pad(sums, pad)
        return tf.math.unsorted_segment_sum(values, row, self.nrows)

    def all_weights(self):
        """Every entry's weight, laid out as `row_sums` takes them."""
        if self.dense is not None:
            return tf.reshape(self.dense, [-1])
        if self.weights is None:
            return tf.ones_like(self.ids, dtype=tf.float32)
        return self.weights

    def counts(self, vocab_size):
        """The `(nrows, vocab_size)` float32 multi-hot / count matrix.

        Entry `[r, v]` sums the weights of id `v` in bag `r`, so an id twice in
        a bag counts twice. One bincount kernel per layout builds it (2-4x
        faster on CPU than a `scatter_nd` of `(row, id)` pairs); XLA, which
        lacks the ragged and sparse bincounts, scatters.
        """
        if self.dense is not None:
            return tf.cast(self.dense, tf.float32)
        if _checks.in_xla_context() and self.per_row is None:
            return self._scattered_counts(vocab_size)
        if self.splits is not None:

            def bincount(weights):
                return tf.raw_ops.RaggedBincount(
                    splits=tf.cast(self.splits, tf.int64),
                    values=self.ids,
                    size=vocab_size,
                    weights=weights,
                )

        elif self.sparse is not None:

            def bincount(weights):
                indices, dense_shape = self.sparse
                return tf.raw_ops.SparseBincount(
                    indices=indices,
                    values=self.ids,
                    dense_shape=dense_shape,
                    size=vocab_size,
                    weights=weights,
                )

        else:
            shape = tf.stack([self.nrows, self.per_row])

            def bincount(weights):
                if weights.shape.rank == 1 and weights.shape[0] != 0:
                    weights = tf.reshape(weights, shape)
                return tf.raw_ops.DenseBincount(
                    input=tf.reshape(self.ids, shape), size=vocab_size, weights=weights
                )

        if self.weights is None:
            return bincount(tf.zeros([0], tf.float32))
        return _differentiable_counts(bincount, self.weights, self._coords)

    def _coords(self):
        index = self.ids.dtype
        return tf.stack([tf.cast(self.row(), index), self.ids], axis=1)

    def _scattered_counts(self, vocab_size):
        weights = self.all_weights()
        index = self.ids.dtype
        shape = tf.stack([tf.cast(self.nrows, index), tf.constant(vocab_size, index)])
        return tf.scatter_nd(self._coords(), tf.cast(weights, tf.float32), shape)


def _differentiable_counts(bincount, weights, coords):
    """`bincount(weights)`, with the gradient of a scatter of the weights.

    TensorFlow's bincount kernels have no gradient; as for `scatter_nd`, an
    entry's weight receives the upstream gradient at its `(row, id)`.
    """

    @tf.custom_gradient
    def counts(w):
        def grad(upstream):
            return tf.gather_nd(upstream, coords())

        return bincount(w), grad

    return counts(tf.cast(weights, tf.float32))


def bag_sums(table, bags, strategy):
    """Each bag's weighted sum of `table` rows, `(nrows, dim)` in its dtype."""
    if strategy == "matmul":
        counts = bags.counts(table.vocab_size)
        # A bincount's output shape is not inferred; a matmul of unknown
        # shape runs ~2x slower on CPU (forward + backward, oneDNN).
        counts.set_shape([None, table.vocab_size])
        return table.matmul(counts)
    if bags.dense is not None and bags.dense.dtype.is_floating:
        return _gathered_matrix_sums(table, bags)
    return _gathered_sums(table, bags)


def _gathered_sums(table, bags):
    ids, weights, row, per_row, sorted_rows = bags.entries()
    vectors = table.gather(ids)
    if weights is not None:
        vectors = vectors * tf.cast(weights, table.dtype)[:, None]
    return bags.row_sums(vectors, row, per_row, sorted_rows)


def _gathered_matrix_sums(table, bags):
    """The gather's `matrix @ table` for a dense multi-hot matrix, with the
    matrix's gradient of that product.

    The gather reads only the nonzero entries, so autodiff alone would give
    the matrix a gradient there only; the gradient of `matrix @ table` is
    `upstream @ table^T` at every entry, what matmul and `keras.layers.Dense`
    give. In a graph it costs nothing unless something upstream of the
    matrix trains (the graph prunes it otherwise); an eager step computes it.
    """
    matrix = bags.dense
    frozen = Bags(
        None, None, bags.nrows, bags.outer_shape, dense=tf.stop_gradient(matrix)
    )
    sums = _gathered_sums(table, frozen)

    @tf.custom_gradient
    def with_matrix_gradient(sums, matrix):
        def grad(upstream):
            return upstream, tf.cast(table.times_transpose(upstream), matrix.dtype)

        return tf.identity(sums), grad

    return with_matrix_gradient(sums, matrix)


def combine(table, sums, bags, combiner):
    """Applies `combiner` to bag sums and lays them out in `outer_shape`.

    Empty bags (and bags whose weights are all zero) give a zero vector.
    """
    if combiner in ("mean", "sqrtn"):
        weights = tf.cast(bags.all_weights(), tf.float32)
        if combiner == "mean":
            denominator = bags.row_sums(weights)
        else:
            denominator = tf.sqrt(bags.row_sums(weights**2))
        sums = tf.math.divide_no_nan(sums, tf.cast(denominator, sums.dtype)[:, None])
    outer = tf.cast(bags.outer_shape, tf.int64)
    out_shape = tf.concat([outer, tf.constant([table.dim], tf.int64)], 0)
    return tf.reshape(sums, out_shape)


def reduce_bags(table, bags, combiner, strategy):
    """Combines each bag's rows of `table` with `"sum"`, `"mean"` or `"sqrtn"`.

    The sums are computed in the table's dtype.
    """
    return combine(table, bag_sums(table, bags, strategy), bags, combiner)


def _weights_dtype(weights, layer_name):
    dtype = tf.as_dtype(weights.dtype)
    if not (dtype.is_floating or dtype.is_integer):
        raise TypeError(
            f"Layer '{layer_name}' received weights of dtype {dtype.name}; "
            "weights must be a float or integer tensor shaped like the ids."
        )


def _check_same(ok, layer_name, what):
    return _checks.assert_all(
        ok,
        tf.zeros_like(ok, tf.int32),
        f"Layer '{_checks.safe_name(layer_name)}' received weights whose "
        f"{what} do not match the ids'. Pass `weights` shaped exactly like the "
        "ids (the same dense shape, ragged row lengths or sparse indices).",
    )


def _require_type(weights, cls, form, layer_name):
    if not isinstance(weights, cls):
        raise TypeError(
            f"Layer '{layer_name}' received {form} ids, so `weights` must be a "
            f"tf.{cls.__name__} too. Received: {type(weights).__name__}"
        )


def _matching_values(weights, ids_layout, weights_layout, what, layer_name):
    """`weights.values`, once the weights' layout (row splits or indices) is
    checked equal to the ids'; every use of the values waits for the check."""
    a, b = ids_layout, tf.cast(weights_layout, ids_layout.dtype)
    same = tf.reduce_all(tf.shape(a) == tf.shape(b))
    same = tf.cond(same, lambda: tf.reduce_all(a == b), lambda: same)
    return _checks.with_dependency(weights.values, _check_same(same, layer_name, what))


def _check_weights(weights, combiner, layer_name):
    if combiner != "mean":
        return None
    return _checks.assert_all(
        weights >= 0,
        weights,
        f"Layer '{_checks.safe_name(layer_name)}' received weight {{}} (at flat "
        'position {}), but `combiner="mean"` needs non-negative weights: it '
        "divides by their sum. Use non-negative weights, or "
        '`combiner="sum"` / `"sqrtn"`, which accept any sign.',
    )


def bags_from_ids(ids, weights, keep, check, combiner, layer_name):
    """Bags from `(..., ids_per_row)` dense, 2D ragged or 2D sparse ids.

    `keep` (dense input only) is a boolean tensor shaped like `ids`; entries
    where it is False are padding and are left out of their bag.
    """
    if weights is not None:
        _weights_dtype(weights, layer_name)
    if isinstance(ids, tf.RaggedTensor):
        if ids.shape.rank != 2 or ids.ragged_rank != 1:
            raise ValueError(
                f"Layer '{layer_name}' with a combiner takes ragged ids of shape "
                f"(batch, None). Received a ragged tensor of shape {ids.shape}."
            )
        if weights is not None:
            _require_type(weights, tf.RaggedTensor, "ragged", layer_name)
            weights = _matching_values(
                weights, ids.row_splits, weights.row_splits, "row lengths", layer_name
            )
        flat, nrows = ids.values, ids.nrows()
        layout = {"splits": ids.row_splits}
    elif isinstance(ids, tf.SparseTensor):
        if ids.shape.rank != 2:
            raise ValueError(
                f"Layer '{layer_name}' with a combiner takes sparse ids of rank 2, "
                f"(batch, ids_per_row). Received rank {ids.shape.rank}."
            )
        if weights is not None:
            _require_type(weights, tf.SparseTensor, "sparse", layer_name)
            weights = _matching_values(
                weights, ids.indices, weights.indices, "indices", layer_name
            )
        flat, nrows = ids.values, ids.dense_shape[0]
        layout = {"sparse": (ids.indices, ids.dense_shape)}
    else:
        if ids.shape.rank is not None and ids.shape.rank < 2:
            raise ValueError(
                f"Layer '{layer_name}' with a combiner takes ids of shape "
                f"(batch, ..., ids_per_row), rank >= 2. Received shape {ids.shape}."
            )
        if weights is not None:
            if isinstance(weights, (tf.RaggedTensor, tf.SparseTensor)):
                raise TypeError(
                    f"Layer '{layer_name}' received dense ids, so `weights` must "
                    f"be dense too. Received: {type(weights).__name__}"
                )
            if not weights.shape.is_compatible_with(ids.shape):
                raise ValueError(
                    f"Layer '{layer_name}' received weights of shape "
                    f"{weights.shape} for ids of shape {ids.shape}; they must "
                    "match."
                )
            same = tf.reduce_all(tf.shape(weights) == tf.shape(ids))
            # Every use of the weights waits for the check, so a mismatch
            # reports this message rather than a shape error from some op.
            same_check = _check_same(same, layer_name, "shape")
            weights = tf.reshape(_checks.with_dependency(weights, same_check), [-1])
        shape = tf.shape(ids)
        outer = shape[:-1]
        nrows = tf.reduce_prod(outer)
        flat = tf.reshape(ids, [-1])
        layout = {"per_row": shape[-1], "outer_shape": outer}
        if keep is not None:
            keep = tf.reshape(keep, [-1])
            if weights is None:
                weights = tf.cast(keep, tf.float32)
            else:
                weights = tf.where(keep, weights, tf.zeros_like(weights))
    flat, valid, fill = check(flat)
    if weights is not None:
        sign_check = _check_weights(weights, combiner, layer_name)
        weights = _checks.with_dependency(weights, sign_check)
    keep = None
    if valid is not None:
        weights = tf.ones_like(flat, tf.float32) if weights is None else weights
        weights = tf.cast(weights, tf.float32)
        weights = tf.where(valid, weights, tf.constant(fill, tf.float32))
        if fill == 0.0 and not _checks.in_xla_context():
            # Invalid ids weigh 0, and a gather leaves them out of their bags
            # outright, so that they send no gradient (see `_checked_rows`).
            keep = valid
    layout.setdefault("outer_shape", tf.reshape(nrows, [1]))
    return Bags(flat, weights, nrows, keep=keep, **layout)


def bags_from_multi_hot(x, vocab_size, combiner, layer_name):
    """Bags from a `(..., vocab_size)` multi-hot / count matrix, dense or sparse.

    Entry `x[..., j]` is the weight of id `j` in that row's bag.
    """
    _weights_dtype(x, layer_name)
    if x.shape.rank is not None and x.shape[-1] not in (None, vocab_size):
        raise ValueError(
            f"Layer '{layer_name}' expects multi-hot input of shape "
            f"(..., vocab_size={vocab_size}). Received shape {x.shape}."
        )
    if isinstance(x, tf.SparseTensor) and x.shape.rank != 2:
        raise ValueError(
            f"Layer '{layer_name}' takes sparse multi-hot input of rank 2, "
            f"(batch, {vocab_size}). Received rank {x.shape.rank}."
        )
    # The width may only be known at run time; check it before anything
    # reshapes or indexes with it (a static width needs no check).
    if isinstance(x, tf.SparseTensor):
        width = x.dense_shape[-1]
    else:
        width = x.shape[-1] if x.shape.rank else None
        width = tf.shape(x)[-1] if width is None else width
    width_check = None
    if not isinstance(width, int):
        width_check = _checks.assert_all(
            tf.equal(tf.cast(width, tf.int64), vocab_size),
            width,
            f"Layer '{_checks.safe_name(layer_name)}' expects multi-hot input "
            f"with {vocab_size} columns (`vocab_size`). Received {{}} columns.",
        )
    if isinstance(x, tf.SparseTensor):
        indices = _checks.with_dependency(x.indices, width_check)
        ids = tf.cast(indices[:, 1], _checks.index_dtype(vocab_size))
        nrows, weights = x.dense_shape[0], x.values
        weights = _checks.with_dependency(
            weights, _check_weights(weights, combiner, layer_name)
        )
        return Bags(
            ids,
            weights,
            nrows,
            tf.reshape(nrows, [1]),
            sparse=(indices, x.dense_shape),
        )
    outer = tf.shape(x)[:-1]
    matrix = tf.reshape(_checks.with_dependency(x, width_check), [-1, vocab_size])
    weights_check = _check_weights(matrix, combiner, layer_name)
    matrix = _checks.with_dependency(matrix, weights_check)
    return Bags(None, None, tf.shape(matrix)[0], outer, dense=matrix)


def padding_keep(ids, mask, mask_zero):
    """Which entries of dense ids belong in their bag (None: all of them)."""
    if isinstance(ids, (tf.RaggedTensor, tf.SparseTensor)):
        return None
    keep = tf.not_equal(ids, 0) if mask_zero else None
    if mask is not None:
        mask = tf.cast(mask, tf.bool)
        keep = mask if keep is None else keep & mask
    return keep


def with_mask(outputs, mask):
    if mask is not None:
        _set_keras_mask(outputs, mask)
    return outputs


try:  # Keras has no public setter; this is what its own layers call.
    from keras.src.backend import set_keras_mask as _set_keras_mask
except ImportError:  # pragma: no cover - older Keras 3 releases

    def _set_keras_mask(x, mask):
        x._keras_mask = mask
