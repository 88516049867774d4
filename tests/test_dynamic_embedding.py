"""`DynamicEmbedding`: assignment, eviction, admission, inference, inputs.

The map's policy is checked step by step against the pure-Python model in
`dynamic_reference.py`; saving, resuming and serving are in
`test_dynamic_embedding_saving.py`.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from dynamic_reference import FREE, ReferenceMap
from helpers import memorization_accuracy, memorization_task, run_layer_test

import keras_lookup
from keras_lookup import _dynamic


def strings(ids):
    return np.array([f"id{i}" for i in np.ravel(ids)], object).reshape(np.shape(ids))


def keys_of(ids, key_dtype):
    return strings(ids) if key_dtype == "string" else np.asarray(ids, np.int64)


def trainer(layer, graph=True):
    """One training step of `layer` on a batch of ids (in a `tf.function`)."""

    def step(ids):
        return layer(ids, training=True)

    return tf.function(step) if graph else step


@pytest.mark.parametrize(
    "init_kwargs, input_data, expected_shape",
    [
        ({"capacity": 10, "output_dim": 3}, np.array([[5, -3], [2**62, 5]]), (2, 2, 3)),
        (
            {"capacity": 10, "output_dim": 3, "combiner": "mean"},
            np.array([[5, -3], [2**62, 5]]),
            (2, 3),
        ),
        (
            # 1-D: Keras's array adapter refuses 2-D NumPy object arrays.
            {"capacity": 10, "output_dim": 3, "key_dtype": "string"},
            strings([1, 2, 3, 1]),
            (4, 3),
        ),
    ],
    ids=["int64", "combiner_mean", "string"],
)
def test_layer_basics(init_kwargs, input_data, expected_shape):
    run_layer_test(
        keras_lookup.DynamicEmbedding,
        init_kwargs,
        input_data,
        expected_shape,
        expected_num_trainable_weights=1,
        input_dtype=init_kwargs.get("key_dtype", "int64"),
    )


def test_config_round_trip_with_every_argument():
    layer = keras_lookup.DynamicEmbedding(
        100,
        8,
        key_dtype="string",
        eviction="lfu",
        min_count=3,
        embeddings_initializer="glorot_uniform",
        embeddings_regularizer="l2",
        mask_key="",
        combiner="sqrtn",
        table_dtype="bfloat16",
        eviction_batch=7,
        lfu_half_life=50,
        admission_slots=33,
        unknown_row=True,
        name="words",
    )
    config = layer.get_config()
    clone = keras_lookup.DynamicEmbedding.from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert type(revived) is keras_lookup.DynamicEmbedding
    assert revived.get_config() == config
    assert (config["capacity"], config["min_count"], config["mask_key"]) == (
        100,
        3,
        "",
    )


@pytest.mark.parametrize("key_dtype", ["int64", "string"])
def test_memorizes_random_ids_where_hashing_cannot(key_dtype):
    # The check: 30,000 random ids from [0, 2**62), random labels,
    # 32,768 rows. Hashing makes ~60% of the ids share a row with another
    # (benchmarks/memorization.py).
    ids, x, y = memorization_task(0, key_dtype)
    dynamic, model = memorization_accuracy(
        [keras_lookup.DynamicEmbedding(32_768, 8, key_dtype=key_dtype)],
        x,
        y,
        key_dtype,
    )
    hashed, _ = memorization_accuracy(
        [keras.layers.Hashing(32_768), keras_lookup.Embedding(32_768, 8)],
        x,
        y,
        key_dtype,
    )
    assert dynamic >= 0.99, dynamic
    assert dynamic >= hashed + 0.05, (dynamic, hashed)
    layer = model.layers[0]
    assert layer.vocabulary_size() == len(np.unique(ids))
    rows = layer.lookup_rows(x)
    assert len(np.unique(rows)) == len(np.unique(ids)) and rows.min() >= 0


def test_assignment_is_collision_free_for_any_int64():
    layer = keras_lookup.DynamicEmbedding(64, 2)
    ids = np.array([0, -1, 2**63 - 1, -(2**63), 7, 2**40, -7, 1], np.int64)
    layer(ids, training=True)
    rows = layer.lookup_rows(ids)
    assert sorted(rows.tolist()) == list(range(len(ids)))
    # int32 and uint8 ids are widened: 7 is the same id whatever its dtype.
    np.testing.assert_array_equal(
        layer.lookup_rows(np.array([7, 1], np.int32)), rows[[4, 7]]
    )
    np.testing.assert_array_equal(
        layer(np.array([7], np.uint8)), layer(np.array([7], np.int64))
    )


def slot_and_tag(layer):
    """The admission slot and tag of each key, by the layer's own hash."""

    def hashes(keys):
        if len(keys) == 0:
            return []
        dtype = tf.string if layer.key_dtype == "string" else tf.int64
        tensor = tf.constant(keys, dtype)
        prints = _dynamic.fingerprints(tensor).numpy()
        slots = np.mod(prints, layer._map.admission_slots)
        tags = tensor.numpy() if layer.key_dtype == "int64" else prints
        return list(zip(slots.tolist(), tags.tolist(), strict=True))

    return hashes


