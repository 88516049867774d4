"""Tables stored in bfloat16 / float16 (`table_dtype`), trained with
stochastic rounding by the lazy and row-wise optimizers."""

import textwrap

import keras
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from helpers import check_resume, script_report

import keras_lookup
from keras_lookup import optimizers
from keras_lookup.optimizers import _sparse

HALF = ("bfloat16", "float16")
NP_DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
LAZY_OPTIMIZERS = {
    "adam": lambda: optimizers.LazyAdam(0.01),
    "sgd_momentum": lambda: optimizers.LazySGD(0.1, momentum=0.9),
    "adagrad": lambda: optimizers.LazyAdagrad(0.1),
    "rowwise_adagrad": lambda: optimizers.LazyRowwiseAdagrad(0.1),
    "rowwise_adam": lambda: optimizers.LazyRowwiseAdam(0.01, weight_decay=0.1),
}


def _neighbours(x, dtype):
    """The two values of `dtype` around each float32 `x` (equal if exact)."""
    np_dtype = NP_DTYPES[dtype]
    nearest = x.astype(np_dtype)
    wide = nearest.astype(np.float64)
    up = np.nextafter(nearest, np.array(np.inf, np_dtype)).astype(np.float64)
    down = np.nextafter(nearest, np.array(-np.inf, np_dtype)).astype(np.float64)
    low = np.where(wide <= x, wide, down)
    high = np.where(wide >= x, wide, up)
    return low, high


# ---------------------------------------------------------------------------
# The rounding itself, against a NumPy reference.


@pytest.mark.parametrize("dtype", HALF)
def test_stochastic_rounding_is_unbiased(dtype):
    rng = np.random.default_rng(0)
    # Values across magnitudes and signs, float16's subnormals included, each
    # a quarter of the way between two neighbours or at a random place.
    magnitudes = 2.0 ** rng.uniform(-20 if dtype == "float16" else -40, 10, 64)
    x = (magnitudes * rng.choice([-1, 1], 64)).astype(np.float32)
    low, high = _neighbours(x.astype(np.float64), dtype)
    quarter = (low + 0.25 * (high - low)).astype(np.float32)
    x = np.concatenate([x, quarter, low.astype(np.float32)])
    low, high = _neighbours(x.astype(np.float64), dtype)
    draws = 4000
    rounded = _sparse.stochastic_round(
        np.tile(x, (draws, 1)), dtype, tf.constant([7, 1], tf.int64)
    )
    assert rounded.dtype == dtype
    rounded = rounded.numpy().astype(np.float64)
    # Every result is one of the two neighbours...
    assert np.all((rounded == low) | (rounded == high))
    # ...the upper one with probability (x - low) / (high - low): the mean
    # over draws is x, within 5 standard errors of the mean.
    spacing = np.maximum(high - low, 1e-45)
    p = (x - low) / spacing
    standard_error = spacing * np.sqrt(p * (1 - p) / draws)
    error = np.abs(rounded.mean(axis=0) - x)
    assert np.all(error <= 5 * standard_error + 1e-3 * spacing), np.max(error / spacing)
    # Rounding to nearest is off by a quarter of the spacing on the
    # quarter-way values, far outside that tolerance.
    nearest = x[64:128].astype(NP_DTYPES[dtype]).astype(np.float64)
    assert np.all(np.abs(nearest - x[64:128]) > 0.2 * spacing[64:128])
    # Exact values, infinities and NaN are kept as they are.
    special = np.array([1.0, -2.0, 0.0, np.inf, -np.inf, np.nan], np.float32)
    out = _sparse.stochastic_round(special, dtype, tf.constant([3, 4], tf.int64))
    np.testing.assert_array_equal(out.numpy().astype(np.float32), special)


def test_stochastic_rounding_is_seeded():
    x = tf.random.stateless_uniform([1000], [1, 2])
    first = _sparse.stochastic_round(x, "bfloat16", tf.constant([5, 9], tf.int64))
    again = _sparse.stochastic_round(x, "bfloat16", tf.constant([5, 9], tf.int64))
    other = _sparse.stochastic_round(x, "bfloat16", tf.constant([5, 10], tf.int64))
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    assert np.any(first.numpy() != other.numpy())


