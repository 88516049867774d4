import keras
import tensorflow as tf

from keras_lookup import _checks, _cost_model, _layer_utils, _lookup, calibration


@keras.saving.register_keras_serializable(package="keras_lookup")
class DimensionReducer(keras.layers.Layer):
    """Reduces ids from a vocabulary to dense features, by lookup or by matmul.

    One layer, one weight, two ways to compute the same numbers:
    `strategy="gather"` selects rows of the kernel (an embedding lookup);
    `strategy="matmul"` multiplies a one-hot (or multi-hot) encoding of the ids
    with the kernel (the Dense formulation, `one_hot(ids) @ kernel`). Both give
    the same outputs and gradients to float rounding and share the weights
    `kernel` `(vocab_size, units)` and `bias` `(units,)`, so a model saved with
    one strategy loads and runs with the other. Unlike an embedding it can add a
    bias and apply an activation. `"auto"` picks the strategy that measured
    faster on this device (`keras_lookup.calibrate()`; shipped CPU defaults
    otherwise): matmul for tiny vocabularies and for bags of many ids over
    small ones, gather for large tables. Where the bag size is only known per
    batch (ragged, sparse, multi-hot) it is chosen per batch inside the graph
    from the batch's ids per row; `layer.strategy_choice` says what and why.

    Ids are validated as in `keras_lookup.Embedding`: anything but an integer
    in `[0, vocab_size)` raises, in either strategy.

    Args:
        vocab_size: Integer. Size of the vocabulary: ids lie in
            `[0, vocab_size)`.
        units: Integer. Number of output features.
        strategy: String, one of `"auto"`, `"gather"`, `"matmul"`. `"auto"`
            is resolved on the device that builds the layer; `get_config`
            keeps `"auto"`.
        activation: Activation function (name or callable); `None` is linear.
        use_bias: Boolean. Whether to add a bias vector.
        kernel_initializer: Initializer for `kernel`.
        bias_initializer: Initializer for `bias`.
        kernel_regularizer: Regularizer function applied to `kernel`.
        bias_regularizer: Regularizer function applied to `bias`.
        activity_regularizer: Regularizer function applied to the output.
        kernel_constraint: Constraint function applied to `kernel`.
        bias_constraint: Constraint function applied to `bias`.
        mask_zero: Boolean. Whether id 0 is padding: without a combiner the
            output carries the mask `ids != 0`; with one, id 0 is left out of
            its bag.
        combiner: `None` or string, one of `"sum"`, `"mean"`, `"sqrtn"`: reduce
            each row of ids (a bag) to one vector, as in
            `keras_lookup.Embedding`. The bias and activation apply after the
            reduction.
        input_format: String, one of `"ids"` (default) or `"multi_hot"`. With
            `"multi_hot"` the input is a `(batch, vocab_size)` multi-hot or
            count matrix, dense or `tf.SparseTensor` (what
            `keras.layers.CategoryEncoding` produces), whose entry `j` is the
            weight of id `j`; `combiner=None` then means `"sum"`.
        invalid_ids: String, one of `"raise"` (default) or `"zeros"`.

    Call arguments:
        inputs: Ids (dense, `tf.RaggedTensor` or `tf.SparseTensor`, as in
            `keras_lookup.Embedding`), or a multi-hot matrix.
        weights: Optional per-id weights for a combiner, shaped like `inputs`.
        mask: Optional boolean mask shaped like dense `inputs`; with a combiner,
            masked-out entries are left out of their bag.

    Input shape:
        Ids of shape `(batch, ...)`; with a combiner `(batch, ..., ids_per_row)`;
        multi-hot `(batch, ..., vocab_size)`.

    Output shape:
        `(batch, ..., units)`, the bag (or vocabulary) axis reduced if any.

    Example:

    >>> import numpy as np
    >>> import keras_lookup
    >>> kernel = np.array([[1.0, -1.0], [2.0, 0.5], [0.0, 3.0]], "float32")
    >>> outs = []
    >>> for strategy in ("gather", "matmul"):
    ...     layer = keras_lookup.DimensionReducer(
    ...         3, 2, strategy=strategy, use_bias=True, activation="relu"
    ...     )
    ...     layer.build()
    ...     layer.set_weights([kernel, np.array([0.5, 0.5], "float32")])
    ...     outs.append(layer(np.array([2, 0, 1])).numpy().tolist())
    >>> outs[0] == outs[1]
    True
    >>> outs[0]
    [[0.5, 3.5], [1.5, 0.0], [2.5, 1.0]]
    """

    def __init__(
        self,
        vocab_size,
        units,
        strategy="auto",
        activation=None,
        use_bias=False,
        kernel_initializer="uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        mask_zero=False,
        combiner=None,
        input_format="ids",
        invalid_ids="raise",
        **kwargs,
    ):
        vocab_size = _checks.check_positive_int("vocab_size", vocab_size)
        units = _checks.check_positive_int("units", units)
        _checks.check_choice("strategy", strategy, _lookup.SUPPORTED_STRATEGIES)
        use_bias = _checks.check_bool("use_bias", use_bias)
        mask_zero = _checks.check_bool("mask_zero", mask_zero)
        _checks.check_choice(
            "combiner", combiner, (None,) + _lookup.SUPPORTED_COMBINERS
        )
        _checks.check_choice(
            "input_format", input_format, _lookup.SUPPORTED_INPUT_FORMATS
        )
        _checks.check_choice("invalid_ids", invalid_ids, _checks.INVALID_IDS_MODES)
        if input_format == "multi_hot" and mask_zero:
            raise ValueError(
                '`mask_zero=True` applies to ids, not to `input_format="multi_hot"` '
                "(a zero count already leaves an id out). Received: "
                "mask_zero=True, input_format='multi_hot'"
            )
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.vocab_size = vocab_size
        self.units = units
        self.strategy = strategy
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.mask_zero = mask_zero
        self.combiner = combiner
        self.input_format = input_format
        self.invalid_ids = invalid_ids
        self._bags = combiner is not None or input_format == "multi_hot"
        self._strategy = strategy
        self._calibration = None
        self._choice = _cost_model.StrategyChoice(strategy, "set by the user")
        self._bag_width = None
        if strategy == "auto":
            self._calibration = calibration.load_calibration(self.compute_dtype)
            form = "bags" if self._bags else "single"
            self._choice = _cost_model.choose(vocab_size, form, None, self._calibration)
            self._strategy = self._choice.strategy
        self.supports_masking = True
        # See keras_lookup.Embedding: ids stay uncast, XLA cannot raise.
        self.autocast = False
        self.supports_jit = invalid_ids != "raise"

    def build(self, input_shape=None):
        if self.input_format == "ids" and self._bags and input_shape is not None:
            self._bag_width = input_shape[-1]
        _layer_utils.add_kernel_and_bias(self, (self.vocab_size, self.units))
        self.built = True

    def call(self, inputs, weights=None, mask=None):
        if self.input_format == "multi_hot":
            out = self._multi_hot(inputs, weights)
        elif self.combiner is not None:
            out = self._combine(inputs, weights, mask)
        else:
            out = self._lookup(inputs, weights)
        if self.bias is not None:
            out = out + tf.cast(self.bias, self.compute_dtype)
        return _lookup.with_mask(self.activation(out), self._mask(inputs))

    def _check_ids(self, ids):
        return _checks.validate_ids(
            ids, self.vocab_size, self.invalid_ids, self.name, "vocab_size"
        )

    @property
    def strategy_choice(self):
        """What `strategy` resolves to on this device, and why.

        A `StrategyChoice(strategy, reason, min_ids_per_row)`; `strategy` is
        `"gather"`, `"matmul"` or `"per_batch"`.
        """
        if self.strategy != "auto":
            return self._choice
        return _cost_model.with_bag_width(
            self._choice, self.vocab_size, self._bag_width, self._calibration
        )

    def _table(self, strategy=None):
        if (strategy or self._strategy) == "matmul":
            return tf.cast(self.kernel, self.compute_dtype)
        return _layer_utils.sparse_readable(self.kernel)

    def _lookup(self, inputs, weights):
        out = _lookup.lookup(
            self._table(), inputs, weights, self._strategy, self._check_ids, self.name
        )
        return tf.cast(out, self.compute_dtype)

    def _combine(self, inputs, weights, mask):
        keep = _lookup.padding_keep(inputs, mask, self.mask_zero)
        bags = _lookup.bags_from_ids(
            inputs, weights, keep, self._check_ids, self.combiner, self.name
        )
        return self._per_batch(
            inputs, lambda strategy, table=None: self._reduce(bags, strategy, table)
        )

    def _multi_hot(self, inputs, weights):
        if weights is not None:
            raise ValueError(
                f"Layer '{self.name}' received `weights` with "
                '`input_format="multi_hot"`, where the matrix entries already are '
                "the weights. Scale the multi-hot matrix instead."
            )

        def reduce(strategy, table=None):
            bags = _lookup.bags_from_multi_hot(
                inputs, self.vocab_size, self.combiner, self.name, strategy
            )
            return self._reduce(bags, strategy, table)

        return self._per_batch(inputs, reduce)

    def _per_batch(self, inputs, reduce):
        # `reduce(strategy)`; under "auto", with the strategy the cost model
        # picks for this batch's ids per row (a `tf.cond` when that is only
        # known at run time).
        if self.strategy != "auto":
            return reduce(self._strategy)
        use_matmul = _cost_model.use_matmul(
            self._choice,
            self.vocab_size,
            inputs,
            self.input_format == "multi_hot",
            self._calibration,
        )
        return _cost_model.per_batch(
            use_matmul, reduce, lambda: tf.cast(self.kernel, self.compute_dtype)
        )

    def _reduce(self, bags, strategy, table=None):
        combiner = self.combiner or "sum"
        table = self._table(strategy) if table is None else table
        out = _lookup.reduce_bags(table, bags, combiner, strategy)
        return tf.cast(out, self.compute_dtype)

    def _mask(self, inputs):
        if not self.mask_zero or self._bags or not isinstance(inputs, tf.Tensor):
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
                    "vocab_size",
                    "units",
                    "strategy",
                    *_layer_utils.KERNEL_AND_BIAS_ARGS,
                    "mask_zero",
                    "combiner",
                    "input_format",
                    "invalid_ids",
                ],
            )
        )
        return config
