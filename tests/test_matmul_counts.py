"""The matmul strategy's count matrix: one bincount kernel per input layout,
the same outputs and gradients as the formulation it replaced.

Until 0.2 the matmul side scattered `(row, id, weight)` triples into a
`(rows, vocab)` matrix with `tf.scatter_nd`; `old_formulation` below keeps
that as the reference, and every input form (dense, masked, weighted, ragged,
sparse, multi-hot, invalid ids mapped to zeros, XLA) is checked against it:
the output, the table's gradient and the gradient of the per-id weights.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_lookup

VOCAB, DIM = 11, 4
# Row 1 is empty, row 2 holds id 5 twice; 0 is padding where `mask_zero`.
BAGS = [[3, 1, 4], [], [5, 9, 2, 6, 5], [7, 10]]
WEIGHTS = [[0.5, 2.0, 1.0], [], [1.5, 0.25, 3.0, 1.0, 0.5], [2.0, -1.0]]
WIDTH = max(len(b) for b in BAGS)
TABLE = np.random.default_rng(3).normal(size=(VOCAB, DIM)).astype("float32")
UPSTREAM = np.random.default_rng(4).normal(size=(len(BAGS), DIM)).astype("float32")

FORMS = (
    "dense",
    "dense_masked",
    "ragged",
    "sparse",
    "multi_hot_dense",
    "multi_hot_sparse",
)


def old_formulation(table, rows, ids, weights, nrows):
    """0.1's matmul: `scatter_nd((row, id) -> weight) @ table`."""
    coords = tf.stack([tf.cast(rows, tf.int32), tf.cast(ids, tf.int32)], axis=1)
    counts = tf.scatter_nd(coords, weights, [nrows, VOCAB])
    return tf.matmul(counts, table)


def inputs_for(form, weighted, invalid=False):
    """`(inputs, weights, flat)` with `flat(inputs, weights)` giving the
    `(rows, ids, weights)` triples the old formulation scattered."""
    bags = [[99 if invalid and i == 9 else i for i in b] for b in BAGS]
    if form.startswith("dense"):
        ids = np.zeros((len(bags), WIDTH), "int32")
        w = np.full((len(bags), WIDTH), 7.0, "float32")
        for r, (b, bw) in enumerate(zip(bags, WEIGHTS, strict=True)):
            ids[r, : len(b)] = b
            w[r, : len(b)] = bw
        masked = form == "dense_masked"
        if not masked:  # every padding slot is a real id 0 with its weight
            w[w == 7.0] = 0.75

        def flat(x, weights):
            keep = tf.reshape(x, [-1]) != 0 if masked else None
            vals = (
                tf.ones([tf.size(x)]) if weights is None else tf.reshape(weights, [-1])
            )
            if keep is not None:
                vals = tf.where(keep, vals, 0.0)
            rows = tf.range(tf.size(x)) // WIDTH
            return rows, tf.reshape(x, [-1]), vals

        return tf.constant(ids), tf.constant(w) if weighted else None, flat
    if form == "ragged":
        ids = tf.ragged.constant(bags, dtype=tf.int32, ragged_rank=1)
        w = tf.ragged.constant(WEIGHTS, dtype=tf.float32, ragged_rank=1)

        def flat(x, weights):
            vals = tf.ones_like(x.values, tf.float32) if weights is None else weights
            return x.value_rowids(), x.values, getattr(vals, "values", vals)

        return ids, w if weighted else None, flat
    if form == "sparse":
        indices = [[r, c] for r, b in enumerate(bags) for c in range(len(b))]
        shape = [len(bags), WIDTH]
        ids = tf.SparseTensor(indices, [i for b in bags for i in b], shape)
        w = tf.SparseTensor(indices, [x for b in WEIGHTS for x in b], shape)

        def flat(x, weights):
            vals = tf.ones_like(x.values, tf.float32) if weights is None else weights
            return x.indices[:, 0], x.values, getattr(vals, "values", vals)

        return tf.cast(ids, tf.int64), w if weighted else None, flat
    matrix = np.zeros((len(bags), VOCAB), "float32")
    for r, (b, bw) in enumerate(zip(bags, WEIGHTS, strict=True)):
        for i, x in zip(b, bw, strict=True):
            matrix[r, i] += x if weighted else 1.0
    if form == "multi_hot_sparse":

        def flat(x, weights):
            return x.indices[:, 0], x.indices[:, 1], x.values

        return tf.sparse.from_dense(matrix), None, flat

    def flat_dense(x, weights):
        rows, ids = np.meshgrid(range(len(bags)), range(VOCAB), indexing="ij")
        return rows.reshape(-1), ids.reshape(-1), tf.reshape(x, [-1])

    return tf.constant(matrix), None, flat_dense


