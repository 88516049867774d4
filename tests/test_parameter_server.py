"""Tables sharded across parameter servers (`ParameterServerStrategy`).

Each test runs in a child process with an in-process cluster (one worker, two
ps tasks, tables of >= 10 rows split into row blocks): TensorFlow connects a
process to one cluster only. With one worker, scheduled steps run in order,
so a sharded table must give what the unsharded one gives.
"""

import os

import numpy as np
from helpers import run_python

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMMON = """
import contextlib, json, os, sys
sys.path.insert(0, "tests")
import numpy as np
import tensorflow as tf
import keras
import keras_lookup
import ps_cluster

V, D = 11, 4
rng = np.random.default_rng(0)
dense = tf.constant(rng.integers(0, V, (4, 3)), tf.int32)
weights = tf.constant(rng.uniform(0.5, 2.0, (4, 3)), tf.float32)
keep = tf.constant(rng.uniform(size=(4, 3)) > 0.3)
ragged = tf.ragged.constant([[1, 10, 3], [], [4], [5, 5, 0, 9]], tf.int32)
sparse = tf.sparse.from_dense(
    tf.constant([[1, 0, 3], [0, 0, 0], [4, 7, 0], [10, 2, 2]])
)
sparse_w = tf.SparseTensor(
    sparse.indices, tf.linspace(0.5, 2.0, tf.size(sparse.values)), sparse.dense_shape
)
bad = tf.constant([[1, 11, -1], [2, 3, 10]])
multi_hot = tf.constant(rng.integers(0, 3, (4, V)), tf.float32)
"""

FORMS = """
E, R = keras_lookup.Embedding, keras_lookup.DimensionReducer
CASES = {
    # name: (layer, call arguments, call keyword arguments)
    "single_dense": (lambda: E(V, D), (dense,), {}),
    "single_ragged": (lambda: E(V, D), (ragged,), {}),
    "single_sparse": (lambda: E(V, D), (sparse,), {}),
    "mean_dense_weighted": (
        lambda: E(V, D, combiner="mean"), (dense,), {"weights": weights}
    ),
    "sum_ragged": (lambda: E(V, D, combiner="sum"), (ragged,), {}),
    "sqrtn_sparse_weighted": (
        lambda: E(V, D, combiner="sqrtn"), (sparse,), {"weights": sparse_w}
    ),
    "mean_mask_zero": (lambda: E(V, D, combiner="mean", mask_zero=True), (dense,), {}),
    "sum_mask_argument": (lambda: E(V, D, combiner="sum"), (dense,), {"mask": keep}),
    "invalid_zeros_single": (lambda: E(V, D, invalid_ids="zeros"), (bad,), {}),
    "invalid_zeros_bags": (
        lambda: E(V, D, combiner="sum", invalid_ids="zeros"), (bad,), {}
    ),
    "reducer_bags_bias": (
        lambda: R(V, D, combiner="mean", use_bias=True), (dense,), {}
    ),
    "reducer_multi_hot": (
        lambda: R(V, D, input_format="multi_hot", combiner="sum"), (multi_hot,), {}
    ),
    "reducer_single_auto": (lambda: R(V, D), (dense,), {}),
    # Applied part by part, on each part's ps task.
    "l2_and_row_norm": (
        lambda: E(
            V,
            D,
            combiner="sum",
            embeddings_regularizer=keras.regularizers.L2(0.1),
            embeddings_constraint=keras.constraints.MaxNorm(0.3, axis=1),
        ),
        (dense,),
        {},
    ),
}
O = keras_lookup.optimizers
OPTIMIZERS = {
    "lazy_adam": lambda: O.LazyAdam(0.05),
    "lazy_sgd": lambda: O.LazySGD(0.1, momentum=0.9),
    "lazy_adagrad": lambda: O.LazyAdagrad(0.1),
    "rowwise_adagrad": lambda: O.LazyRowwiseAdagrad(0.1),
    "rowwise_adam": lambda: O.LazyRowwiseAdam(0.05),
    "keras_adam": lambda: keras.optimizers.Adam(0.05),
}

def dense_out(out):
    return out.to_tensor() if isinstance(out, tf.RaggedTensor) else out

def train(case, optimizer, sharded, initial, steps=3):
    make, args, kwargs = CASES[case]
    with strategy.scope() if sharded else contextlib.nullcontext():
        layer = make()
        layer.build()
        layer.set_weights(initial(layer))
        opt = OPTIMIZERS[optimizer]()
        opt.build(layer.trainable_variables)
    seen = []

    def body():
        with tf.GradientTape() as tape:
            out = dense_out(layer(*args, **kwargs))
            loss = tf.reduce_sum(tf.square(out - 0.3)) + sum(layer.losses)
        grads = tape.gradient(loss, layer.trainable_variables)
        seen.append([type(g).__name__ for g in grads])
        opt.apply(grads, layer.trainable_variables)
        return out

    if sharded:
        step = tf.function(lambda: strategy.run(body))
        run = lambda: coordinator.schedule(step).fetch()
    else:
        run = tf.function(body)
    outs = [np.asarray(run()) for _ in range(steps)]
    return layer, outs, layer.get_weights(), seen, opt
"""