# ---------------------------------------------------------------------------
# The optimizers on half tables.


def _table(dtype, rows=64, dim=8, value=1.0):
    return keras.Variable(
        np.full((rows, dim), value, "float32"), dtype=dtype, name="embeddings"
    )


@pytest.mark.parametrize("dtype", HALF)
def test_small_updates_are_not_lost(dtype):
    # SGD steps of 2**-13 on entries equal to 1: below half of the spacing
    # (2**-8 in bfloat16, 2**-11 in float16), so rounding to nearest loses
    # every one, while stochastic rounding ends where float32 does on average.
    steps, step, rows, dim = 300, 2.0**-13, 1024, 64
    grad = tf.IndexedSlices(
        tf.fill([rows, dim], step), tf.range(rows), tf.constant([rows, dim])
    )
    ends = {}
    for name, stochastic in (("stochastic", True), ("nearest", False)):
        table = _table(dtype, rows, dim)
        optimizer = optimizers.LazySGD(1.0)
        optimizer._stochastic_rounding = stochastic
        for _ in range(steps):
            optimizer.apply([grad], [table])
        ends[name] = table.numpy().astype(np.float64)
    expected = 1.0 - steps * step  # 0.963
    assert np.all(ends["nearest"] == 1.0)
    # Each entry is a random walk: `steps` roundings, each moving it one
    # spacing down with probability step / spacing. 5 standard errors of the
    # mean over the entries:
    spacing = 2.0**-8 if dtype == "bfloat16" else 2.0**-11  # just below 1
    tolerance = 5 * spacing * np.sqrt(steps * step / spacing / (rows * dim))
    assert abs(ends["stochastic"].mean() - expected) < tolerance, ends[
        "stochastic"
    ].mean()
    # Keras's own SGD rounds to nearest: the table does not move either.
    table = _table(dtype, rows, dim)
    optimizer = keras.optimizers.SGD(1.0)
    for _ in range(10):
        optimizer.apply([grad], [table])
    assert np.all(table.numpy().astype(np.float64) == 1.0)


def test_keras_adam_does_not_move_a_bfloat16_table():
    # What a user of Keras's own Adam gets: its slots are bfloat16 too, and
    # `beta_2 = 0.999` rounds to 1.0 there, so the step is 0 * something.
    table = _table("bfloat16", value=0.05)
    before = table.numpy().copy()
    optimizer = keras.optimizers.Adam(0.01)
    grad = tf.IndexedSlices(tf.ones([4, 8]), tf.range(4), tf.constant([64, 8]))
    for _ in range(5):
        optimizer.apply([grad], [table])
    np.testing.assert_array_equal(table.numpy(), before)
    table = _table("bfloat16", value=0.05)
    optimizers.LazyAdam(0.01).apply([grad], [table])
    assert np.all(table.numpy()[:4] != before[:4])


