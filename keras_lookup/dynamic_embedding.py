import random

import keras
import numpy as np
import tensorflow as tf

from keras_lookup import _base, _checks, _dynamic, _layer_utils, _lookup, _tables

# Python types a `mask_key` may have, per `key_dtype`.
_MASK_KEY_TYPES = {"int64": (int, np.integer), "string": (str, bytes)}


@keras.saving.register_keras_serializable(package="keras_lookup")
class DynamicEmbedding(_base.LookupBase):
    """Turns ids of any int64 value, or strings, into dense vectors, handing
    out rows as training meets the ids.

    Use it where the ids are not `[0, vocabulary)` and new ones keep coming:
    user and item ids that are 64-bit values or hashes, words as strings.
    `keras.layers.StringLookup` / `IntegerLookup` freeze a vocabulary with
    `adapt` before training (every later id shares one out-of-vocabulary
    row); `keras.layers.Hashing` makes unrelated ids share rows forever. Here
    a table of `capacity` rows starts empty; in training (`fit`,
    `train_on_batch`, `training=True`) an id without a row gets a free row of
    its own, so two ids never share one. When no row is free, `eviction`
    decides: `"lru"` takes the rows of the ids seen least recently, `"lfu"`
    those seen least often (counts halve every `lfu_half_life` steps, so that
    past heavy hitters can leave), `None` gives no row. Eviction frees
    `eviction_batch` rows in one pass (the only work that grows with
    `capacity`), so a step's cost does not depend on `capacity`. A row handed
    out again is re-initialized, and its state in the keras_lookup optimizers
    is reset: a new id never inherits another's vector or moments.

    Inference (`predict`, `evaluate`, `training=False`, an exported
    SavedModel) assigns nothing and counts nothing. An id without a row (not
    admitted yet, none to give, or never seen in training) reads a zero
    vector, is left out of its bag with a combiner and sends no gradient; with
    `unknown_row=True` it reads one shared row instead, trained by the
    training lookups of ids without a row (as `StringLookup`'s
    out-of-vocabulary row).
    `lookup_rows`, `vocabulary_size` and `counters` read the map. The map is
    saved in `.keras` and weights files, by `keras_lookup.save_state`, by
    `tf.train.Checkpoint` and in `model.export()` SavedModels, which serve it
    without keras_lookup. No `tf.distribute` strategy is supported yet.

    Args:
        capacity: Integer. Rows in the table: the most ids holding a row at
            once.
        output_dim: Integer. Dimension of the dense vectors.
        key_dtype: String, `"int64"` (default: any int64 value; smaller
            integers are widened) or `"string"`.
        eviction: `"lru"` (default), `"lfu"` or `None`. What a new id gets
            when no row is free: the row of the least recently seen id, of
            the least often seen one (ties: the least recently seen), or none.
            Ids looked up in the current step are never evicted.
        min_count: Integer >= 1. An id gets a row once training has seen it
            this many times (each occurrence in a batch counts). Sightings of
            ids without a row are counted in `admission_slots` slots.
        embeddings_initializer: Initializer of the rows, at build and when a
            row is handed out again: Keras's random initializers (each row
            drawn as a row of the whole `(capacity, output_dim)` table) or a
            constant one.
        embeddings_regularizer: Regularizer function applied to the table.
        embeddings_constraint: Constraint function applied to the table.
        mask_key: Optional key (an int for `"int64"`, a str for `"string"`)
            that stands for padding: it never gets a row, reads a zero vector,
            is left out of bags, and without a combiner the layer returns the
            mask `ids != mask_key`.
        combiner: `None` or string, one of `"sum"`, `"mean"`, `"sqrtn"`: as
            in `keras_lookup.Embedding`; ids without a row are left out of
            their bag.
        table_dtype: String, one of `"float32"` (default), `"bfloat16"`,
            `"float16"`: as in `keras_lookup.Embedding`.
        eviction_batch: Optional integer. Rows one eviction pass frees when a
            step needs more rows than are free (more if the step needs more).
            Defaults to `max(1, capacity // 64)`.
        lfu_half_life: Integer. With `eviction="lfu"`, every count is halved
            (rounding down) at each multiple of this many training steps.
            Defaults to `1000`.
        admission_slots: Optional integer. With `min_count > 1`, the slots
            that count sightings of ids without a row (16 bytes each).
            Defaults to `capacity`. A slot holds one id: an id whose slot is
            taken by another id later seen without a row loses its count and
            starts over, so an id is never admitted early, only late.
        unknown_row: Boolean. If True, the table has one more row (the last,
            never handed to an id), which every id without a row of its own
            reads and trains; useful with `min_count > 1` or `eviction=None`,
            where ids go without rows in training. Defaults to False: such ids
            read zeros.

    Call arguments:
        inputs: Ids: int64 (or narrower integer) or string tensors, dense of
            any rank, `tf.RaggedTensor` or `tf.SparseTensor`, as in
            `keras_lookup.Embedding`. NumPy arrays of Python `str` (dtype
            object) work for strings.
        weights: Optional per-id weights for a combiner, shaped like `inputs`.
        mask: Optional boolean mask shaped like dense `inputs`: masked-out
            ids are padding, as `mask_key` is.
        training: Boolean. True assigns rows and counts; False (inference,
            the default outside `fit`) only reads.

    Input shape:
        Ids of shape `(batch, ...)`; with a combiner, `(batch, ..., ids_per_row)`.

    Output shape:
        `(batch, ..., output_dim)`; with a combiner, the bag axis is reduced.

    Example:

    >>> import numpy as np
    >>> import keras_lookup
    >>> layer = keras_lookup.DynamicEmbedding(capacity=4, output_dim=2)
    >>> ids = np.array([2**62 + 7, -5, 2**62 + 7])
    >>> _ = layer(ids, training=True)  # training: the two ids get rows
    >>> layer.lookup_rows(np.array([-5, 2**62 + 7, 123])).tolist()
    [1, 0, -1]
    >>> layer(np.array([123])).numpy().tolist()  # no row: zeros, none given
    [[0.0, 0.0]]
    >>> layer.vocabulary_size()
    2

    Strings, with the least recently seen id evicted when the table is full:

    >>> words = keras_lookup.DynamicEmbedding(2, 3, key_dtype="string")
    >>> for batch in (["the", "cat"], ["the"], ["dog"]):
    ...     _ = words(np.array(batch, object), training=True)
    >>> words.lookup_rows(np.array(["the", "cat", "dog"], object)).tolist()
    [0, -1, 1]
    >>> words.counters()
    {'admitted': 3, 'evicted': 1, 'no_row': 0}
    """

    def __init__(
        self,
        capacity,
        output_dim,
        key_dtype="int64",
        eviction="lru",
        min_count=1,
        embeddings_initializer="uniform",
        embeddings_regularizer=None,
        embeddings_constraint=None,
        mask_key=None,
        combiner=None,
        table_dtype="float32",
        eviction_batch=None,
        lfu_half_life=1000,
        admission_slots=None,
        unknown_row=False,
        **kwargs,
    ):
        capacity = _checks.check_positive_int("capacity", capacity)
        output_dim = _checks.check_positive_int("output_dim", output_dim)
        _checks.check_choice("key_dtype", key_dtype, _dynamic.KEY_DTYPES)
        _checks.check_choice("eviction", eviction, _dynamic.EVICTION_POLICIES)
        min_count = _checks.check_positive_int("min_count", min_count)
        if eviction_batch is not None:
            eviction_batch = _checks.check_positive_int(
                "eviction_batch", eviction_batch
            )
        lfu_half_life = _checks.check_positive_int("lfu_half_life", lfu_half_life)
        if admission_slots is not None:
            admission_slots = _checks.check_positive_int(
                "admission_slots", admission_slots
            )
        unknown_row = _checks.check_bool("unknown_row", unknown_row)
        if mask_key is not None:
            if isinstance(mask_key, bool) or not isinstance(
                mask_key, _MASK_KEY_TYPES[key_dtype]
            ):
                kind = "an integer" if key_dtype == "int64" else "a string"
                raise ValueError(
                    f"`mask_key` must be None or {kind}, as `key_dtype="
                    f"{key_dtype!r}`. Received: mask_key={mask_key!r}"
                )
            if isinstance(mask_key, bytes):
                mask_key = mask_key.decode("utf-8")
            mask_key = int(mask_key) if key_dtype == "int64" else mask_key
        initializer = keras.initializers.get(embeddings_initializer)
        if not _tables.draws_rows(initializer):
            raise ValueError(
                "`embeddings_initializer` must be one of Keras's random "
                "initializers (uniform, normal, truncated normal, or a "
                "variance-scaling one such as glorot_uniform) or a scalar "
                "constant: DynamicEmbedding draws the rows it hands out again "
                "from it, row by row. Received: embeddings_initializer="
                f"{embeddings_initializer!r}"
            )
        super().__init__(
            capacity + unknown_row,
            output_dim,
            combiner=combiner,
            table_dtype=table_dtype,
            embeddings_initializer=initializer,
            embeddings_regularizer=embeddings_regularizer,
            embeddings_constraint=embeddings_constraint,
            **kwargs,
        )
        self.capacity = capacity
        self.key_dtype = key_dtype
        self.eviction = eviction
        self.min_count = min_count
        self.mask_key = mask_key
        self.eviction_batch = eviction_batch
        self.lfu_half_life = lfu_half_life
        self.admission_slots = admission_slots
        self.unknown_row = unknown_row
        # No XLA kernel for hash-table ops.
        self.supports_jit = False
        self.supports_masking = combiner is not None or mask_key is not None
        self._map = None

    def build(self, input_shape=None):
        if self.built:
            return
        if tf.distribute.has_strategy():
            raise NotImplementedError(
                f"Layer '{self.name}' (DynamicEmbedding) is built under "
                f"{type(tf.distribute.get_strategy()).__name__}, which it does "
                "not support yet: its id -> row map is one hash table in this "
                "process. Build and train it without a `tf.distribute` "
                "strategy (the default strategy), or use keras_lookup.Embedding "
                "with keras.layers.Hashing, which every strategy supports."
            )
        super().build(input_shape)
        self._map = _dynamic.RowMap(
            self.capacity,
            self.key_dtype,
            self.eviction,
            self.min_count,
            self.admission_slots or self.capacity,
            self.eviction_batch or max(1, self.capacity // 64),
            self.lfu_half_life,
            # Python's generator, which `keras.utils.set_random_seed` seeds.
            seed=random.randint(1, 2**31 - 1),
            table_rows=self.input_dim,
        )
        # How the keras_lookup optimizers find the rows whose state to reset
        # (`optimizers._sparse`): on the variable their `update_step` sees.
        table = _layer_utils.sparse_readable(self._embeddings)
        table._keras_lookup_reassigned = self._map.reassigned

    def call(self, inputs, weights=None, mask=None, training=None):
        rows = self._rows(inputs, mask, bool(training))
        table = _base.table_reader(self)
        if self.combiner is None:
            out = _lookup.lookup(table, rows, weights, "gather", _held, self.name)
        else:
            bags = _lookup.bags_from_ids(
                rows, weights, None, _held, self.combiner, self.name
            )
            out = _lookup.reduce_bags(table, bags, self.combiner, "gather")
        return tf.cast(out, self.compute_dtype)

    def _rows(self, inputs, mask, training):
        """The row of each id, shaped like `inputs` (-1: none, or padding)."""
        keys = self._keys(inputs)
        if isinstance(keys, tf.RaggedTensor):
            flat, keep = keys.flat_values, None
        elif isinstance(keys, tf.SparseTensor):
            flat, keep = keys.values, None
        else:
            flat = tf.reshape(keys, [-1])
            keep = _lookup.padding_keep(keys, mask, False)
            keep = None if keep is None else tf.reshape(keep, [-1])
        if self.mask_key is not None:
            real = tf.not_equal(flat, self.mask_key)
            keep = real if keep is None else keep & real
        if keep is None:
            rows = self._flat_rows(flat, training)
        else:
            where = tf.where(keep)
            kept = self._flat_rows(tf.gather_nd(flat, where), training)
            rows = tf.tensor_scatter_nd_update(
                tf.fill(tf.shape(flat, tf.int64), tf.constant(-1, tf.int64)),
                where,
                kept,
            )
        if isinstance(keys, tf.RaggedTensor):
            return keys.with_flat_values(rows)
        if isinstance(keys, tf.SparseTensor):
            return tf.SparseTensor(keys.indices, rows, keys.dense_shape)
        return tf.reshape(rows, tf.shape(keys))

    def _flat_rows(self, keys, training):
        if training:
            rows = self._map.assign(keys, self._reinitialize)
        else:
            rows = self._map.find(keys)
        if self.unknown_row:  # the last row, shared by ids without their own
            rows = tf.where(rows < 0, tf.constant(self.capacity, tf.int64), rows)
        return rows

    def _reinitialize(self, rows):
        # A step's stateless seed: the same rows after a checkpoint's resume.
        seed = tf.stack([self._map.seed, self._map.clock])
        shape = (self.input_dim, self.output_dim)  # as the table was drawn
        values = _tables.draw_rows(
            self.embeddings_initializer, shape, tf.size(rows), seed, tf.float32
        )
        table = _layer_utils.sparse_readable(self._embeddings)
        table.scatter_update(tf.IndexedSlices(tf.cast(values, table.dtype), rows))

    def _keys(self, inputs):
        if not isinstance(inputs, (tf.Tensor, tf.RaggedTensor, tf.SparseTensor)):
            inputs = tf.convert_to_tensor(inputs)
        dtype = self._check_key_dtype(inputs.dtype)
        if dtype in (tf.int64, tf.string):
            return inputs
        if isinstance(inputs, tf.RaggedTensor):
            return inputs.with_flat_values(tf.cast(inputs.flat_values, tf.int64))
        if isinstance(inputs, tf.SparseTensor):
            return tf.SparseTensor(
                inputs.indices, tf.cast(inputs.values, tf.int64), inputs.dense_shape
            )
        return tf.cast(inputs, tf.int64)

    def _check_key_dtype(self, dtype):
        dtype = tf.as_dtype(dtype)
        if self.key_dtype == "string":
            if dtype != tf.string:
                raise TypeError(
                    f"Layer '{self.name}' has key_dtype='string' and received "
                    f"ids of dtype {dtype.name}. Pass string ids (for example "
                    "`keras.Input(shape, dtype='string')`, or a NumPy array of "
                    "Python str with dtype=object), or build the layer with "
                    "key_dtype='int64' for integer ids."
                )
        elif dtype == tf.string:
            raise TypeError(
                f"Layer '{self.name}' has key_dtype='int64' and received string "
                "ids. Build it with key_dtype='string' for string ids."
            )
        elif not dtype.is_integer or dtype == tf.uint64:
            raise TypeError(
                f"Layer '{self.name}' has key_dtype='int64' and received ids "
                f"of dtype {dtype.name}. Pass integer ids that fit int64 (for "
                "example `keras.Input(shape, dtype='int64')`); cast float ids "
                "that hold whole numbers with `tf.cast(ids, 'int64')`."
            )
        return dtype

    def compute_output_spec(self, inputs, weights=None, mask=None, training=None):
        # Wrong ids fail when the model is built, not at its first batch.
        self._check_key_dtype(inputs.dtype)
        return super().compute_output_spec(inputs, weights, mask)

    def compute_mask(self, inputs, mask=None):
        if self.combiner is not None or self.mask_key is None:
            return None
        if not self._dense_ids(inputs):
            return None
        return tf.not_equal(self._keys(inputs), self.mask_key)

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if self.combiner is not None:
            return input_shape[:-1] + (self.output_dim,)
        return input_shape + (self.output_dim,)

    def lookup_rows(self, ids):
        """Each id's row as a NumPy int64 array shaped like `ids`, -1 where
        it has none of its own (it then reads zeros, or the unknown row).
        Reads the map only."""
        if not self.built:
            self.build()
        keys = self._keys(ids)
        if not isinstance(keys, tf.Tensor):
            raise TypeError(
                f"Layer '{self.name}': `lookup_rows` takes dense ids. Received: "
                f"{type(keys).__name__}"
            )
        rows = self._map.find(tf.reshape(keys, [-1]))
        return tf.reshape(rows, tf.shape(keys)).numpy()

    def vocabulary_size(self):
        """How many ids hold a row."""
        return int(self._map.size()) if self.built else 0

    def counters(self):
        """What training did since the layer was built, as Python ints:
        `admitted` (ids given a row), `evicted` (ids that lost their row) and
        `no_row` (lookups that found no row: ids not admitted yet, or no row
        to give)."""
        if not self.built:
            return {"admitted": 0, "evicted": 0, "no_row": 0}
        names = ("admitted", "evicted", "no_row")
        return {n: int(getattr(self._map, n).numpy()) for n in names}

    def quantize(self, mode=None, type_check=True, config=None):
        raise NotImplementedError(
            f"Layer '{self.name}' (DynamicEmbedding) cannot be quantized: its "
            "rows are reassigned and re-initialized while it trains."
        )

    def enable_lora(self, rank, *args, **kwargs):
        raise NotImplementedError(
            f"Layer '{self.name}' (DynamicEmbedding) does not support LoRA: its "
            "rows are reassigned and re-initialized while it trains."
        )

    # The map is saved beside the table: in `.keras` and weights files, by
    # `keras_lookup.save_state` (which calls `_map_arrays` and
    # `_load_map_arrays`), and by `tf.train.Checkpoint` (the map's variables
    # and hash table are tracked attributes).
    def save_own_variables(self, store):
        if not self.built:
            return
        store["0"] = self._embeddings
        for name, value in self._map_arrays().items():
            store[name] = value

    def load_own_variables(self, store):
        self._embeddings.assign(store["0"])
        self._load_map_arrays(store)

    def _map_arrays(self):
        return self._map.arrays()

    def _load_map_arrays(self, arrays):
        self._map.load_arrays(arrays, self.name)

    def get_config(self):
        config = keras.layers.Layer.get_config(self)
        config.update(
            {
                "capacity": self.capacity,
                "output_dim": self.output_dim,
                "key_dtype": self.key_dtype,
                "eviction": self.eviction,
                "min_count": self.min_count,
                "mask_key": self.mask_key,
                "combiner": self.combiner,
                "table_dtype": self.table_dtype,
                "eviction_batch": self.eviction_batch,
                "lfu_half_life": self.lfu_half_life,
                "admission_slots": self.admission_slots,
                "unknown_row": self.unknown_row,
            }
        )
        config.update(
            _layer_utils.config_of(
                self,
                (
                    "embeddings_initializer",
                    "embeddings_regularizer",
                    "embeddings_constraint",
                ),
            )
        )
        return config


def _held(rows):
    """`(safe_rows, valid, fill)` for `_lookup`: rows -1 read zeros."""
    return tf.maximum(rows, 0), rows >= 0, 0.0