def test_every_lookup_form_and_optimizer_matches_the_unsharded_table():
    code = (
        COMMON
        + "strategy, coordinator = ps_cluster.strategy(parts=3)\n"
        + FORMS
        + """
# A sharded table is initialized with the unsharded table's values.
keras.utils.set_random_seed(7)
whole = E(V, D); whole.build()
keras.utils.set_random_seed(7)
with strategy.scope():
    parted = E(V, D); parted.build()
assert [tuple(p.shape) for p in parted.table_parts] == [(4, D), (4, D), (3, D)]
devices = [p.value.device for p in parted.table_parts]
assert devices[0] == devices[2] != devices[1], devices
np.testing.assert_array_equal(parted.get_weights()[0], whole.get_weights()[0])

runs = [(case, "lazy_adam") for case in CASES]
runs += [("mean_dense_weighted", name) for name in OPTIMIZERS if name != "lazy_adam"]
runs += [("reducer_bags_bias", "rowwise_adagrad")]
for case, optimizer in runs:
    start = {}
    def initial(layer):
        if not start:
            start["w"] = [
                np.random.default_rng(1).uniform(-0.5, 0.5, w.shape).astype("float32")
                for w in layer.get_weights()
            ]
        return start["w"]
    _, outs, final, _, _ = train(case, optimizer, False, initial)
    layer, sharded_outs, sharded_final, seen, opt = train(
        case, optimizer, True, initial
    )
    for a, b in zip(outs, sharded_outs):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=case + optimizer)
    for a, b in zip(final, sharded_final):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=case + optimizer)
    # Nothing densifies a part: each part's gradient is row-sparse (but a
    # regularizer's gradient is a dense one, as on one machine).
    for names in seen:
        sparse = case != "l2_and_row_norm"
        assert (names[:3] == ["IndexedSlices"] * 3) == sparse, (case, names)
    # Each part's slots are that part of the slot, on the part's ps task.
    slots = [v for v in opt.variables if hasattr(v, "_keras_lookup_part")]
    if optimizer.startswith(("lazy", "rowwise")):
        assert len(slots) == 3 * len(opt.variables[2:]) // len(layer.weights)
        for slot in slots:
            part = layer.table_parts[slot._keras_lookup_part.index]
            assert slot.value.device == part.value.device, slot.path
            assert slot.shape[0] == part.shape[0], slot.path
    print(case, optimizer, "ok")
"""
        + """
print("done")
"""
    )
    out = run_python(code, REPO)
    assert "done" in out


