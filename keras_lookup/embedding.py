import keras
import tensorflow as tf

from keras_lookup import _checks, _layer_utils, _lookup, _tables


@keras.saving.register_keras_serializable(package="keras_lookup")
class Embedding(keras.layers.Layer):
    """Turns integer ids into dense vectors by looking rows up in a table.

    A drop-in replacement for `keras.layers.Embedding` (same argument names and
    defaults where they overlap, same weight name `embeddings`) that never
    gives a silent wrong answer: negative ids, ids `>= input_dim`, non-integer
    float ids and string ids raise an error naming the layer, the id and the
    valid range, eagerly, inside `tf.function` and in `model.fit`, on every
    device. It also takes ragged and sparse ids, reduces bags of ids with a
    `combiner`, and doubles as a tied output projection (`reverse=True`).

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
        weights: Optional initial table, a `(input_dim, output_dim)` array
            (or a list holding one), as in `keras.layers.Embedding`.

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
        weights=None,
        **kwargs,
    ):
        input_dim = _checks.check_positive_int("input_dim", input_dim)
        output_dim = _checks.check_positive_int("output_dim", output_dim)
        mask_zero = _checks.check_bool("mask_zero", mask_zero)
        _checks.check_choice(
            "combiner", combiner, (None,) + _lookup.SUPPORTED_COMBINERS
        )
        _checks.check_choice("invalid_ids", invalid_ids, _checks.INVALID_IDS_MODES)
        super().__init__(**kwargs)
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
        self.embeddings_constraint = keras.constraints.get(embeddings_constraint)
        self.mask_zero = mask_zero
        self.combiner = combiner
        self.invalid_ids = invalid_ids
        # Masks are set in `call` (as keras.layers.ReversibleEmbedding does), so
        # that `reverse=True` passes the features' mask on instead of making one.
        self.supports_masking = True
        # Ids must never be cast to a float compute dtype (float16 holds ids
        # exactly only up to 2048), so the layer casts its outputs itself.
        self.autocast = False
        # XLA cannot raise an error from inside a compiled step, so Keras's
        # automatic jit_compile would turn invalid ids into NaN outputs instead.
        self.supports_jit = invalid_ids != "raise"
        if weights is not None:
            self.build()
            self.set_weights(weights if isinstance(weights, list) else [weights])

    def build(self, input_shape=None):
        # Large tables are filled in slices, with the same values.
        with _tables.in_place():
            self.embeddings = self.add_weight(
                shape=(self.input_dim, self.output_dim),
                initializer=self.embeddings_initializer,
                regularizer=self.embeddings_regularizer,
                constraint=self.embeddings_constraint,
                name="embeddings",
            )
        self.built = True

    def call(self, inputs, weights=None, mask=None, reverse=False):
        if reverse:
            return _lookup.with_mask(self._reverse(inputs), mask)
        if self.combiner is not None:
            return self._combine(inputs, weights, mask)
        table = _layer_utils.sparse_readable(self.embeddings)
        out = _lookup.lookup(
            table, inputs, weights, "gather", self._check_ids, self.name
        )
        return _lookup.with_mask(tf.cast(out, self.compute_dtype), self._mask(inputs))

    def _check_ids(self, ids):
        return _checks.validate_ids(
            ids, self.input_dim, self.invalid_ids, self.name, "input_dim"
        )

    def _combine(self, inputs, weights, mask):
        keep = _lookup.padding_keep(inputs, mask, self.mask_zero)
        bags = _lookup.bags_from_ids(
            inputs, weights, keep, self._check_ids, self.combiner, self.name
        )
        table = _layer_utils.sparse_readable(self.embeddings)
        out = _lookup.reduce_bags(table, bags, self.combiner, "gather")
        return tf.cast(out, self.compute_dtype)

    def _reverse(self, inputs):
        table = tf.cast(self.embeddings, self.compute_dtype)
        inputs = tf.cast(inputs, self.compute_dtype)
        return tf.matmul(inputs, table, transpose_b=True)

    def _mask(self, inputs):
        if not self.mask_zero or not isinstance(inputs, tf.Tensor):
            return None
        return tf.not_equal(inputs, 0)

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        config = super().get_config()
        config.update(
            _layer_utils.config_of(
                self,
                [
                    "input_dim",
                    "output_dim",
                    "embeddings_initializer",
                    "embeddings_regularizer",
                    "embeddings_constraint",
                    "mask_zero",
                    "combiner",
                    "invalid_ids",
                    "activity_regularizer",
                ],
            )
        )
        return config
