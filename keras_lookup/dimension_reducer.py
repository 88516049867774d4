import keras
import tensorflow as tf

from keras_lookup import _base, _checks, _cost_model, _layer_utils, _lookup, _sharded


@keras.saving.register_keras_serializable(package="keras_lookup")
class DimensionReducer(_base.LookupBase):
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
    in `[0, vocab_size)` raises, in either strategy. Like it, the layer builds
    on `keras.layers.Embedding`, so LoRA (`lora_rank`, `enable_lora`) and
    quantization (`quantize("int8" | "int4")`) are Keras's: the kernel is
    quantized row by row (one scale per id), which both strategies read, so
    they still agree and the weights stay the same for either.

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
        table_dtype: String, one of `"float32"` (default), `"bfloat16"`,
            `"float16"`. The dtype the kernel is stored in. A half-precision
            kernel takes half the memory; it is read in float32 (outputs,
            gradients and the `keras_lookup.optimizers` arithmetic stay
            float32, and the dtype policy still sets the compute and output
            dtype), and the lazy and row-wise optimizers write its rows back
            with stochastic rounding, so that small updates are not lost.
            `"float32"` leaves the kernel in the policy's variable dtype, as
            in Keras.
        lora_rank: Optional integer. Enables LoRA with this rank: the kernel
            is frozen and a trainable low-rank delta added (Keras's LoRA).
        lora_alpha: Optional number. Scales the LoRA delta by
            `lora_alpha / lora_rank`.

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
        table_dtype="float32",
        lora_rank=None,
        lora_alpha=None,
        **kwargs,
    ):
        vocab_size = _checks.check_positive_int("vocab_size", vocab_size)
        units = _checks.check_positive_int("units", units)
        _checks.check_choice("strategy", strategy, _lookup.SUPPORTED_STRATEGIES)
        use_bias = _checks.check_bool("use_bias", use_bias)
        mask_zero = _checks.check_bool("mask_zero", mask_zero)
        lora_rank = _checks.check_lora_rank(lora_rank)
        _checks.check_choice(
            "input_format", input_format, _lookup.SUPPORTED_INPUT_FORMATS
        )
        if input_format == "multi_hot" and mask_zero:
            raise ValueError(
                '`mask_zero=True` applies to ids, not to `input_format="multi_hot"` '
                "(a zero count already leaves an id out). Received: "
                "mask_zero=True, input_format='multi_hot'"
            )
        # Set before Keras's constructor, which may build the layer.
        self.strategy = strategy
        self.use_bias = use_bias
        self.input_format = input_format
        super().__init__(
            vocab_size,
            units,
            combiner=combiner,
            invalid_ids=invalid_ids,
            table_dtype=table_dtype,
            embeddings_initializer=kernel_initializer,
            embeddings_regularizer=kernel_regularizer,
            embeddings_constraint=kernel_constraint,
            activity_regularizer=activity_regularizer,
            mask_zero=mask_zero,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            **kwargs,
        )
        self.activation = keras.activations.get(activation)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self._bags = combiner is not None or input_format == "multi_hot"
        if self._bags:
            self.supports_masking = True
        self._strategy = strategy
        self._calibration = None
        self._choice = _cost_model.StrategyChoice(strategy, "set by the user")
        self._bag_width = None
        if strategy == "auto":
            self._calibration = _cost_model.load_calibration(self.compute_dtype)
            form = "bags" if self._bags else "single"
            if input_format == "multi_hot":
                form = "multi_hot"
            self._choice = _cost_model.choose(vocab_size, form, None, self._calibration)
            self._strategy = self._choice.strategy

    # Keras's Embedding names the constructor arguments and the table after
    # embeddings; this layer keeps Dense's names (those of 0.1's files).
    vocab_size = property(lambda self: self.input_dim)
    units = property(lambda self: self.output_dim)
    kernel_initializer = property(lambda self: self.embeddings_initializer)
    kernel_regularizer = property(lambda self: self.embeddings_regularizer)
    kernel_constraint = property(lambda self: self.embeddings_constraint)
    kernel = property(lambda self: self.embeddings)
    _vocab_arg = "vocab_size"

    def add_weight(self, *args, name=None, **kwargs):
        if name is not None:
            name = name.replace("embeddings", "kernel")
        return super().add_weight(*args, name=name, **kwargs)

    def build(self, input_shape=None):
        if self.built:
            return
        if self.input_format == "ids" and self._bags and input_shape is not None:
            self._bag_width = input_shape[-1]
        # Keras's build ends by enabling LoRA, which locks the layer's state;
        # the bias comes first, in 0.1's weight order (kernel, bias).
        lora_rank, self.lora_rank = self.lora_rank, None
        super().build(input_shape)
        if self.table_parts:
            self._gather_from_parts()
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(self.units,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
                name="bias",
            )
        self.lora_rank = lora_rank
        if lora_rank:
            self.enable_lora(lora_rank, self.lora_alpha)

    def _gather_from_parts(self):
        # A matmul reads the whole table; parts on ps tasks are gathered from.
        if self.strategy == "matmul":
            raise _sharded.not_shardable(
                self.name, 'strategy="matmul"', 'strategy="gather" (or "auto")'
            )
        self._strategy = "gather"
        self._choice = _cost_model.StrategyChoice(
            "gather", "the table is split across parameter servers"
        )

    @property
    def variable_serialization_spec(self):
        spec = super().variable_serialization_spec
        if not self.use_bias:
            return spec
        return {mode: [*names, "bias"] for mode, names in spec.items()}

    @property
    def strategy_choice(self):
        """What `strategy` resolves to on this device, and why.

        A `StrategyChoice(strategy, reason, min_ids_per_row)`; `strategy` is
        `"gather"`, `"matmul"` or `"per_batch"`.
        """
        if self.strategy != "auto" or self.table_parts:
            return self._choice
        return _cost_model.with_bag_width(
            self._choice, self.vocab_size, self._bag_width, self._calibration
        )

    def call(self, inputs, weights=None, mask=None):
        if self.input_format == "multi_hot":
            out = self._reduce_per_batch(inputs, self._multi_hot(inputs, weights))
        elif self.combiner is not None:
            bags = self._bags_from_ids(inputs, weights, mask)
            out = self._reduce_per_batch(inputs, bags)
        else:
            out = self._lookup_ids(inputs, weights, mask, self._strategy)
        out = tf.cast(out, self.compute_dtype)
        if self.bias is not None:
            out = out + tf.cast(self.bias, self.compute_dtype)
        return self.activation(out)

    def _multi_hot(self, inputs, weights):
        if weights is not None:
            raise ValueError(
                f"Layer '{self.name}' received `weights` with "
                '`input_format="multi_hot"`, where the matrix entries already are '
                "the weights. Scale the multi-hot matrix instead."
            )
        return _lookup.bags_from_multi_hot(
            inputs, self.vocab_size, self.combiner, self.name
        )

    def _reduce_per_batch(self, inputs, bags):
        # Under "auto", the strategy the cost model picks for this batch's ids
        # per row (a `tf.cond` when that is only known at run time).
        if self.strategy != "auto" or self.table_parts:
            return self._reduce(bags, self._strategy)
        use_matmul = _cost_model.use_matmul(
            self._choice,
            self.vocab_size,
            inputs,
            self.input_format == "multi_hot",
            self._calibration,
        )
        if isinstance(use_matmul, bool):
            return self._reduce(bags, "matmul" if use_matmul else "gather")
        table = _base.table_reader(self, read_once=True)
        sums = _cost_model.per_batch(
            use_matmul, lambda strategy: _lookup.bag_sums(table, bags, strategy)
        )
        return _lookup.combine(table, sums, bags, self.combiner or "sum")

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if self._bags:
            return input_shape[:-1] + (self.units,)
        return input_shape + (self.units,)

    def compute_output_spec(self, inputs, weights=None, mask=None):
        spec = super().compute_output_spec(inputs)
        if self._bags:
            return keras.KerasTensor(spec.shape, dtype=spec.dtype)
        return spec

    def quantize(self, mode=None, type_check=True, config=None):
        # See keras_lookup.Embedding.quantize. Both strategies read the same
        # row-wise quantized kernel (one scale per id), so they still agree.
        if type_check and type(self) is not DimensionReducer:
            raise self._not_implemented_error(self.quantize)
        super().quantize(mode, type_check=False, config=config)

    def get_config(self):
        config = super().get_config()
        for name in (
            "input_dim",
            "output_dim",
            "embeddings_initializer",
            "embeddings_regularizer",
            "embeddings_constraint",
        ):
            config.pop(name)
        config.update(
            _layer_utils.config_of(
                self,
                [
                    "vocab_size",
                    "units",
                    "strategy",
                    *_layer_utils.KERNEL_AND_BIAS_ARGS,
                    "input_format",
                ],
            )
        )
        return config
