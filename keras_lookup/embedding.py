import keras
import tensorflow as tf

from keras_lookup import _base, _checks, _lookup


@keras.saving.register_keras_serializable(package="keras_lookup")
class Embedding(_base.LookupBase):
    """Turns integer ids into dense vectors by looking rows up in a table.

    A subclass of `keras.layers.Embedding`, so a drop-in for it: the same
    arguments, weight name, masks (`compute_mask`), LoRA (`lora_rank`,
    `enable_lora`) and quantization (`quantize("int8" | "int4")`, the
    `int8_from_float32`-style dtype policies) come from Keras, and Keras's own
    Embedding tests pass on it. What it adds never gives a silent wrong
    answer: negative ids, ids `>= input_dim`, non-integer float ids and string
    ids raise an error naming the layer, the id and the valid range, eagerly,
    inside `tf.function` and in `model.fit`, on every device, on quantized and
    LoRA-adapted tables too. It also takes ragged and sparse ids, reduces bags
    of ids with a `combiner`, and doubles as a tied output projection
    (`reverse=True`). Lookups read only the rows they need (dequantizing and
    adding the LoRA delta row by row), so the gradient stays row-sparse.

    Args:
        input_dim: Integer. Size of the vocabulary: ids lie in `[0, input_dim)`.
        output_dim: Integer. Dimension of the dense vectors.
        embeddings_initializer: Initializer for the `embeddings` table.
        embeddings_regularizer: Regularizer function applied to the table.
        embeddings_constraint: Constraint function applied to the table.
        mask_zero: Boolean. Whether id 0 is padding. Without a combiner, the
            layer then returns the mask `ids != 0` for later layers (as Keras's
            Embedding does); with a combiner, id 0 is left out of its bag and
            the output carries no mask.
        combiner: `None` or string, one of `"sum"`, `"mean"`, `"sqrtn"`.
            `None` gives one vector per id. Otherwise each row of ids (the last
            axis of dense ids, a ragged row, a sparse row) is one bag, reduced
            to one vector: `sum` is `Σ wᵢ·eᵢ`, `mean` divides by `Σ wᵢ`,
            `sqrtn` by `sqrt(Σ wᵢ²)`. Empty bags give a zero vector.
        invalid_ids: String, one of `"raise"` (default) or `"zeros"`. With
            `"zeros"`, invalid ids give a zero vector, drop out of bags, and
            send no gradient to the table.
        table_dtype: String, one of `"float32"` (default), `"bfloat16"`,
            `"float16"`. The dtype the table is stored in. A half-precision
            table takes half the memory; it is read in float32 (outputs,
            gradients and the `keras_lookup.optimizers` arithmetic stay
            float32, and the dtype policy still sets the compute and output
            dtype), and the lazy and row-wise optimizers write its rows back
            with stochastic rounding, so that small updates are not lost.
            `"float32"` leaves the table in the policy's variable dtype, as
            in Keras.
        weights: Optional initial table, a `(input_dim, output_dim)` array
            (or a list holding one), as in `keras.layers.Embedding`.
        lora_rank: Optional integer. Enables LoRA with this rank, as in
            `keras.layers.Embedding`: the table is frozen and a trainable
            low-rank delta `lora_embeddings_a @ lora_embeddings_b` added.
        lora_alpha: Optional number. Scales the LoRA delta by
            `lora_alpha / lora_rank`.

    Call arguments:
        inputs: Integer ids (floats holding whole numbers are accepted): a
            dense tensor of any rank, a `tf.RaggedTensor` (ragged output) or a
            `tf.SparseTensor` (dense output, zero vectors where the sparse
            input has no entry). With `reverse=True`: features of shape
            `(..., output_dim)`.
        weights: Optional per-id weights for a combiner, shaped like `inputs`
            (dense, ragged or sparse to match). Weights must be non-negative
            with `combiner="mean"`.
        mask: Optional boolean mask shaped like dense `inputs`; with a combiner,
            masked-out entries are left out of their bag.
        reverse: Boolean. If True, returns the logits `inputs @ embeddings.T`,
            of shape `(..., input_dim)`: the table used as the output
            projection of a language model (weight tying).

    Input shape:
        Ids of shape `(batch, ...)`; with a combiner, `(batch, ..., ids_per_row)`.

    Output shape:
        `(batch, ..., output_dim)`; with a combiner, the bag axis is reduced.

    Example:

    >>> import numpy as np
    >>> import keras_lookup
    >>> table = np.array([[0.0, 0.0], [1.0, 2.0], [3.0, 4.0]], "float32")
    >>> layer = keras_lookup.Embedding(3, 2, weights=table)
    >>> layer(np.array([[1, 2], [2, 2]])).numpy().tolist()
    [[[1.0, 2.0], [3.0, 4.0]], [[3.0, 4.0], [3.0, 4.0]]]

    Bags of ids, with id 0 as padding:

    >>> bags = keras_lookup.Embedding(3, 2, combiner="mean", mask_zero=True,
    ...                               weights=table)
    >>> bags(np.array([[1, 2], [2, 0]])).numpy().tolist()
    [[2.0, 3.0], [3.0, 4.0]]

    Ids outside `[0, input_dim)` raise:

    >>> layer(np.array([3]))
    Traceback (most recent call last):
    ...
    tensorflow.python.framework.errors_impl.InvalidArgumentError: ...received id 3...
    """

    def __init__(
        self,
        input_dim,
        output_dim,
        embeddings_initializer="uniform",
        embeddings_regularizer=None,
        embeddings_constraint=None,
        mask_zero=False,
        combiner=None,
        invalid_ids="raise",
        table_dtype="float32",
        weights=None,
        lora_rank=None,
        lora_alpha=None,
        **kwargs,
    ):
        input_dim = _checks.check_positive_int("input_dim", input_dim)
        output_dim = _checks.check_positive_int("output_dim", output_dim)
        mask_zero = _checks.check_bool("mask_zero", mask_zero)
        lora_rank = _checks.check_lora_rank(lora_rank)
        super().__init__(
            input_dim,
            output_dim,
            combiner=combiner,
            invalid_ids=invalid_ids,
            table_dtype=table_dtype,
            embeddings_initializer=embeddings_initializer,
            embeddings_regularizer=embeddings_regularizer,
            embeddings_constraint=embeddings_constraint,
            mask_zero=mask_zero,
            weights=weights,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            **kwargs,
        )

    def call(self, inputs, weights=None, mask=None, reverse=False):
        # A features' mask is set here, so Keras does not ask `compute_mask`;
        # without one, Keras asks it and must not get `features != 0`.
        self._reverse_call = reverse and mask is None
        if reverse:
            return _lookup.with_mask(self._reverse(inputs), mask)
        out = self._lookup_ids(inputs, weights, mask, "gather")
        return tf.cast(out, self.compute_dtype)

    def _reverse(self, inputs):
        table = _base.table_reader(self).whole()
        inputs = tf.cast(inputs, table.dtype)
        logits = tf.matmul(inputs, table, transpose_b=True)
        return tf.cast(logits, self.compute_dtype)

    def compute_output_shape(self, input_shape, reverse=False):
        input_shape = tuple(input_shape)
        if reverse:
            return input_shape[:-1] + (self.input_dim,)
        if self.combiner is not None:
            return input_shape[:-1] + (self.output_dim,)
        return input_shape + (self.output_dim,)

    def quantize(self, mode=None, type_check=True, config=None):
        # Keras refuses to quantize subclasses of its Embedding, whose `call`
        # may not read quantized weights; ours reads them on every path
        # (`_base.table_reader`). Subclasses of ours are refused the same way.
        if type_check and type(self) is not Embedding:
            raise self._not_implemented_error(self.quantize)
        super().quantize(mode, type_check=False, config=config)
