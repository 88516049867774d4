"""The id -> row map behind `DynamicEmbedding`, from TensorFlow's own ops.

A `tf.lookup.experimental.MutableHashTable` maps each key (any int64, or any
string) that holds a row to that row. Beside it, one variable per row of
state, all created once, at build, with `capacity` entries:

- `row_keys`: the key each row holds (blanked when the key leaves), so that
  eviction can take the key out of the hash table;
- `free_rows`, `num_free`: a stack of the rows no key holds; popped from the
  top (`free_rows[num_free - 1]` first);
- `last_seen` (eviction "lru" and "lfu"): the training step that last looked
  the row's key up, or `FREE` for a free row;
- `counts` (eviction "lfu"): how often the row's key was looked up, halved
  (rounding down) at every multiple of `lfu_half_life` steps; kept lazily, as
  of the step in `last_seen`, so no step touches every row;
- `reassigned`: rows handed to a new key whose optimizer state has not been
  reset yet (the keras_lookup optimizers reset and clear them); one entry
  per table row, the layer's unknown row included;
- `pending_tags`, `pending_counts` (`min_count > 1`): a direct-mapped array of
  `admission_slots` slots counting the sightings of keys without a row. A
  key's slot is its fingerprint modulo the slot count; its tag is the key
  itself (int64) or its 64-bit fingerprint (strings). A key whose slot holds
  another key's tag starts from zero and, unless it is admitted, takes the
  slot: the other key's count is lost;
- `clock` (training steps), the counters and the re-initialization seed.

One training step (`assign`), for the distinct keys of a batch in the order
they first appear:

1. keys with a row are found (one hash-table lookup), and their rows'
   `last_seen` / `counts` updated;
2. keys without a row are counted (`min_count`); those reaching `min_count`
   sightings are admitted, in order;
3. if fewer rows are free than keys admitted, one eviction pass frees
   `max(shortfall, eviction_batch)` rows at once (at most every occupied row
   not looked up in this step): the rows with the oldest `last_seen` ("lru"),
   or the smallest aged count, then the oldest `last_seen` ("lfu"); ties go
   to the lower row. Their keys leave the hash table. This is the only part
   whose cost grows with `capacity` (a `top_k` over every row), and it runs
   once per `eviction_batch` new keys;
4. the admitted keys take free rows, in order, while there are any; those
   rows are re-initialized by the layer (`given_rows`), marked `reassigned`,
   and stamped with this step.

The warm path (every key already holds a row) runs steps 1 and the lookup
only: the rest sits behind one `tf.cond`.
"""

import numpy as np
import tensorflow as tf

EVICTION_POLICIES = ("lru", "lfu", None)
KEY_DTYPES = ("int64", "string")
# `last_seen` of a free row: never the oldest.
FREE = tf.int64.max
# Steps and counts are clipped to 32 bits when "lfu" packs them in one score.
_LOW_BITS = 2**32 - 1
_HIGH_BITS = 2**31 - 1


def fingerprints(keys):
    """A 64-bit fingerprint of each key (int64 keys by their 8 bytes)."""
    return tf.bitcast(tf.fingerprint(keys), tf.int64)