def test_what_needs_the_whole_table_raises_and_bad_ids_still_raise():
    code = (
        COMMON
        + "strategy, coordinator = ps_cluster.strategy(parts=2)\n"
        + """
def raises(error, words, fn):
    try:
        fn()
    except error as e:
        for word in words:
            assert word in str(e), (word, str(e))
        return
    raise AssertionError(f"no {error.__name__} for {words}")

with strategy.scope():
    layer = keras_lookup.Embedding(V, D)
    layer.build()
    auto = keras_lookup.DimensionReducer(V, D, combiner="sum")
    auto.build()
assert auto.strategy_choice.strategy == "gather", auto.strategy_choice
# `weights=` takes the logical table.
table = np.arange(V * D, dtype="float32").reshape(V, D)
with strategy.scope():
    given = keras_lookup.Embedding(V, D, weights=table)
assert len(given.table_parts) == 2
np.testing.assert_array_equal(given.get_weights()[0], table)
np.testing.assert_array_equal(given(tf.constant([10, 0])).numpy(), table[[10, 0]])
split = "split across parameter servers"
raises(NotImplementedError, [split, "reverse=True"],
       lambda: layer(tf.zeros((2, D)), reverse=True))
raises(NotImplementedError, [split, "quantization"], lambda: layer.quantize("int8"))
with strategy.scope():
    raises(NotImplementedError, [split, "matmul"],
           lambda: keras_lookup.DimensionReducer(V, D, strategy="matmul").build())
    raises(NotImplementedError, [split, "LoRA"],
           lambda: keras_lookup.Embedding(V, D, lora_rank=2).build())
    raises(ValueError, [split, "MaxNorm", "axis=1"],
           lambda: keras_lookup.Embedding(
               V, D, embeddings_constraint=keras.constraints.MaxNorm()).build())
# The whole vocabulary, not a part's rows, bounds the ids; eagerly on the
# coordinator and in a step scheduled on a worker.
raises(tf.errors.InvalidArgumentError, ["received id 11", "[0, 11)"],
       lambda: layer(tf.constant([[1, 11]])))
np.testing.assert_allclose(
    layer(tf.constant([10])).numpy(), layer.get_weights()[0][10:], rtol=1e-6)
step = tf.function(lambda: strategy.run(lambda: layer(tf.constant([[3, 11]]))))
raises(tf.errors.InvalidArgumentError, ["received id 11"],
       lambda: coordinator.schedule(step).fetch())
print("done")
"""
    )
    assert "done" in run_python(code, REPO)


SAVE = """
def build(optimizer=True):
    model = keras.Sequential([
        keras.Input((3,), dtype="int32"),
        keras_lookup.Embedding(V, D, combiner="mean"),
        keras_lookup.Dense(2),
    ])
    if optimizer:
        model.optimizer = keras_lookup.optimizers.LazyRowwiseAdam(0.05)
        model.optimizer.build(model.trainable_variables)
    return model
"""


def test_a_sharded_checkpoint_restores_in_one_process_and_another_shard_count(
    tmp_path,
):
    first = (
        COMMON
        + "strategy, coordinator = ps_cluster.strategy(parts=3)\n"
        + SAVE
        + """
folder = sys.argv[1]
with strategy.scope():
    model = build()

def body():
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(model(dense) - 1.0))
    grads = tape.gradient(loss, model.trainable_variables)
    model.optimizer.apply(grads, model.trainable_variables)

step = tf.function(lambda: strategy.run(body))
for _ in range(3):
    coordinator.schedule(step)
coordinator.join()
assert len(model.layers[0].table_parts) == 3
tf.train.Checkpoint(model=model).write(os.path.join(folder, "ckpt"))
keras_lookup.save_state(model, os.path.join(folder, "state"))
# The logical view: as many arrays as the unsharded model has.
np.savez(os.path.join(folder, "expected.npz"), *model.layers[0].get_weights(),
         *model.layers[1].get_weights())

# Into the same model built in this process without any strategy.
plain = build()
tf.train.Checkpoint(model=plain).read(os.path.join(folder, "ckpt")).assert_consumed()
expected = np.load(os.path.join(folder, "expected.npz"))
for a, b in zip(plain.get_weights(), expected.values()):
    np.testing.assert_array_equal(a, b)
keras_lookup.save_state(plain, os.path.join(folder, "ckpt_plain"))
# A .weights.h5 file of the sharded model holds the logical table too.
model.save_weights(os.path.join(folder, "sharded.weights.h5"))
plain = build(optimizer=False)
plain.load_weights(os.path.join(folder, "sharded.weights.h5"))
for a, b in zip(plain.get_weights(), expected.values()):
    np.testing.assert_array_equal(a, b)
plain = build()
keras_lookup.load_state(plain, os.path.join(folder, "state"))
keras_lookup.save_state(plain, os.path.join(folder, "state_plain"))
print("done")
"""
    )
    assert "done" in run_python(first, REPO, str(tmp_path))
    second = (
        COMMON
        + "strategy, coordinator = ps_cluster.strategy(parts=2)\n"
        + SAVE
        + """
folder = sys.argv[1]
expected = list(np.load(os.path.join(folder, "expected.npz")).values())
with strategy.scope():
    model = build()
assert len(model.layers[0].table_parts) == 2
tf.train.Checkpoint(model=model).read(os.path.join(folder, "ckpt")).assert_consumed()
got = model.layers[0].get_weights() + model.layers[1].get_weights()
for a, b in zip(got, expected):
    np.testing.assert_array_equal(a, b)
keras_lookup.save_state(model, os.path.join(folder, "ckpt_two"))
with strategy.scope():
    model = build()
keras_lookup.load_state(model, os.path.join(folder, "state"))
keras_lookup.save_state(model, os.path.join(folder, "state_two"))
print("done")
"""
    )
    assert "done" in run_python(second, REPO, str(tmp_path))
    # The optimizer's slots too, through either format: the same logical arrays.
    files = sorted(f for f in os.listdir(tmp_path / "state") if f.endswith(".npy"))
    # Table, kernel, bias; iterations, learning rate, 2 slots for each of 3.
    assert len(files) == 11
    for name in files:
        saved = np.load(tmp_path / "state" / name)
        for other in ("state_plain", "state_two", "ckpt_plain", "ckpt_two"):
            np.testing.assert_array_equal(np.load(tmp_path / other / name), saved)