def check_state(layer, reference):
    state = layer._map.arrays() | {"row_keys": layer._map.row_keys.numpy()}
    num_free = int(state["num_free"])
    assert num_free == len(reference.free)
    assert state["free_rows"][:num_free].tolist() == reference.free
    occupied = [r for r in range(reference.capacity) if r not in set(reference.free)]
    keys = state["row_keys"][occupied].tolist()
    expected = [reference.row_keys[r] for r in occupied]
    if layer.key_dtype == "string":
        expected = [k.encode() for k in expected]
    assert keys == expected
    if layer.eviction is not None:
        assert state["last_seen"].tolist() == reference.last_seen
    if layer.eviction == "lfu":
        assert state["counts"].tolist() == reference.counts
    if layer.min_count > 1:
        for slot, (tag, count) in reference.pending.items():
            assert state["pending_counts"][slot] == count
            if count:
                assert state["pending_tags"][slot] == tag
    assert int(state["clock"]) == reference.clock
    assert layer.counters() == reference.counters()
    assert layer.vocabulary_size() == len(reference.rows)


POLICIES = [
    ("lru", 1, "int64", True),
    ("lru", 2, "string", True),
    ("lfu", 1, "string", True),
    ("lfu", 2, "int64", True),
    (None, 1, "int64", True),
    (None, 3, "string", True),
    ("lru", 2, "int64", False),
    ("lfu", 1, "int64", False),
]


@pytest.mark.parametrize(
    "eviction, min_count, key_dtype, graph",
    POLICIES,
    ids=[f"{e}_min{m}_{k}_{'graph' if g else 'eager'}" for e, m, k, g in POLICIES],
)
def test_map_follows_the_reference_model(eviction, min_count, key_dtype, graph):
    # Skewed ids (a few hot, many cold) from a pool larger than the table,
    # a small eviction batch and a short LFU half-life so that every branch
    # runs: hits, admissions, lost sightings, eviction passes, ageing.
    capacity, batch_size = 12, 9
    layer = keras_lookup.DynamicEmbedding(
        capacity,
        2,
        key_dtype=key_dtype,
        eviction=eviction,
        min_count=min_count,
        eviction_batch=3,
        lfu_half_life=3,
        admission_slots=16,
    )
    layer.build()
    reference = ReferenceMap(
        capacity,
        eviction,
        min_count,
        eviction_batch=3,
        lfu_half_life=3,
        admission_slots=16,
        slot_and_tag=slot_and_tag(layer),
    )
    step = trainer(layer, graph)
    rng = np.random.default_rng(1)
    steps = 40 if graph else 20
    for _ in range(steps):
        hot = np.minimum(rng.zipf(1.3, batch_size), 30) - 1
        cold = rng.integers(30, 90, batch_size)
        ids = np.where(rng.random(batch_size) < 0.6, hot, cold)
        keys = keys_of(ids, key_dtype)
        out = step(keys).numpy()
        expected = reference.step(keys.tolist())
        rows = layer.lookup_rows(keys)
        assert rows.tolist() == expected
        # Ids without a row read zeros; the others, their row.
        table = layer.embeddings.numpy()
        np.testing.assert_array_equal(out, np.where(rows[:, None] < 0, 0, table[rows]))
    check_state(layer, reference)
    assert reference.evicted or eviction is None
    assert reference.no_row or (eviction is not None and min_count == 1)


