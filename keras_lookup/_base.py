"""What `Embedding` and `DimensionReducer` add to `keras.layers.Embedding`.

Both layers subclass Keras's Embedding, so the table, LoRA (`lora_rank`,
`enable_lora`), quantization (`quantize("int8" | "int4")`, the `int8_from_*`
dtype policies, quantized variables saved and loaded), masks and the config
keys come from Keras. This base adds what Keras lacks: ids checked on every
path before any lookup, bags and combiners, ragged and sparse ids,
`invalid_ids`, and lookups that read only the rows they need, so that the
table's gradient stays row-sparse and a quantized or LoRA-adapted table is
never dequantized or merged as a whole to look up a few rows.
"""

import keras
import tensorflow as tf
from keras import quantizers

from keras_lookup import _checks, _layer_utils, _lookup, _sharded, _tables

try:  # Keras's own grouped int4 dequantization, when it has one.
    from keras.src.quantizers.quantizers import dequantize_with_sz_map
except ImportError:  # pragma: no cover - Keras without sub-channel int4
    dequantize_with_sz_map = None

# Dtypes a table can be stored in (`table_dtype`); lookups, gradients and the
# lazy optimizers' arithmetic stay float32 whatever the stored dtype.
SUPPORTED_TABLE_DTYPES = ("float32", "bfloat16", "float16")
# The weight names of the table (`DimensionReducer` renames it `kernel`).
_TABLE_NAMES = ("embeddings", "kernel")


class LookupBase(keras.layers.Embedding):
    """Id validation, bags and quantization-aware row reads; not public."""

    # The constructor argument that sets the vocabulary size, for messages.
    _vocab_arg = "input_dim"

    def __init__(
        self,
        input_dim,
        output_dim,
        combiner=None,
        invalid_ids="raise",
        table_dtype="float32",
        **kwargs,
    ):
        _checks.check_choice(
            "combiner", combiner, (None,) + _lookup.SUPPORTED_COMBINERS
        )
        _checks.check_choice("invalid_ids", invalid_ids, _checks.INVALID_IDS_MODES)
        if table_dtype is not None and not isinstance(table_dtype, str):
            try:  # `tf.bfloat16`, `np.float16`: kept by name, as in Keras
                table_dtype = keras.backend.standardize_dtype(table_dtype)
            except (ValueError, TypeError, AttributeError):
                pass
        _checks.check_choice("table_dtype", table_dtype, SUPPORTED_TABLE_DTYPES)
        # Set before Keras's constructor, which builds the layer for `weights`.
        self.table_dtype = table_dtype
        weights = kwargs.pop("weights", None)
        super().__init__(input_dim, output_dim, **kwargs)
        self.combiner = combiner
        self.invalid_ids = invalid_ids
        # XLA cannot raise an error from inside a compiled step, so Keras's
        # automatic jit_compile would turn invalid ids into NaN outputs instead.
        self.supports_jit = invalid_ids != "raise"
        self._reverse_call = False
        # Bags consume a Keras mask (masked ids leave their bag), so they take
        # one; otherwise, as in Keras, only `mask_zero=True` makes one.
        if combiner is not None:
            self.supports_masking = True
        # Keras builds here too, but the subclass's attributes must exist first.
        if weights is not None:
            self.build()
            self.set_weights(weights if isinstance(weights, list) else [weights])

    def build(self, input_shape=None):
        if self.built:
            return
        shape = (self.input_dim, self.output_dim)
        stored = self.variable_dtype if self.table_dtype == "float32" else None
        if _sharded.plan(shape, stored or self.table_dtype) is not None:
            return self._build_sharded(shape)
        # Large tables are filled in slices, with the same values (_tables).
        with _tables.in_place():
            super().build(input_shape)

    def _build_sharded(self, shape):
        # Under `ParameterServerStrategy` with a `variable_partitioner`: the
        # table's row blocks, each a Keras variable on its ps task (_sharded).
        if self.quantization_mode:
            raise _sharded.not_shardable(
                self.name,
                f"quantization ({self.quantization_mode!r})",
                "a float dtype policy",
            )
        if self.lora_rank:
            raise _sharded.not_shardable(self.name, "LoRA", "full fine-tuning")
        initializer, dtype = self.embeddings_initializer, None
        if self.table_dtype != "float32":
            # As `add_weight` makes the unsharded half table: drawn in float32,
            # rounded to nearest.
            initializer = _tables.RoundedInitializer(
                keras.initializers.get(initializer)
            )
            dtype = self.table_dtype
        parts = _sharded.build_table(
            self,
            "embeddings",
            shape,
            initializer,
            self.embeddings_regularizer,
            self.embeddings_constraint,
            dtype=dtype,
        )
        # Not tracked by Keras or for checkpoints: `_embeddings` stands for
        # the logical table there.
        self.__dict__["_table_parts"] = parts
        self._embeddings = _sharded.logical_of(parts[0])
        self.built = True

    @property
    def table_parts(self):
        """The table's row blocks when it is sharded, else `None`."""
        return self.__dict__.get("_table_parts")

    def enable_lora(self, rank, *args, **kwargs):
        if self.table_parts:
            raise _sharded.not_shardable(self.name, "LoRA", "full fine-tuning")
        return super().enable_lora(rank, *args, **kwargs)

    def quantize(self, mode=None, type_check=True, config=None):
        if self.table_parts:
            raise _sharded.not_shardable(
                self.name, f"quantization ({mode!r})", "a float table"
            )
        return super().quantize(mode, type_check=type_check, config=config)

    # A sharded layer's weights are its parts; these speak the logical
    # `(input_dim, output_dim)` table, as on one machine.
    def get_weights(self):
        if not self.table_parts:
            return super().get_weights()
        return _sharded.logical_values(self.weights)

    def set_weights(self, weights):
        if not self.table_parts:
            return super().set_weights(weights)
        _sharded.assign_logical(self.weights, weights, f"Layer '{self.name}'")

    def save_own_variables(self, store):
        if not self.table_parts:
            return super().save_own_variables(store)
        for index, value in enumerate(self.get_weights()):
            store[str(index)] = value

    def load_own_variables(self, store):
        if not self.table_parts:
            return super().load_own_variables(store)
        self.set_weights([store[str(i)] for i in range(len(store.keys()))])

    def add_weight(self, *args, name=None, dtype=None, **kwargs):
        # Keras creates the table in the dtype policy's variable dtype; a half
        # table is stored in `table_dtype`, its values drawn in float32 and
        # rounded to nearest, so that it starts as the float32 table would.
        # Quantized tables (int8, int4) are asked for with their own dtype.
        if name in _TABLE_NAMES and dtype is None and self.table_dtype != "float32":
            dtype = self.table_dtype
            initializer = kwargs.get("initializer")
            if initializer is not None:
                kwargs["initializer"] = _tables.RoundedInitializer(
                    keras.initializers.get(initializer)
                )
        return super().add_weight(*args, name=name, dtype=dtype, **kwargs)

    # Keras routes quantized layers to `_int8_call` / `_int4_call`; `call`
    # reads quantized tables itself.
    def _int8_call(self, *args, **kwargs):
        return self.call(*args, **kwargs)

    def _int4_call(self, *args, **kwargs):
        return self.call(*args, **kwargs)

    def compute_mask(self, inputs, mask=None):
        # Keras asks right after `call`; after `call(..., reverse=True)` the
        # inputs are features, not ids, and the features' mask (None) applies.
        # The flag is spent on that one question, so a later
        # `compute_mask(ids)` asked by another layer gets the ids' mask.
        if self._reverse_call:
            self._reverse_call = False
            return mask
        if self.combiner is not None or not self._dense_ids(inputs):
            return None
        return super().compute_mask(inputs, mask)

    def _dense_ids(self, inputs):
        return not isinstance(inputs, (tf.RaggedTensor, tf.SparseTensor))

    def _check_ids(self, ids):
        return _checks.validate_ids(
            ids, self.input_dim, self.invalid_ids, self.name, self._vocab_arg
        )

    def _lookup_ids(self, inputs, weights, mask, strategy):
        """One vector per id, or per bag with a combiner, in float32."""
        if self.combiner is None:
            return _lookup.lookup(
                table_reader(self),
                inputs,
                weights,
                strategy,
                self._check_ids,
                self.name,
            )
        return self._reduce(self._bags_from_ids(inputs, weights, mask), strategy)

    def _bags_from_ids(self, inputs, weights, mask):
        keep = _lookup.padding_keep(inputs, mask, self.mask_zero)
        return _lookup.bags_from_ids(
            inputs, weights, keep, self._check_ids, self.combiner, self.name
        )

    def _reduce(self, bags, strategy, table=None):
        table = table_reader(self) if table is None else table
        return _lookup.reduce_bags(table, bags, self.combiner or "sum", strategy)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "combiner": self.combiner,
                "invalid_ids": self.invalid_ids,
                "table_dtype": self.table_dtype,
            }
        )
        return config

    def compute_output_spec(self, inputs, weights=None, mask=None, **kwargs):
        shape = self.compute_output_shape(inputs.shape, **kwargs)
        ragged = getattr(inputs, "ragged", False) and self.combiner is None
        ragged = ragged and not kwargs.get("reverse")
        return keras.KerasTensor(shape, dtype=self.compute_dtype, ragged=ragged)