def test_parts_are_filled_with_the_rows_of_the_whole_table(monkeypatch):
    # Parts starting off a group of four entries (3 per row), in many slices.
    import keras
    import tensorflow as tf
    from tensorflow.python.ops import resource_variable_ops

    from keras_lookup import _sharded, _tables

    monkeypatch.setattr(_tables, "SLICE_SIZE", 8)
    shape = (50, 3)
    for initializer in (
        keras.initializers.RandomUniform(-1.0, 1.0, seed=3),
        keras.initializers.TruncatedNormal(seed=4),
        keras.initializers.GlorotNormal(seed=5),
        keras.initializers.Constant(0.5),
        keras.initializers.Orthogonal(seed=6),
    ):
        whole = np.asarray(initializer(shape, "float32"))
        seeds, rows = {}, []
        for start, stop in ((0, 17), (17, 34), (34, 50)):
            part = resource_variable_ops.UninitializedVariable(
                shape=(stop - start, 3), dtype=tf.float32
            )
            _sharded.fill_rows(part, initializer, shape, start, tf.float32, seeds)
            rows.append(part.numpy())
        np.testing.assert_array_equal(np.concatenate(rows), whole, err_msg=initializer)


def test_a_sharded_table_gives_a_multi_hot_input_its_full_gradient():
    # The gather's custom gradient for a dense multi-hot matrix needs
    # `upstream @ table^T`; a sharded table builds it one block of columns
    # per part (in a graph, only when that gradient is used).
    import tensorflow as tf

    from keras_lookup import _lookup, _sharded

    rng = np.random.default_rng(0)
    whole = rng.normal(size=(11, 4)).astype("float32")
    parts = [tf.Variable(whole[:6]), tf.Variable(whole[6:])]
    reader = _sharded.ShardedTableReader(parts, 11, 4, "layer")
    upstream = rng.normal(size=(3, 4)).astype("float32")
    np.testing.assert_allclose(
        reader.times_transpose(upstream), upstream @ whole.T, rtol=1e-5, atol=1e-6
    )
    counts = tf.constant(rng.integers(0, 2, (3, 11)), tf.float32)
    bags = _lookup.Bags(None, None, 3, [3], dense=counts)
    with tf.GradientTape() as tape:
        tape.watch(counts)
        sums = _lookup.bag_sums(reader, bags, "gather")
    np.testing.assert_allclose(sums, counts.numpy() @ whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        tape.gradient(sums, counts, output_gradients=tf.constant(upstream)),
        upstream @ whole.T,
        rtol=1e-5,
        atol=1e-5,
    )