@pytest.mark.parametrize("eviction", ["lru", "lfu", None])
def test_a_batch_with_more_new_ids_than_rows(eviction):
    # 6 new ids a step for 4 rows: the first ids of the batch get the rows
    # (evicting every id not in the batch), the others none this step.
    layer = keras_lookup.DynamicEmbedding(4, 2, eviction=eviction)
    layer.build()
    reference = ReferenceMap(4, eviction)
    step = trainer(layer)
    for batch in ([1, 2, 3, 4, 5, 6], [5, 6, 7, 8, 9, 10], [1, 1, 11, 12, 13, 14]):
        keys = np.array(batch, np.int64)
        step(keys)
        assert layer.lookup_rows(keys).tolist() == reference.step(batch)
    check_state(layer, reference)
    assert layer.counters()["no_row"] > 0


def test_lfu_admits_newcomers_when_full_and_they_must_earn_their_place():
    layer = keras_lookup.DynamicEmbedding(3, 2, eviction="lfu", eviction_batch=1)
    step = trainer(layer)
    step(np.array([1, 1, 1, 2, 2, 2]))  # ids 1 and 2: 3 lookups each
    step(np.array([3]))  # the last free row
    step(np.array([4]))  # full: 4 takes the row of 3, the lowest count
    rows = layer.lookup_rows(np.array([1, 2, 3, 4]))
    assert rows[2] == -1 and (rows[[0, 1, 3]] >= 0).all()
    step(np.array([5]))  # 4 was not seen again: it goes first
    assert layer.lookup_rows(np.array([4, 5]))[0] == -1


@pytest.mark.parametrize("half_life, heavy_hitter_stays", [(1000, True), (1, False)])
def test_lfu_ageing_lets_past_heavy_hitters_leave(half_life, heavy_hitter_stays):
    layer = keras_lookup.DynamicEmbedding(
        3, 2, eviction="lfu", eviction_batch=1, lfu_half_life=half_life
    )
    step = trainer(layer)
    step(np.array([1] * 8))  # id 1: 8 lookups, then never again
    for _ in range(5):
        step(np.array([2, 3]))  # 5 lookups each, recent
    step(np.array([4]))  # full: the lowest aged count gives its row up
    stays = layer.lookup_rows(np.array([1]))[0] >= 0
    assert stays == heavy_hitter_stays


def test_lru_gives_every_new_id_a_row_without_growing():
    # The check: 12,000 ids, then 12,000 new ones, in 16,384 rows.
    layer = keras_lookup.DynamicEmbedding(16_384, 4)
    step = trainer(layer)
    ids = np.random.default_rng(0).permutation(24_000).astype(np.int64) * 7919
    old, new = ids[:12_000], ids[12_000:]
    for batch in np.split(old, 12):
        step(batch)
    old_rows = layer.lookup_rows(old)
    sizes = []
    for batch in np.split(new, 12):
        step(batch)
        sizes.append(layer.vocabulary_size())
    rows = layer.lookup_rows(new)
    assert rows.min() >= 0 and len(np.unique(rows)) == len(new)
    assert max(sizes) <= 16_384
    # The evicted ids are the oldest, whole batches first (256 rows a pass).
    kept = layer.lookup_rows(old) >= 0
    evicted = layer.counters()["evicted"]
    assert not kept[:evicted].any() and kept[evicted:].all()
    assert evicted == 12_000 - 4_384
    np.testing.assert_array_equal(layer.lookup_rows(old)[kept], old_rows[kept])


def test_no_eviction_hands_out_exactly_the_free_rows():
    layer = keras_lookup.DynamicEmbedding(16_384, 4, eviction=None)
    step = trainer(layer)
    ids = np.random.default_rng(0).permutation(24_000).astype(np.int64) - 10**12
    old, new = ids[:12_000], ids[12_000:]
    for batch in np.split(old, 12):
        step(batch)
    old_rows = layer.lookup_rows(old)
    for batch in np.split(new, 12):
        step(batch)
    np.testing.assert_array_equal(layer.lookup_rows(old), old_rows)
    rows = layer.lookup_rows(new)
    # The first 4,384 new ids (in the order seen) got the free rows.
    assert (rows[:4_384] >= 0).all() and (rows[4_384:] == -1).all()
    assert set(rows[:4_384]) == set(range(16_384)) - set(old_rows)
    assert layer.vocabulary_size() == 16_384
    assert layer.counters() == {"admitted": 16_384, "evicted": 0, "no_row": 7_616}