@pytest.mark.parametrize("name", sorted(LAZY_OPTIMIZERS))
@pytest.mark.parametrize("dtype", HALF)
def test_update_is_the_float32_update_rounded(name, dtype):
    rng = np.random.default_rng(1)
    initial = rng.normal(size=(50, 8)).astype("float32")
    ids = tf.constant([3, 7, 7, 20, 49])
    table = keras.Variable(initial, dtype=dtype, name="embeddings")
    optimizer = LAZY_OPTIMIZERS[name]()
    optimizer.build([table])
    state = [v for v in optimizer.variables if v.name != "stochastic_rounding_seed"]
    assert len(state) == len(optimizer.variables) - 1
    for variable in state[1:]:  # slots float32; row-wise: one float a row
        assert variable.dtype == "float32", variable.name
    if name.startswith("rowwise"):
        assert [tuple(v.shape) for v in state].count((50,)) == 1
    for _ in range(3):
        # The float32 update from the same state, for reference.
        reference = keras.Variable(
            table.numpy().astype("float32"), dtype="float32", name="embeddings"
        )
        exact = LAZY_OPTIMIZERS[name]()
        exact.build([reference])
        for mine, theirs in zip(state, exact.variables, strict=True):
            theirs.assign(mine)
        grad = rng.normal(size=(5, 8)).astype("float32")
        for variable, optimizer_ in ((table, optimizer), (reference, exact)):
            optimizer_.apply([tf.IndexedSlices(grad, ids, (50, 8))], [variable])
        # The half table holds one of the two neighbours of the float32
        # result; the slots are the float32 run's.
        half = table.numpy().astype(np.float64)
        low, high = _neighbours(reference.numpy().astype(np.float64), dtype)
        assert np.all((half == low) | (half == high))
        for mine, theirs in zip(state, exact.variables, strict=True):
            np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-6)
    untouched = np.setdiff1d(np.arange(50), ids.numpy())
    np.testing.assert_array_equal(
        table.numpy()[untouched], initial[untouched].astype(NP_DTYPES[dtype])
    )


def test_dense_gradient_of_a_half_table_is_rounded_stochastically():
    # One-hot matmul and `reverse=True` give the table a dense gradient.
    steps, step, rows, dim = 200, 2.0**-11, 256, 64
    table = _table("bfloat16", rows, dim)
    optimizer = optimizers.LazySGD(1.0)
    grad = tf.fill([rows, dim], step)
    for _ in range(steps):
        optimizer.apply([grad], [table])
    spacing = 2.0**-8  # just below 1; see test_small_updates_are_not_lost
    tolerance = 5 * spacing * np.sqrt(steps * step / spacing / (rows * dim))
    mean = table.numpy().astype(np.float64).mean()
    assert abs(mean - (1 - steps * step)) < tolerance, mean


# ---------------------------------------------------------------------------
# The layers.


def _pair(layer_cls, dtype, **kwargs):
    """A half-table layer and a float32 one holding the same (rounded) values."""
    half = layer_cls(table_dtype=dtype, **kwargs)
    half.build()
    full = layer_cls(**kwargs)
    full.build()
    full.set_weights([w.astype(np.float32) for w in half.get_weights()])
    return half, full


def test_table_dtype_validated_and_in_config():
    for bad in ("int8", "half", None, "Float32", np.int8):
        for call in (
            lambda v: keras_lookup.Embedding(10, 2, table_dtype=v),
            lambda v: keras_lookup.DimensionReducer(10, 2, table_dtype=v),
            lambda v: keras_lookup.Embedding.from_config(
                {**keras_lookup.Embedding(10, 2).get_config(), "table_dtype": v}
            ),
        ):
            with pytest.raises((ValueError, TypeError), match="table_dtype") as error:
                call(bad)
            received = "'int8'" if bad is np.int8 else repr(bad)  # by name
            assert f"Received: table_dtype={received}" in str(error.value)
            assert "'bfloat16'" in str(error.value)
    layer = keras_lookup.Embedding(10, 2, table_dtype="float16")
    config = layer.get_config()
    assert config["table_dtype"] == "float16"
    clone = keras_lookup.Embedding.from_config(config)
    clone.build()
    assert clone.embeddings.dtype == "float16"
    assert keras_lookup.Embedding(10, 2).get_config()["table_dtype"] == "float32"
    # Dtype objects are accepted and kept by name.
    for dtype in (tf.bfloat16, np.float16, ml_dtypes.bfloat16):
        layer = keras_lookup.Embedding(10, 2, table_dtype=dtype)
        assert layer.get_config()["table_dtype"] in HALF