def table_reader(layer, read_once=False):
    """A `_lookup.TableReader` over `layer`'s table in its current state.

    With `read_once`, a float table is read densely, once, here: cheaper than
    reading the variable in both branches of a per-batch `tf.cond`.
    """
    if layer.table_parts:
        return _sharded.ShardedTableReader(
            [_layer_utils.sparse_readable(part) for part in layer.table_parts],
            layer.input_dim,
            layer.output_dim,
            layer.name,
        )
    mode = layer.quantization_mode
    lora = None
    if layer.lora_enabled:
        lora = (
            _layer_utils.sparse_readable(layer.lora_embeddings_a),
            layer.lora_embeddings_b,
            layer.lora_alpha / layer.lora_rank,
        )
    if mode is None:
        table = _layer_utils.sparse_readable(layer._embeddings)
        if read_once:
            table = tf.convert_to_tensor(table)
        return _lookup.TableReader(table, layer.input_dim, layer.output_dim, lora=lora)
    if mode not in ("int8", "int4"):
        raise NotImplementedError(
            f"Layer '{layer.name}' reads tables quantized with 'int8' or 'int4'. "
            f"Received: quantization_mode={mode!r}"
        )
    scale = layer.embeddings_scale
    zero = getattr(layer, "embeddings_zero", None)

    def dequantize(rows, ids):
        # Keras's quantized Embedding, applied to the looked-up rows only, in
        # float32 (Keras's autocast scope may hand the scales over in float16).
        if mode == "int4":
            rows = quantizers.unpack_int4(rows, layer.output_dim, axis=-1)
        rows = tf.cast(rows, tf.float32)
        row_scale = tf.cast(tf.gather(scale, ids), tf.float32)
        if zero is not None:
            return dequantize_with_sz_map(
                rows,
                row_scale,
                tf.cast(tf.gather(zero, ids), tf.float32),
                tf.cast(layer.g_idx, tf.float32),
                group_axis=-1,
            )
        return rows / tf.expand_dims(row_scale, -1)

    return _lookup.TableReader(
        layer._embeddings, layer.input_dim, layer.output_dim, dequantize, lora
    )