@pytest.mark.parametrize("key_dtype", ["int64", "string"])
def test_min_count_two_admits_on_the_second_sighting(key_dtype):
    layer = keras_lookup.DynamicEmbedding(
        8, 2, key_dtype=key_dtype, min_count=2, admission_slots=1000
    )
    layer.build()
    step = trainer(layer)
    once, twice, in_one_batch = keys_of([[1], [2], [3]], key_dtype)
    slots = [slot for slot, _ in slot_and_tag(layer)(keys_of([1, 2, 3], key_dtype))]
    assert len(set(slots)) == 3  # no two share an admission slot
    out = step(np.concatenate([once, twice])).numpy()
    np.testing.assert_array_equal(out, np.zeros((2, 2)))  # no row yet: zeros
    assert layer.vocabulary_size() == 0
    step(twice)
    step(np.concatenate([in_one_batch, in_one_batch]))
    rows = layer.lookup_rows(np.concatenate([once, twice, in_one_batch]))
    assert rows[0] == -1 and rows[1] >= 0 and rows[2] >= 0
    assert layer.counters() == {"admitted": 2, "evicted": 0, "no_row": 2}


def test_admission_counts_live_in_a_fixed_number_of_slots():
    layer = keras_lookup.DynamicEmbedding(8, 2, min_count=2, admission_slots=4)
    layer.build()
    step = trainer(layer)
    assert tuple(layer._map.pending_counts.shape) == (4,)
    # Two ids that share a slot: the one seen later takes it, and the other
    # starts over (admitted late, never early).
    slots = {}
    for key in range(100):
        slot, _ = slot_and_tag(layer)([key])[0]
        slots.setdefault(slot, []).append(key)
    a, b = next(keys for keys in slots.values() if len(keys) >= 2)[:2]
    for batch in ([a], [b], [a], [b], [b]):
        step(np.array(batch, np.int64))
    rows = layer.lookup_rows(np.array([a, b], np.int64))
    assert rows[0] == -1 and rows[1] >= 0
    step(np.array([a], np.int64))  # the slot holds b's (cleared) tag: a starts at 1
    assert layer.lookup_rows(np.array([a], np.int64))[0] == -1
    step(np.array([a], np.int64))
    assert layer.lookup_rows(np.array([a], np.int64))[0] >= 0


@pytest.mark.parametrize("key_dtype", ["int64", "string"])
def test_inference_assigns_and_counts_nothing(key_dtype):
    inputs = keras.Input((3,), dtype=key_dtype)
    layer = keras_lookup.DynamicEmbedding(16, 2, key_dtype=key_dtype, combiner="sum")
    model = keras.Model(inputs, keras.layers.Dense(1)(layer(inputs)))
    model.compile(keras_lookup.optimizers.LazyAdam(), "mse")
    # Keras's array adapter refuses 2-D NumPy object arrays: strings go in
    # as a tensor.
    seen = tf.constant(keys_of(np.arange(12).reshape(4, 3), key_dtype))
    model.fit(seen, np.ones((4, 1)), verbose=0)
    before = (layer.vocabulary_size(), layer.counters())
    unseen = tf.constant(keys_of(np.arange(100, 112).reshape(4, 3), key_dtype))
    model.predict(unseen, verbose=0)
    model.evaluate(unseen, np.ones((4, 1)), verbose=0)
    layer(unseen)
    assert (
        (layer.vocabulary_size(), layer.counters())
        == before
        == (
            12,
            {"admitted": 12, "evicted": 0, "no_row": 0},
        )
    )
    np.testing.assert_array_equal(layer(unseen), np.zeros((4, 2)))
    assert (layer.lookup_rows(unseen) == -1).all()