@pytest.mark.parametrize("dtype", HALF)
def test_table_starts_as_the_float32_table_rounded(dtype, monkeypatch):
    from keras_lookup import _tables

    tables = {}
    for path, min_size in (("keras", 2**40), ("in_place", 64)):
        monkeypatch.setattr(_tables, "MIN_SIZE", min_size)
        monkeypatch.setattr(_tables, "SLICE_SIZE", 40)
        for table_dtype in ("float32", dtype):
            keras.utils.set_random_seed(5)
            layer = keras_lookup.Embedding(
                203, 6, table_dtype=table_dtype, embeddings_initializer="he_normal"
            )
            layer.build()
            assert layer.embeddings.dtype == table_dtype
            tables[path, table_dtype] = layer.embeddings.numpy()
    for path in ("keras", "in_place"):
        np.testing.assert_array_equal(
            tables[path, dtype], tables[path, "float32"].astype(NP_DTYPES[dtype])
        )
    np.testing.assert_array_equal(tables["in_place", dtype], tables["keras", dtype])


@pytest.mark.parametrize("dtype", HALF)
def test_every_lookup_path_reads_the_half_table_in_float32(dtype):
    ids = np.array([[1, 0, 4], [9, 9, 2]], "int32")
    ragged = tf.ragged.constant([[1, 4], [9], []], dtype=tf.int32)
    sparse = tf.sparse.from_dense(tf.constant([[1, 0, 4], [0, 9, 0]], tf.int64))
    cases = [
        (keras_lookup.Embedding, {}, ids, {}),
        (keras_lookup.Embedding, {"mask_zero": True}, ids, {}),
        (keras_lookup.Embedding, {"invalid_ids": "zeros"}, ids - 2, {}),
        (keras_lookup.Embedding, {"combiner": "mean", "mask_zero": True}, ids, {}),
        (keras_lookup.Embedding, {"combiner": "sqrtn"}, ragged, {}),
        (keras_lookup.Embedding, {"combiner": "sum"}, sparse, {}),
        (keras_lookup.Embedding, {}, np.ones((2, 8), "float32"), {"reverse": True}),
        (keras_lookup.DimensionReducer, {"strategy": "matmul"}, ids, {}),
        (
            keras_lookup.DimensionReducer,
            {"strategy": "gather", "use_bias": True},
            ids,
            {},
        ),
        (
            keras_lookup.DimensionReducer,
            {"strategy": "matmul", "combiner": "mean"},
            ids,
            {},
        ),
        (
            keras_lookup.DimensionReducer,
            {"input_format": "multi_hot", "strategy": "gather"},
            tf.one_hot(ids[:, 0], 10),
            {},
        ),
    ]
    for layer_cls, kwargs, inputs, call_kwargs in cases:
        half, full = _pair(layer_cls, dtype, **{**kwargs, **_dims(layer_cls)})
        with tf.GradientTape() as tape:
            out = half(inputs, **call_kwargs)
            loss = tf.reduce_sum(tf.convert_to_tensor(out) ** 2)
        expected = full(inputs, **call_kwargs)
        assert out.dtype == tf.float32, (layer_cls, kwargs)
        np.testing.assert_allclose(
            tf.convert_to_tensor(out),
            tf.convert_to_tensor(expected),
            rtol=1e-6,
            atol=1e-6,
        )
        grad = tape.gradient(loss, half.trainable_variables[0])
        assert grad.dtype == tf.float32, (layer_cls, kwargs)
        gathers = kwargs.get("strategy", "gather") == "gather" and not call_kwargs
        assert isinstance(grad, tf.IndexedSlices) == gathers, (layer_cls, kwargs)
        if "mask_zero" in kwargs and "combiner" not in kwargs:
            np.testing.assert_array_equal(out._keras_mask, ids != 0)


def _dims(layer_cls):
    if layer_cls is keras_lookup.Embedding:
        return {"input_dim": 10, "output_dim": 8}
    return {"vocab_size": 10, "units": 8}


def test_dtype_policy_keeps_its_meaning():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    layer = keras_lookup.Embedding(10, 4, table_dtype="float16")
    out = layer(np.array([[1, 2]]))
    assert layer.embeddings.dtype == "float16"
    assert out.dtype == tf.bfloat16  # the policy's compute dtype
    dense = keras_lookup.DimensionReducer(10, 4, use_bias=True, table_dtype="bfloat16")
    dense(np.array([1]))
    assert dense.kernel.dtype == "bfloat16"
    assert dense.bias.dtype == "float32"  # the policy's variable dtype