class RowMap(tf.Module):
    """Keys to rows, with the per-row state above; all variables tracked here.

    Created inside `tf.init_scope()` (the layer's `build` may run inside
    Keras's symbolic graph, where a hash table would be out of scope in `fit`).
    """

    def __init__(
        self,
        capacity,
        key_dtype,
        eviction,
        min_count,
        admission_slots,
        eviction_batch,
        lfu_half_life,
        seed,
        table_rows=None,
    ):
        super().__init__(name="row_map")
        self.capacity = capacity
        self.key_dtype = tf.int64 if key_dtype == "int64" else tf.string
        self.eviction = eviction
        self.min_count = min_count
        self.admission_slots = admission_slots
        self.eviction_batch = eviction_batch
        self.lfu_half_life = lfu_half_life
        with tf.init_scope():
            self.table = tf.lookup.experimental.MutableHashTable(
                self.key_dtype, tf.int64, default_value=-1, name="key_to_row"
            )
            self.row_keys = _variable(self._blank([capacity]), "row_keys")
            # Popped from the end: rows 0, 1, 2, ... go out first.
            self.free_rows = _variable(
                tf.range(capacity - 1, -1, -1, dtype=tf.int64), "free_rows"
            )
            self.num_free = _variable(tf.constant(capacity, tf.int64), "num_free")
            self.reassigned = _variable(
                tf.zeros([table_rows or capacity], tf.bool), "reassigned"
            )
            if eviction is not None:
                self.last_seen = _variable(
                    tf.fill([capacity], tf.constant(FREE, tf.int64)), "last_seen"
                )
            if eviction == "lfu":
                self.counts = _variable(tf.zeros([capacity], tf.int64), "counts")
            if min_count > 1:
                slots = [admission_slots]
                self.pending_tags = _variable(tf.zeros(slots, tf.int64), "pending_tags")
                self.pending_counts = _variable(
                    tf.zeros(slots, tf.int64), "pending_counts"
                )
            self.clock = _variable(tf.constant(0, tf.int64), "clock")
            self.admitted = _variable(tf.constant(0, tf.int64), "admitted")
            self.evicted = _variable(tf.constant(0, tf.int64), "evicted")
            self.no_row = _variable(tf.constant(0, tf.int64), "no_row")
            self.seed = _variable(tf.constant(seed, tf.int64), "seed")

    def state_variables(self):
        """`{name: variable}` of every variable, in a fixed order."""
        names = (
            "row_keys",
            "free_rows",
            "num_free",
            "reassigned",
            "last_seen",
            "counts",
            "pending_tags",
            "pending_counts",
            "clock",
            "admitted",
            "evicted",
            "no_row",
            "seed",
        )
        return {n: getattr(self, n) for n in names if hasattr(self, n)}

    def _blank(self, shape):
        return tf.zeros(shape, self.key_dtype)

    # -- Reading -----------------------------------------------------------

    def find(self, keys):
        """The row of each key (flat), -1 where it has none; changes nothing."""
        return tf.reshape(self.table.lookup(keys), [-1])

    def size(self):
        return self.capacity - self.num_free

    # -- One training step -------------------------------------------------

    def assign(self, keys, on_given):
        """Rows for the flat `keys` of one training step (-1: no row).

        `on_given(rows)` is called with the rows handed to new keys in this
        step (the layer re-initializes them), only where there are new keys.
        """
        step = self.clock.assign_add(1)
        unique, position, counts = tf.unique_with_counts(keys, out_idx=tf.int64)
        rows = self.find(unique)
        found = rows >= 0
        self._touch(tf.boolean_mask(rows, found), tf.boolean_mask(counts, found), step)
        new = tf.reshape(tf.where(~found), [-1])

        def place_new():
            num_found = tf.size(found, tf.int64) - tf.size(new, tf.int64)
            placed, given = self._place(unique, counts, rows, new, num_found, step)
            on_given(given)
            # Only new keys can be left without a row.
            missing = tf.where(placed < 0, counts, tf.zeros_like(counts))
            self.no_row.assign_add(tf.reduce_sum(missing))
            return placed

        rows = tf.cond(tf.size(new) > 0, place_new, lambda: rows)
        return tf.gather(rows, position)

    def _touch(self, rows, counts, step):
        """Records that `rows` were looked up `counts` times at `step`."""
        if self.eviction is None:
            return
        if self.eviction == "lfu":
            aged = self._aged_counts(rows, step)
            self.counts.scatter_update(tf.IndexedSlices(aged + counts, rows))
        self.last_seen.scatter_update(
            tf.IndexedSlices(tf.fill(tf.shape(rows), step), rows)
        )

    def _aged_counts(self, rows, step):
        """`counts[rows]` aged to `step`: halved once per multiple of
        `lfu_half_life` passed since the row was last seen."""
        last = tf.gather(self.last_seen, rows)
        return self._age(tf.gather(self.counts, rows), last, step)

    def _age(self, counts, last, step):
        period = self.lfu_half_life
        halvings = tf.clip_by_value(step // period - last // period, 0, 63)
        return tf.bitwise.right_shift(counts, halvings)

    def _place(self, unique, counts, rows, new, num_found, step):
        """Admits, makes room for and places the new keys `unique[new]`."""
        new_keys = tf.gather(unique, new)
        new_counts = tf.gather(counts, new)
        if self.min_count > 1:
            slots, tags, totals = self._sightings(new_keys, new_counts)
            admitted = tf.reshape(tf.where(totals >= self.min_count), [-1])
        else:
            admitted = tf.range(tf.size(new, out_type=tf.int64))
        wanted = tf.size(admitted, out_type=tf.int64)
        if self.eviction is not None:
            self._make_room(wanted, num_found, step)
        placed = admitted[: tf.minimum(wanted, self.num_free)]
        given = self._pop(tf.size(placed, out_type=tf.int64))
        placed_keys = tf.gather(new_keys, placed)
        self.table.insert(placed_keys, given)
        self.row_keys.scatter_update(tf.IndexedSlices(placed_keys, given))
        self.reassigned.scatter_update(
            tf.IndexedSlices(tf.ones(tf.shape(given), tf.bool), given)
        )
        if self.eviction is not None:
            self.last_seen.scatter_update(
                tf.IndexedSlices(tf.fill(tf.shape(given), step), given)
            )
        if self.eviction == "lfu":
            placed_counts = tf.gather(new_counts, placed)
            self.counts.scatter_update(tf.IndexedSlices(placed_counts, given))
        self.admitted.assign_add(tf.size(given, out_type=tf.int64))
        if self.min_count > 1:
            self._count_sightings(slots, tags, totals, placed)
        positions = tf.gather(new, placed)
        rows = tf.tensor_scatter_nd_update(rows, positions[:, None], given)
        return rows, given

    # -- Admission ---------------------------------------------------------

    def _sightings(self, keys, counts):
        """`(slots, tags, totals)`: each new key's slot, tag and sightings so
        far, this step's included."""
        prints = fingerprints(keys)
        slots = tf.math.floormod(prints, self.admission_slots)
        tags = keys if self.key_dtype == tf.int64 else prints
        held = tf.gather(self.pending_tags, slots) == tags
        before = tf.where(held, tf.gather(self.pending_counts, slots), 0)
        return slots, tags, before + counts

    def _count_sightings(self, slots, tags, totals, placed):
        """Clears the slots of keys placed; the others record their totals.

        Of several keys without a row that share a slot in one step, the one
        that appeared first in the batch takes it.
        """
        placed_slots = tf.gather(slots, placed)
        held = tf.gather(self.pending_tags, placed_slots) == tf.gather(tags, placed)
        cleared = tf.boolean_mask(placed_slots, held)
        self.pending_counts.scatter_update(
            tf.IndexedSlices(tf.zeros(tf.shape(cleared), tf.int64), cleared)
        )
        without = tf.ones(tf.shape(slots), tf.bool)
        without = tf.tensor_scatter_nd_update(
            without, placed[:, None], tf.zeros(tf.shape(placed), tf.bool)
        )
        waiting = tf.reshape(tf.where(without), [-1])
        waiting_slots = tf.gather(slots, waiting)
        distinct, which = tf.unique(waiting_slots, out_idx=tf.int64)
        first = tf.math.unsorted_segment_min(
            tf.range(tf.size(waiting, out_type=tf.int64)), which, tf.size(distinct)
        )
        winners = tf.gather(waiting, first)
        self.pending_tags.scatter_update(
            tf.IndexedSlices(tf.gather(tags, winners), distinct)
        )
        self.pending_counts.scatter_update(
            tf.IndexedSlices(tf.gather(totals, winners), distinct)
        )

    # -- Free rows and eviction --------------------------------------------

    def _pop(self, count):
        top = self.num_free
        rows = tf.gather(self.free_rows, tf.range(top - 1, top - 1 - count, -1))
        self.num_free.assign_sub(count)
        return rows

    def _push(self, rows):
        """Frees `rows`; they go out again in the order given."""
        top = self.num_free
        count = tf.size(rows, out_type=tf.int64)
        self.free_rows.scatter_update(
            tf.IndexedSlices(tf.reverse(rows, [0]), tf.range(top, top + count))
        )
        self.num_free.assign_add(count)

    def _make_room(self, wanted, num_found, step):
        """One eviction pass if fewer than `wanted` rows are free."""
        shortfall = wanted - self.num_free
        # Rows looked up in this step are never evicted.
        evictable = self.capacity - self.num_free - num_found
        count = tf.minimum(tf.maximum(shortfall, self.eviction_batch), evictable)

        def evict():
            self._evict(count, step)
            return tf.constant(0)

        tf.cond((shortfall > 0) & (count > 0), evict, lambda: tf.constant(0))

    def _evict(self, count, step):
        scores = self.scores(step)
        rows = tf.cast(
            tf.math.top_k(-scores, tf.cast(count, tf.int32)).indices, tf.int64
        )
        self.table.remove(tf.gather(self.row_keys, rows))
        self.row_keys.scatter_update(
            tf.IndexedSlices(self._blank(tf.shape(rows)), rows)
        )
        self.last_seen.scatter_update(
            tf.IndexedSlices(tf.fill(tf.shape(rows), tf.constant(FREE, tf.int64)), rows)
        )
        if self.eviction == "lfu":
            self.counts.scatter_update(
                tf.IndexedSlices(tf.zeros(tf.shape(rows), tf.int64), rows)
            )
        self._push(rows)
        self.evicted.assign_add(tf.size(rows, out_type=tf.int64))

    def scores(self, step):
        """Every row's eviction score at `step`: the lowest go first.

        Free rows and rows looked up at `step` score `FREE`.
        """
        last = tf.convert_to_tensor(self.last_seen)
        if self.eviction == "lru":
            return last
        aged = tf.minimum(
            self._age(tf.convert_to_tensor(self.counts), last, step), _HIGH_BITS
        )
        packed = tf.bitwise.left_shift(aged, 32) + tf.minimum(last, _LOW_BITS)
        keep = (last == FREE) | (last == step)
        return tf.where(keep, tf.constant(FREE, tf.int64), packed)

    # -- Restoring ---------------------------------------------------------

    def occupied_rows(self):
        """The rows a key holds, ascending, from the free-row stack."""
        free = self.free_rows[: self.num_free]
        occupied = tf.tensor_scatter_nd_update(
            tf.ones([self.capacity], tf.bool),
            free[:, None],
            tf.zeros(tf.shape(free), tf.bool),
        )
        return tf.reshape(tf.where(occupied), [-1])

    def arrays(self):
        """Every variable's value as a NumPy array, by name; string keys as
        `row_keys_bytes` and `row_keys_lengths`."""
        out = {}
        for name, variable in self.state_variables().items():
            value = variable.numpy()
            if name == "row_keys" and self.key_dtype == tf.string:
                out["row_keys_bytes"], out["row_keys_lengths"] = encode_strings(value)
            else:
                out[name] = value
        return out

    def load_arrays(self, arrays, layer_name):
        """Assigns what `arrays()` gave (any mapping; other keys than those
        of `arrays()` but `"0"` are refused), then refills the table."""
        expected = set(self.arrays_names())
        given = set(arrays.keys()) - {"0"}
        if given != expected:
            missing = ", ".join(repr(n) for n in sorted(expected - given)) or "none"
            extra = ", ".join(repr(n) for n in sorted(given - expected)) or "none"
            raise ValueError(
                f"Layer '{layer_name}' cannot load this id -> row map: it lacks "
                f"{missing} and has {extra} that the layer does not keep. It "
                "was saved from a DynamicEmbedding with another `key_dtype`, "
                "`eviction` or `min_count`; build the layer as the saved one was."
            )
        values = {}
        for name, variable in self.state_variables().items():
            if name == "row_keys" and self.key_dtype == tf.string:
                value = decode_strings(
                    arrays["row_keys_bytes"], arrays["row_keys_lengths"]
                )
            else:
                value = np.asarray(arrays[name])
            if value.shape != tuple(variable.shape):
                raise ValueError(
                    f"Layer '{layer_name}' cannot load this id -> row map: "
                    f"{name!r} was saved with shape {value.shape}, and this "
                    f"layer's has shape {tuple(variable.shape)}. Build the "
                    "layer with the saved `capacity` (and `admission_slots`)."
                )
            values[name] = value
        for name, variable in self.state_variables().items():
            variable.assign(values[name])
        self.rebuild_table()

    def arrays_names(self):
        names = list(self.state_variables())
        if self.key_dtype == tf.string:
            at = names.index("row_keys")
            names[at : at + 1] = ["row_keys_bytes", "row_keys_lengths"]
        return names

    def rebuild_table(self):
        """Refills the hash table from `row_keys` and the free rows."""
        keys, _ = self.table.export()
        self.table.remove(keys)
        rows = self.occupied_rows()
        self.table.insert(tf.gather(self.row_keys, rows), rows)


def _variable(value, name):
    return tf.Variable(value, trainable=False, name=name)


def encode_strings(values):
    """Byte strings as `(uint8 bytes, int64 lengths)`: Keras's weight files
    hold no object arrays, and a newline-separated text would break on a key
    holding a newline."""
    values = [bytes(v) for v in values]
    lengths = np.array([len(v) for v in values], np.int64)
    return np.frombuffer(b"".join(values), np.uint8).copy(), lengths


def decode_strings(data, lengths):
    data = np.asarray(data, np.uint8).tobytes()
    ends = np.cumsum(np.asarray(lengths, np.int64))
    starts = ends - np.asarray(lengths, np.int64)
    out = np.empty(len(ends), object)
    out[:] = [data[a:b] for a, b in zip(starts, ends, strict=True)]
    return out