def test_gradient_is_row_sparse_and_skips_ids_without_rows():
    layer = keras_lookup.DynamicEmbedding(4, 2, eviction=None)
    layer(np.array([10, 20, 30, 40]), training=True)
    with tf.GradientTape() as tape:
        out = layer(np.array([20, 20, 99, 40]), training=True)
        loss = tf.reduce_sum(out)
    (grad,) = tape.gradient(loss, layer.trainable_variables)
    assert isinstance(grad, tf.IndexedSlices)
    assert sorted(grad.indices.numpy().tolist()) == [1, 1, 3]


def train_on(layer, optimizer, batches):
    """Steps of `loss = sum(outputs)`: each id's row gets gradient 1 a lookup."""
    for ids in batches:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(np.array(ids), training=True))
        grads = tape.gradient(loss, layer.trainable_variables)
        optimizer.apply(grads, layer.trainable_variables)


OPTIMIZERS = {
    # name: (optimizer, slot values of a row after one step of gradient 1)
    "LazyAdam": (lambda: keras_lookup.optimizers.LazyAdam(0.1), [0.1, 0.001]),
    "LazySGD": (
        lambda: keras_lookup.optimizers.LazySGD(0.1, momentum=0.9),
        [-0.1],
    ),
    "LazyAdagrad": (
        lambda: keras_lookup.optimizers.LazyAdagrad(0.1, initial_accumulator_value=0.5),
        [1.5],
    ),
    "LazyRowwiseAdagrad": (
        lambda: keras_lookup.optimizers.LazyRowwiseAdagrad(0.1),
        [1.0],
    ),
    "LazyRowwiseAdam": (
        lambda: keras_lookup.optimizers.LazyRowwiseAdam(0.1),
        [0.1, 0.001],
    ),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_row_handed_out_again_starts_afresh(name):
    make_optimizer, after_one_step = OPTIMIZERS[name]
    layer = keras_lookup.DynamicEmbedding(
        1, 2, embeddings_initializer=keras.initializers.Constant(0.5)
    )
    optimizer = make_optimizer()
    train_on(layer, optimizer, [[7], [7], [7]])  # id 7 trains row 0 thrice
    assert not np.allclose(layer.embeddings.numpy(), 0.5)
    # Id 8 takes row 0 (id 7 is evicted): it reads the initializer's value,
    # and its first step starts from fresh optimizer state.
    np.testing.assert_array_equal(layer(np.array([8]), training=True), [[0.5, 0.5]])
    train_on(layer, optimizer, [[8]])
    slots = [v.numpy().ravel()[0] for v in optimizer.variables[2:]]
    np.testing.assert_allclose(slots, after_one_step, rtol=1e-4)
    assert not layer._map.reassigned.numpy().any()  # the reset is done once
    assert layer.counters() == {"admitted": 2, "evicted": 1, "no_row": 0}


def test_unknown_row_is_trained_by_ids_without_rows_and_read_for_them():
    layer = keras_lookup.DynamicEmbedding(
        4,
        2,
        min_count=2,
        unknown_row=True,
        embeddings_initializer=keras.initializers.Constant(0.5),
    )
    # Ids 1 and 2 are not admitted yet: both read and train the extra row.
    train_on(layer, keras_lookup.optimizers.LazySGD(0.1), [[1, 2]])
    table = layer.embeddings.numpy()
    assert table.shape == (5, 2) and layer.vocabulary_size() == 0
    np.testing.assert_allclose(table[4], [0.3, 0.3], rtol=1e-6)
    np.testing.assert_array_equal(table[:4], 0.5)
    # At inference, an id never seen reads it too; lookup_rows says -1.
    np.testing.assert_array_equal(layer(np.array([99])), table[4:])
    assert (layer.lookup_rows(np.array([1, 2, 99])) == -1).all()
    assert layer.counters() == {"admitted": 0, "evicted": 0, "no_row": 2}


def test_rows_handed_out_again_are_drawn_afresh_from_the_initializer():
    initializer = keras.initializers.GlorotUniform(seed=3)
    layer = keras_lookup.DynamicEmbedding(
        64, 16, embeddings_initializer=initializer, eviction_batch=64
    )
    step = trainer(layer)
    step(np.arange(64))
    first = layer.embeddings.numpy().copy()
    step(np.arange(64, 128))  # every row evicted and handed out again
    second = layer.embeddings.numpy()
    # Glorot's limit is that of the whole (64, 16) table, and each step
    # draws new values.
    limit = np.sqrt(6 / (64 + 16))
    assert np.abs(second).max() <= limit and np.abs(second).max() > 0.9 * limit
    assert not (first == second).any()
    assert len(np.unique(second.round(6), axis=0)) == 64


def test_bags_of_ids_with_padding_and_weights():
    layer = keras_lookup.DynamicEmbedding(
        8, 2, key_dtype="string", combiner="mean", mask_key=""
    )
    bags = np.array([["a", "b", ""], ["b", "", ""]], object)
    layer(bags, training=True)
    table = layer.embeddings.numpy()
    a, b = layer.lookup_rows(np.array(["a", "b"], object))
    assert layer.vocabulary_size() == 2  # the padding key holds no row
    np.testing.assert_allclose(
        layer(bags), [(table[a] + table[b]) / 2, table[b]], rtol=1e-6
    )
    # An unknown id leaves its bag: the mean is over the ids with rows.
    np.testing.assert_allclose(
        layer(np.array([["a", "zzz", ""]], object)), [table[a]], rtol=1e-6
    )
    ragged = tf.ragged.constant([["a", "b"], ["b"], []])
    weights = tf.ragged.constant([[1.0, 3.0], [2.0], []])
    summed = keras_lookup.DynamicEmbedding(8, 2, key_dtype="string", combiner="sum")
    summed(ragged, training=True)
    table = summed.embeddings.numpy()
    a, b = summed.lookup_rows(np.array(["a", "b"], object))
    np.testing.assert_allclose(
        summed(ragged, weights=weights),
        [table[a] + 3 * table[b], 2 * table[b], [0, 0]],
        rtol=1e-6,
    )


def test_symbolic_calls_take_every_call_argument():
    ids = keras.Input((3,), dtype="int32")
    layer = keras_lookup.DynamicEmbedding(8, 2, combiner="sum")
    out = layer(ids, weights=keras.ops.ones_like(ids, "float32"), training=True)
    assert tuple(out.shape) == (None, 2) and out.dtype == "float32"
    assert not getattr(out, "ragged", False)


def test_mask_key_makes_a_keras_mask_and_gets_no_row():
    layer = keras_lookup.DynamicEmbedding(8, 2, mask_key=0)
    ids = np.array([[5, 0, 6]])
    out = layer(ids, training=True)
    np.testing.assert_array_equal(out._keras_mask, [[True, False, True]])
    np.testing.assert_array_equal(out[0, 1], [0, 0])
    assert layer.vocabulary_size() == 2 and layer.counters()["no_row"] == 0


BAD_ARGUMENTS = [
    ({"capacity": 0}, "`capacity` must be a positive integer. Received: capacity=0"),
    ({"capacity": 2.5}, "Received: capacity=2.5"),
    ({"min_count": 0}, "`min_count` must be a positive integer. Received: min_count=0"),
    ({"eviction": "fifo"}, "`eviction` must be one of 'lru', 'lfu', None"),
    ({"key_dtype": "int32"}, "`key_dtype` must be one of 'int64', 'string'"),
    ({"eviction_batch": -1}, "Received: eviction_batch=-1"),
    ({"lfu_half_life": 0}, "Received: lfu_half_life=0"),
    ({"admission_slots": 0}, "Received: admission_slots=0"),
    ({"mask_key": "pad"}, "`mask_key` must be None or an integer"),
    ({"mask_key": 0, "key_dtype": "string"}, "must be None or a string"),
    ({"embeddings_initializer": "orthogonal"}, "Received: embeddings_initializer"),
    ({"combiner": "max"}, "`combiner` must be one of"),
    ({"table_dtype": "int8"}, "`table_dtype` must be one of"),
]


@pytest.mark.parametrize("kwargs, message", BAD_ARGUMENTS)
def test_bad_arguments_raise_in_constructor_and_from_config(kwargs, message):
    config = {"capacity": 8, "output_dim": 2, **kwargs}
    with pytest.raises(ValueError, match=_escaped(message)):
        keras_lookup.DynamicEmbedding(**config)
    good = keras_lookup.DynamicEmbedding(8, 2).get_config()
    # Keras wraps errors of `from_config` in a TypeError.
    with pytest.raises((ValueError, TypeError), match=_escaped(message)):
        keras_lookup.DynamicEmbedding.from_config({**good, **kwargs})


def _escaped(message):
    import re

    return re.escape(message)


CAST = "tf.cast(ids, 'int64')"
BAD_IDS = [
    ("int64", np.array([1.0, 2.0], "float32"), "ids of dtype float32", CAST),
    ("int64", np.array(["a"], object), "received string ids", "key_dtype='string'"),
    ("int64", np.array([2**63], np.uint64), "ids of dtype uint64", "fit int64"),
    ("int64", np.array([True]), "received ids of dtype bool", CAST),
    ("string", np.array([1, 2]), "ids of dtype int64", "key_dtype='int64'"),
    ("string", np.array([1.5]), "ids of dtype float64", "dtype='string'"),
]


@pytest.mark.parametrize("key_dtype, ids, message, fix", BAD_IDS)
def test_bad_ids_raise_naming_the_layer_and_the_fix(key_dtype, ids, message, fix):
    layer = keras_lookup.DynamicEmbedding(8, 2, key_dtype=key_dtype, name="users")
    for training in (False, True):
        with pytest.raises(TypeError, match=message) as error:
            layer(ids, training=training)
        assert "Layer 'users'" in str(error.value) and fix in str(error.value)
    # In a model, when it is built: the dtype is known then.
    inputs = keras.Input((2,), dtype=str(ids.dtype).replace("object", "string"))
    with pytest.raises(TypeError, match=message):
        layer(inputs)
    assert layer.vocabulary_size() == 0


def test_strategies_other_than_the_default_raise_at_build():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        layer = keras_lookup.DynamicEmbedding(8, 2, name="users")
        with pytest.raises(NotImplementedError) as error:
            layer.build()
    message = str(error.value)
    assert "Layer 'users'" in message and "MirroredStrategy" in message
    assert "without a `tf.distribute` strategy" in message
    built = keras_lookup.DynamicEmbedding(8, 2)
    built.build()
    with pytest.raises(NotImplementedError, match="cannot be quantized"):
        built.quantize("int8")


@pytest.mark.parametrize(
    "optimizer", ["sgd", "adam"], ids=["keras_sgd", "keras_adam_dense"]
)
def test_keras_optimizers_train_it(optimizer):
    model = keras.Sequential(
        [
            keras.Input((), dtype="int64"),
            keras_lookup.DynamicEmbedding(16, 4, eviction_batch=4),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.get(optimizer), "mse")
    ids = np.arange(64) * 1000
    history = model.fit(ids, np.ones(64), batch_size=8, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert model.layers[0].counters()["evicted"] > 0


def test_half_precision_table_trains_and_rows_are_rounded():
    layer = keras_lookup.DynamicEmbedding(
        4, 3, table_dtype="bfloat16", eviction_batch=2
    )
    optimizer = keras_lookup.optimizers.LazyAdam(0.01)
    train_on(layer, optimizer, [[1, 2], [3, 4], [5, 6]])
    assert layer.embeddings.dtype == "bfloat16"
    assert layer.counters() == {"admitted": 6, "evicted": 2, "no_row": 0}
    out = layer(np.array([5, 6]))
    assert out.dtype == tf.float32 and np.abs(out.numpy()).max() > 0


def test_counters_reach_keras_logs():
    model = keras.Sequential(
        [
            keras.Input((), dtype="int64"),
            keras_lookup.DynamicEmbedding(8, 2, name="users", eviction_batch=2),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras_lookup.optimizers.LazySGD(), "mse")
    counters = keras_lookup.DynamicEmbeddingCounters()
    ids = np.arange(24)
    history = model.fit(
        ids,
        np.ones(24),
        batch_size=4,
        epochs=2,
        shuffle=False,
        callbacks=[counters],
        verbose=0,
    )
    logs = history.history
    assert logs["users_admitted"] == [24, 24]
    assert logs["users_evicted"] == [16, 24]
    assert logs["users_no_row"] == [0, 0]
    assert logs["users_vocabulary_size"] == [8, 8]
    assert model.layers[0].counters() == {"admitted": 48, "evicted": 40, "no_row": 0}


def test_free_row_sentinel_matches_the_reference():
    assert FREE == _dynamic.FREE