@pytest.mark.parametrize("name", sorted(LAZY_OPTIMIZERS))
def test_fit_trains_a_half_table(name):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 100, (64, 6))
    y = (x % 2).mean(axis=1, keepdims=True).astype("float32")
    losses = {}
    for dtype in ("float32", "bfloat16", "float16"):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((6,), dtype="int32"),
                keras_lookup.Embedding(100, 8, combiner="mean", table_dtype=dtype),
                keras.layers.Dense(1),
            ]
        )
        model.compile(LAZY_OPTIMIZERS[name](), "mse")
        history = model.fit(x, y, batch_size=16, epochs=5, verbose=0)
        losses[dtype] = history.history["loss"]
        assert model.layers[0].embeddings.dtype == dtype
    for dtype in HALF:
        assert losses[dtype][-1] < losses[dtype][0]
        np.testing.assert_allclose(losses[dtype], losses["float32"], rtol=0.05)


def test_same_seed_same_training_and_resume_ends_the_same(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 50, (32, 4))
    y = rng.normal(size=(32, 1)).astype("float32")

    def build(seed=0):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential(
            [
                keras.Input((4,), dtype="int32"),
                keras_lookup.Embedding(50, 4, table_dtype="bfloat16"),
                keras.layers.GlobalAveragePooling1D(),
                keras.layers.Dense(1),
            ]
        )
        model.compile(optimizers.LazyRowwiseAdagrad(0.05), "mse")
        return model

    tables = []
    for seed in (0, 0, 1):
        model = build(seed)
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        tables.append(model.get_weights()[0])
    np.testing.assert_array_equal(tables[0], tables[1])
    assert np.any(tables[0] != tables[2])
    # The rounding seed is optimizer state: a restored run rounds on as the
    # uninterrupted one does, bit for bit.
    folder = str(tmp_path / "state")
    check_resume(
        build,
        x,
        y,
        save=lambda model: keras_lookup.save_state(model, folder),
        load=lambda model: keras_lookup.load_state(model, folder),
    )