def test_half_tables_and_keras_optimizers_shard_as_in_one_process():
    # One cluster, two partitioners: 3 parts, then 2 parts of the same tables.
    code = (
        COMMON
        + "strategy, coordinator = ps_cluster.strategy(parts=3)\n"
        + """
from keras_lookup import saving
two = tf.distribute.ParameterServerStrategy(
    strategy._test_resolver,
    variable_partitioner=lambda shape, dtype: [2 if shape[0] >= 10 else 1]
    + [1] * (shape.rank - 1),
)

def run(where, make_layer, make_optimizer, steps=3, stochastic=True):
    keras.utils.set_random_seed(7)
    with where.scope() if where else contextlib.nullcontext():
        model = keras.Sequential(
            [keras.Input((3,), dtype="int32"), make_layer(), keras.layers.Dense(2)]
        )
        model.optimizer = make_optimizer()
        model.optimizer._stochastic_rounding = stochastic
        model.optimizer.build(model.trainable_variables)
    initial = model.get_weights()

    def body():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(model(dense) - 0.3))
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply(grads, model.trainable_variables)

    if where:
        step = tf.function(lambda: where.run(body))
        for _ in range(steps):
            coordinator.schedule(step)
        coordinator.join()
    else:
        step = tf.function(body)
        for _ in range(steps):
            step()
    return model, initial

def logical(model):
    return [
        np.concatenate([np.atleast_1d(v.numpy()) for v, _ in parts])
        for _, _, parts in saving._logical_variables(model)
    ]

# Half tables: parts in the half dtype on their ps tasks, drawn as the
# unsharded table is; with rounding to nearest they train bit for bit as it,
# with stochastic rounding within a few units of the last place.
for dtype, ulp in (("bfloat16", 2**-7), ("float16", 2**-10)):
    half = lambda: keras_lookup.Embedding(V, D, combiner="sum", table_dtype=dtype)
    lazy = lambda: keras_lookup.optimizers.LazyAdam(0.05)
    for stochastic in (False, True):
        one, one_start = run(None, half, lazy, stochastic=stochastic)
        parted, parted_start = run(strategy, half, lazy, stochastic=stochastic)
        parts = parted.layers[0].table_parts
        assert [p.dtype for p in parts] == [dtype] * 3, [p.dtype for p in parts]
        assert len({p.value.device for p in parts}) == 2
        assert parted.get_weights()[0].dtype == one.get_weights()[0].dtype
        for a, b in zip(one_start, parted_start):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(one.get_weights(), parted.get_weights()):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            if stochastic:
                np.testing.assert_allclose(b, a, atol=4 * ulp, err_msg=dtype)
            else:
                np.testing.assert_array_equal(b, a, err_msg=dtype)
        moved = np.abs(np.asarray(parted.get_weights()[0], np.float64)
                       - np.asarray(parted_start[0], np.float64)).max()
        assert moved > 10 * ulp, moved

# Keras's own optimizers on a sharded table: their checkpoint holds the
# logical slots, which restore into one process and into another shard count.
table = lambda: keras_lookup.Embedding(V, D, combiner="sum")
folder = tempfile.mkdtemp()
for name, make in (
    ("adam", lambda: keras.optimizers.Adam(0.05)),
    ("sgd", lambda: keras.optimizers.SGD(0.1, momentum=0.9)),
    ("adagrad", lambda: keras.optimizers.Adagrad(0.1)),
):
    model, _ = run(strategy, table, make)
    path = tf.train.Checkpoint(model=model).write(os.path.join(folder, name))
    saved = logical(model)
    # Table, kernel, bias; iterations, learning rate, and per variable two
    # slots (Adam) or one.
    assert len(saved) == (11 if name == "adam" else 8), (name, len(saved))
    assert np.any(saved[5] != 0), name  # the table's first slot trained
    for where in (None, two):
        with where.scope() if where else contextlib.nullcontext():
            other = keras.Sequential(
                [keras.Input((3,), dtype="int32"), table(), keras.layers.Dense(2)]
            )
            other.optimizer = make()
            other.optimizer.build(other.trainable_variables)
        tf.train.Checkpoint(model=other).read(path).assert_consumed()
        if where:
            assert len(other.layers[0].table_parts) == 2
        for a, b in zip(saved, logical(other)):
            np.testing.assert_array_equal(b, a, err_msg=name)
print("done")
"""
    )
    assert "done" in run_python(
        code.replace("import contextlib,", "import contextlib, tempfile,"), REPO
    )