def differentiable(x, weights, form):
    """The tensor whose gradient is compared: the weights, or the multi-hot
    matrix's values (a multi-hot matrix is its own weights)."""
    if form.startswith("multi_hot"):
        return x.values if isinstance(x, tf.SparseTensor) else x
    if weights is None:
        return None
    return (
        weights.values
        if isinstance(weights, (tf.RaggedTensor, tf.SparseTensor))
        else weights
    )


def rebuild(x, weights, form, values):
    """`(x, weights)` with the compared tensor replaced by `values`."""
    if form.startswith("multi_hot"):
        if isinstance(x, tf.SparseTensor):
            return tf.SparseTensor(x.indices, values, x.dense_shape), None
        return values, None
    if weights is None:
        return x, None
    if isinstance(weights, tf.RaggedTensor):
        return x, weights.with_flat_values(values)
    if isinstance(weights, tf.SparseTensor):
        return x, tf.SparseTensor(weights.indices, values, weights.dense_shape)
    return x, values


def new_and_old(form, weighted, invalid=False, jit=False):
    """Outputs and gradients (table, weights) of the layer and of the old
    formulation, under one `tf.function`."""
    x, weights, flat = inputs_for(form, weighted, invalid)
    layer = keras_lookup.DimensionReducer(
        VOCAB,
        DIM,
        strategy="matmul",
        combiner=None if form.startswith("multi_hot") else "sum",
        mask_zero=form == "dense_masked",
        input_format="multi_hot" if form.startswith("multi_hot") else "ids",
        invalid_ids="zeros" if invalid else "raise",
    )
    layer.build()
    layer.set_weights([TABLE])
    table = layer.kernel
    watched = differentiable(x, weights, form)

    @tf.function(jit_compile=jit)
    def run(values):
        results = []
        for path in ("new", "old"):
            with tf.GradientTape() as tape:
                tape.watch(values)
                xs, ws = rebuild(x, weights, form, values)
                if path == "new":
                    out = layer(xs, weights=ws)
                else:
                    rows, ids, vals = flat(xs, ws)
                    if invalid:  # the old path gave invalid ids weight 0
                        vals = tf.where((ids >= 0) & (ids < VOCAB), vals, 0.0)
                        ids = tf.where((ids >= 0) & (ids < VOCAB), ids, 0)
                    out = old_formulation(table, rows, ids, vals, len(BAGS))
                loss = tf.reduce_sum(out * UPSTREAM)
            grads = tape.gradient(loss, [table, values])
            results.append((out, tf.convert_to_tensor(grads[0]), grads[1]))
        return results

    values = watched if watched is not None else tf.zeros([0])
    (new, new_table, new_w), (old, old_table, old_w) = run(values)
    return new, old, new_table, old_table, new_w, old_w, watched is not None


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("form", FORMS)
def test_outputs_and_gradients_equal_the_old_formulation(form, weighted):
    new, old, new_table, old_table, new_w, old_w, has_w = new_and_old(form, weighted)
    np.testing.assert_allclose(new, old, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new_table, old_table, rtol=1e-6, atol=1e-6)
    if has_w:
        np.testing.assert_allclose(new_w, old_w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("form", ["dense", "ragged", "sparse"])
def test_invalid_ids_mapped_to_zeros_weigh_nothing(form):
    new, old, new_table, old_table, new_w, old_w, _ = new_and_old(
        form, weighted=True, invalid=True
    )
    np.testing.assert_allclose(new, old, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new_table, old_table, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new_w, old_w, rtol=1e-6, atol=1e-6)
    # Id 9, the second entry of bag 2, is invalid: its weight gets no gradient.
    position = 2 * WIDTH + 1 if form == "dense" else 4
    assert tf.reshape(new_w, [-1])[position] == 0.0


@pytest.mark.parametrize("form", ["dense", "dense_masked"])
def test_under_xla(form):
    new, old, new_table, old_table, new_w, old_w, _ = new_and_old(
        form, weighted=True, invalid=False, jit=True
    )
    np.testing.assert_allclose(new, old, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new_table, old_table, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new_w, old_w, rtol=1e-6, atol=1e-6)


def test_counts_come_from_one_bincount_kernel_per_layout():
    # What makes the new formulation fast: no scatter of (row, id) pairs.
    for form, op in [("dense", "DenseBincount"), ("ragged", "RaggedBincount")]:
        x, _, _ = inputs_for(form, weighted=False)
        layer = keras_lookup.DimensionReducer(VOCAB, DIM, "matmul", combiner="sum")
        layer.build()
        graph = tf.function(layer).get_concrete_function(x).graph
        types = {o.type for o in graph.get_operations()}
        assert op in types and "ScatterNd" not in types, types
    x, _, _ = inputs_for("sparse", weighted=False)
    graph = tf.function(layer).get_concrete_function(x).graph
    assert "SparseBincount" in {o.type for o in graph.get_operations()}