@pytest.mark.parametrize("dtype", HALF)
def test_saving_keeps_the_half_table(dtype, tmp_path):
    x = np.array([[1, 2, 3], [4, 5, 5]])
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((3,), dtype="int32"),
            keras_lookup.Embedding(10, 4, combiner="sum", table_dtype=dtype),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizers.LazyAdam(0.01), "mse")
    model.fit(x, np.ones((2, 1)), verbose=0)
    expected = model.predict(x, verbose=0)
    table = model.layers[0].embeddings.numpy()

    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.layers[0].embeddings.dtype == dtype
    np.testing.assert_array_equal(loaded.layers[0].embeddings.numpy(), table)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    # The optimizer's float32 slots and rounding seed come back too.
    for saved, restored in zip(
        model.optimizer.variables, loaded.optimizer.variables, strict=True
    ):
        assert saved.dtype == restored.dtype
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())

    folder = str(tmp_path / "state")
    keras_lookup.save_state(model, folder)
    keras.utils.set_random_seed(9)
    restored = keras.models.clone_model(model)
    restored.compile(optimizers.LazyAdam(0.01), "mse")
    keras_lookup.load_state(restored, folder)
    np.testing.assert_array_equal(restored.layers[0].embeddings.numpy(), table)

    export = str(tmp_path / "export")
    model.export(export, verbose=False)
    reloaded = tf.saved_model.load(export)
    served = reloaded.serve(tf.constant(x, tf.int32))
    np.testing.assert_allclose(served.numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", HALF)
def test_lora_on_a_half_table(dtype):
    half, full = _pair(keras_lookup.Embedding, dtype, input_dim=20, output_dim=8)
    for layer in (half, full):
        layer.enable_lora(2)
        layer.lora_embeddings_b.assign(np.full((2, 8), 0.5, "float32"))
    full.lora_embeddings_a.assign(half.lora_embeddings_a)
    ids = np.array([[1, 2, 19]])
    np.testing.assert_allclose(half(ids), full(ids), rtol=1e-6, atol=1e-6)
    assert half.lora_embeddings_a.dtype == "float32"
    model = keras.Sequential([keras.Input((3,), dtype="int32"), half])
    model.compile(optimizers.LazyAdam(0.01), "mse")
    table = half._embeddings.numpy()
    model.fit(ids, np.ones((1, 3, 8)), verbose=0)
    np.testing.assert_array_equal(half._embeddings.numpy(), table)  # frozen
    assert not np.allclose(half(ids), full(ids))


@pytest.mark.parametrize("dtype", HALF)
def test_quantizing_a_half_table(dtype, tmp_path):
    half, full = _pair(keras_lookup.Embedding, dtype, input_dim=30, output_dim=8)
    half.quantize("int8")
    full.quantize("int8")
    assert half._embeddings.dtype == "int8"
    ids = np.array([[0, 7, 29]])
    np.testing.assert_allclose(half(ids), full(ids), rtol=1e-2, atol=1e-3)
    model = keras.Sequential([keras.Input((3,), dtype="int32"), half])
    path = str(tmp_path / "quantized.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(ids, verbose=0), model(ids))


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras

    import keras_lookup
    from keras_lookup.optimizers import LazyRowwiseAdagrad

    rng = np.random.default_rng(0)
    x = rng.integers(0, 30, size=(32, 6)).astype("int32")
    y = rng.normal(size=(32, 1)).astype("float32")

    def train(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(3)
            model = keras.Sequential([
                keras.Input((6,), dtype="int32"),
                keras_lookup.Embedding(40, 4, table_dtype="bfloat16"),
                keras.layers.GlobalAveragePooling1D(),
                keras.layers.Dense(1),
            ])
            model.compile(optimizer=LazyRowwiseAdagrad(0.05), loss="mse")
        model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
        return model

    mirrored = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    single = train(tf.distribute.get_strategy())
    table = mirrored.layers[0].embeddings
    copies = [v.numpy().astype("float32") for v in table.value.values]
    reference = single.layers[0].embeddings.numpy().astype("float32")
    print("REPORT" + json.dumps({
        "dtype": str(table.dtype),
        "copies": len(copies),
        "copies_equal": all(np.array_equal(c, copies[0]) for c in copies),
        "differ_from_single": float(np.mean(copies[0] != reference)),
        "max_abs_diff": float(np.max(np.abs(copies[0] - reference))),
    }))
    """
)


def test_mirrored_strategy_keeps_half_table_copies_identical():
    report = script_report(MIRRORED_SCRIPT)
    assert report["dtype"] == "bfloat16"
    assert report["copies"] == 2
    # The replicas round with the same random bits, so their copies agree
    # exactly; the single-device run sums the gradient in another order, so
    # an entry may land on the other neighbour (one bfloat16 spacing, 2**-12
    # at the table's |values| < 0.05).
    assert report["copies_equal"]
    assert report["differ_from_single"] < 0.05, report
    assert report["max_abs_diff"] <= 2.0**-11, report


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, os, resource
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import keras_lookup

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    # A small build first, so that code loaded on first use is not counted.
    keras_lookup.Embedding(2**15, 64, table_dtype="bfloat16").build()
    layer = keras_lookup.Embedding(2**21, 64, table_dtype="bfloat16")
    before = peak()
    layer.build()
    print("REPORT" + json.dumps({"before": before, "after": peak()}))
    """
)


def test_building_a_half_table_stays_near_its_size():
    # A 256 MiB bfloat16 table, in its own process so that the peak is the
    # build's; drawn in float32 slice by slice (measured: 1.03x).
    report = script_report(MEMORY_SCRIPT)
    table = 2**21 * 64 * 2
    assert report["after"] - report["before"] <= 1.1 * table, report
