"""Tables split by rows across the ps tasks of `ParameterServerStrategy`.

Built inside `tf.distribute.ParameterServerStrategy(resolver,
variable_partitioner=...)`, a layer's table becomes row blocks ("parts"), as
many as the partitioner says, placed on ps task `i % num_ps` and split the way
TensorFlow splits a `ShardedVariable` (TensorFlow's "div" partitioning: the
first `rows % parts` parts hold one row more). Keras 3 wraps the
`ShardedVariable` that the strategy would make inside one Keras variable,
whose `.handle` then fails in `tape.gradient`; here each part is its own Keras
variable (`embeddings_part_0`, `embeddings_part_1`, ...), looked up with
`tf.nn.embedding_lookup` over the parts: each id reads its row on the ps task
that holds it, and the gradient is one `tf.IndexedSlices` per part, which the
lazy optimizers apply on that task.

Each part is created without a value on its ps task and filled there, slice by
slice, with the rows the unsharded table would hold (the same draw, seeded
once per table), so nothing of the table passes through the coordinator or a
worker. A `tf.distribute` `ShardedVariable` over the parts is kept as the
layer's `_embeddings`: `tf.train.Checkpoint` saves it as slices of one logical
`(input_dim, output_dim)` variable, which restores into any number of parts,
or into an unsharded layer.

A part, and each optimizer slot made from it, carries a `Part` as
`_keras_lookup_part`, which `keras_lookup.save_state` / `load_state` use to
write and read the logical table. A bfloat16 or float16 table
(`table_dtype`) is split the same way, each part drawn in float32 and rounded
as the unsharded table is, and read in float32.

The first time a table is sharded, two of Keras's methods are wrapped (for
models and optimizers without a sharded table they stay Keras's own):
`keras.Model.get_weights` / `set_weights`, so that a model lists each table
once, logically, as its layer does; and `keras.optimizers.Optimizer`'s
checkpoint children, so that Keras's own optimizers, whose slots of a part
are found by name (`adopt_optimizer`), save them as logical slots too.
"""

import functools
import math

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.distribute import parameter_server_strategy_v2, sharded_variable
from tensorflow.python.ops import resource_variable_ops
from tensorflow.python.trackable import data_structures

from keras_lookup import _lookup, _tables


class Part:
    """Rows `start:start + shape[0]` of a logical variable made of `parts`."""

    def __init__(self, parts, index, start, logical_shape, logical_name):
        self.parts = parts  # shared by every part of the logical variable
        self.index = index
        self.start = start
        self.logical_shape = tuple(logical_shape)
        self.logical_name = logical_name


def part_of(variable):
    return getattr(variable, "_keras_lookup_part", None)


def _strategy():
    if not tf.distribute.has_strategy():
        return None
    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, parameter_server_strategy_v2.ParameterServerStrategyV2):
        return None
    return strategy


def plan(shape, dtype):
    """`[(start, stop, device)]` per part, or `None` if the table is whole."""
    strategy = _strategy()
    partitioner = getattr(strategy and strategy.extended, "_variable_partitioner", None)
    if partitioner is None:
        return None
    count = partitioner(shape=tf.TensorShape(shape), dtype=tf.as_dtype(dtype))
    count = min(int(count[0]), int(shape[0]))
    if count <= 1:
        return None
    num_ps = strategy.extended._num_ps
    base, extra = divmod(int(shape[0]), count)
    out, start = [], 0
    for i in range(count):
        stop = start + base + (1 if i < extra else 0)
        out.append((start, stop, f"/job:ps/replica:0/task:{i % num_ps}/device:CPU:0"))
        start = stop
    return out


def build_table(layer, name, shape, initializer, regularizer, constraint, dtype=None):
    """Adds the parts of a sharded `shape` table to `layer`; returns them.

    `dtype` (default: the layer's variable dtype) is the parts' dtype.
    """
    layout = plan(shape, dtype or layer.variable_dtype)
    _check_constraint(layer, constraint)
    seeds = {}  # one draw for the whole table, as unsharded
    parts = []
    for index, (start, stop, device) in enumerate(layout):
        creator = functools.partial(
            _create_part, device=device, start=start, table_shape=shape, seeds=seeds
        )
        with tf.variable_creator_scope(creator):
            variable = layer.add_weight(
                shape=(stop - start,) + tuple(shape[1:]),
                initializer=initializer,
                name=f"{name}_part_{index}",
                dtype=dtype,
                regularizer=_RegularizerOnPart(regularizer) if regularizer else None,
                constraint=_ConstraintOnPart(constraint) if constraint else None,
                trainable=True,
            )
        parts.append(variable)
    _speak_logical_tables()
    logical_name = parts[0].name.rsplit("_part_", 1)[0]
    for index, (variable, (start, _, _)) in enumerate(zip(parts, layout, strict=True)):
        variable._keras_lookup_part = Part(parts, index, start, shape, logical_name)
    return parts


def logical_values(variables):
    """The values of `variables`, each sharded table's parts as one array.

    A table's parts are listed where its first part is, so the list is what
    the same layer or model built without a partitioner gives.
    """
    out = []
    for variable in variables:
        part = part_of(variable)
        if part is None:
            out.append(variable.numpy())
        elif part.index == 0:
            out.append(np.concatenate([p.numpy() for p in part.parts], axis=0))
    return out


def assign_logical(variables, values, owner):
    """Assigns `logical_values`-style `values` to `variables` (of `owner`)."""
    targets = [v for v in variables if part_of(v) is None or part_of(v).index == 0]
    values = list(values)
    if len(values) != len(targets):
        raise ValueError(
            f"{owner} expects {len(targets)} weights (each table split across "
            f"parameter servers as one array). Received {len(values)}."
        )
    for variable, value in zip(targets, values, strict=True):
        value = np.asarray(value)
        part = part_of(variable)
        shape = part.logical_shape if part else tuple(variable.shape)
        if value.shape != tuple(shape):
            name = part.logical_name if part else variable.path
            raise ValueError(
                f"{owner} expects an array of shape {tuple(shape)} for {name!r}. "
                f"Received {value.shape}."
            )
        if part is None:
            variable.assign(value)
            continue
        for piece in part.parts:
            start = part_of(piece).start
            piece.assign(value[start : start + int(piece.shape[0])])


def _speak_logical_tables():
    """Makes Keras's models and optimizers speak logical tables.

    - `keras.Model.get_weights` / `set_weights`: a model lists its variables,
      so a sharded table would come out as its parts; here it is one array.
    - `keras.optimizers.Optimizer`'s checkpoint children: a Keras optimizer's
      slots of a table's parts are saved as one logical slot each (as
      keras_lookup's optimizers save theirs), which restores into any number
      of parts or into one process.

    Installed the first time a table is sharded (a process that never shards
    keeps Keras's methods untouched); for models and optimizers without a
    sharded table they do what Keras's own do.
    """
    optimizer_class = keras.optimizers.Optimizer
    keras_children = optimizer_class._trackable_children

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        children = keras_children(self, save_type, **kwargs)
        variables = getattr(self, "_trainable_variables", [])
        if save_type != "checkpoint" or not any(part_of(v) for v in variables):
            return children
        adopt_optimizer(self)
        cache = self.__dict__.setdefault("_keras_lookup_logical_lists", {})
        return logical_children(children, cache)

    model_class = keras.Model
    if getattr(model_class.get_weights, "_keras_lookup", False):
        return
    keras_get, keras_set = model_class.get_weights, model_class.set_weights

    @functools.wraps(keras_get)
    def get_weights(self):
        weights = self.weights
        if not any(part_of(v) for v in weights):
            return keras_get(self)
        return logical_values(weights)

    @functools.wraps(keras_set)
    def set_weights(self, weights):
        variables = self.weights
        if not any(part_of(v) for v in variables):
            return keras_set(self, weights)
        assign_logical(variables, weights, f"Model '{self.name}'")

    get_weights._keras_lookup = set_weights._keras_lookup = True
    model_class.get_weights, model_class.set_weights = get_weights, set_weights
    optimizer_class._trackable_children = _trackable_children


def logical_variable(parts, name):
    """A `ShardedVariable` over the parts' `tf.Variable`s (for checkpoints)."""
    with tf.init_scope():
        return sharded_variable.ShardedVariable(
            [part.value for part in parts], name=name
        )


def logical_of(variable):
    """The `ShardedVariable` that a part (of a table or a slot) belongs to."""
    part = part_of(variable)
    first = part.parts[0]
    logical = getattr(first, "_keras_lookup_logical", None)
    if logical is None:
        logical = logical_variable(part.parts, part.logical_name)
        first._keras_lookup_logical = logical
    return logical


def logical_children(children, cache):
    """Checkpoint children with each list's parts replaced by their logical
    variable, listed where the first part is: the lists then match those of
    the unsharded model, and the logical variables are saved as slices that
    restore into any number of parts. `cache` (a dict kept by the owner)
    makes every call return the same list objects, as checkpoints require."""
    out = dict(children)
    for name, child in children.items():
        if not isinstance(child, data_structures.List):
            continue
        if not any(part_of(v) for v in child):
            continue
        key = (name, tuple(id(v) for v in child))
        if key not in cache:
            cache[key] = data_structures.List(
                [
                    logical_of(v) if part_of(v) else v
                    for v in child
                    if part_of(v) is None or part_of(v).index == 0
                ]
            )
        out[name] = cache[key]
    return out


def _create_part(next_creator, device, start, table_shape, seeds, **kwargs):
    found = _tables._keras_initializer(kwargs.get("initial_value"))
    if found is None:
        raise RuntimeError(
            "A sharded table part must be created by `add_weight` with a Keras "
            "initializer."
        )
    initializer, part_shape, dtype = found
    with tf.device(device):
        variable = resource_variable_ops.UninitializedVariable(
            shape=part_shape,
            dtype=dtype,
            name=kwargs.get("name"),
            trainable=kwargs.get("trainable", True),
        )
        fill_rows(variable, initializer, table_shape, start, dtype, seeds)
    # As for the strategy's own variables (checked by `colocate_vars_with`).
    variable._distribute_strategy = _strategy()
    return variable


def fill_rows(variable, initializer, shape, start, dtype, seeds):
    """Writes rows `start:` of `initializer(shape, dtype)` into `variable`.

    A half-precision table's `RoundedInitializer` draws each slice in float32
    and rounds it to nearest, as the unsharded table is built.
    """
    rows = int(variable.shape[0])
    stop = start + rows
    rest = tuple(shape[1:])
    draw_dtype = dtype
    if isinstance(initializer, _tables.RoundedInitializer):
        initializer, draw_dtype = initializer.initializer, tf.float32
    constant = isinstance(initializer, _tables._CONSTANT) and not np.ndim(
        getattr(initializer, "value", 0)
    )
    if not (
        constant
        or draw_dtype == tf.float32
        and isinstance(initializer, _tables._RANDOM)
    ):
        # Other initializers draw the whole table, on this part's ps task.
        return _tables._assign_graph(
            variable,
            lambda: tf.cast(initializer(shape, draw_dtype)[start:stop], dtype),
        )
    _tables._assign_graph(
        variable, lambda: tf.raw_ops.Empty(shape=(rows,) + rest, dtype=dtype)
    )
    row_size = max(math.prod(rest), 1)
    step = max(4, _tables.SLICE_SIZE // row_size // 4 * 4)
    for low in range(start, stop, step):
        high = min(low + step, stop)
        if constant:
            values = initializer((high - low,) + rest, draw_dtype)
        else:
            # A draw starts on a group of four entries (one Philox counter).
            first = low
            while (first * row_size) % 4:
                first -= 1
            with _tables._draw_rows(first, high, tuple(shape), seeds):
                values = initializer(tuple(shape), draw_dtype)
            values = tf.convert_to_tensor(values, draw_dtype)[low - first :]
        tf.raw_ops.ResourceStridedSliceAssign(
            ref=variable.handle,
            begin=[low - start] + [0] * len(rest),
            end=[high - start] + list(rest),
            strides=[1] * (len(rest) + 1),
            value=tf.cast(tf.convert_to_tensor(values, draw_dtype), dtype),
        )
    if hasattr(tf.raw_ops, "DisableCopyOnRead"):
        tf.raw_ops.DisableCopyOnRead(resource=variable.handle)


class _OnPart:
    """Runs a regularizer or constraint on the ps task that holds the part.

    Both see one part at a time, so only those that decompose by rows give
    the unsharded result: sums of entries (L1, L2) and row-wise constraints.
    """

    def __init__(self, function):
        self.function = function

    def __call__(self, variable):
        device = getattr(variable, "value", variable).device
        with tf.device(device):
            return self.function(variable)


# Keras 3.12 accepts only these base classes on a variable (3.15: any callable).
class _RegularizerOnPart(_OnPart, keras.regularizers.Regularizer):
    pass


class _ConstraintOnPart(_OnPart, keras.constraints.Constraint):
    pass


def _check_constraint(layer, constraint):
    if constraint is None:
        return
    axis = getattr(constraint, "axis", None)
    if axis is None and type(constraint).__name__ == "NonNeg":
        return
    if axis in (1, -1, [1], [-1], (1,), (-1,)):
        return
    raise ValueError(
        f"Layer '{layer.name}' has its table split across parameter servers, "
        f"so its constraint sees one part of the table at a time, but "
        f"{type(constraint).__name__}(axis={axis!r}) needs the whole table "
        "(it works across rows). Use a row-wise constraint (e.g. "
        "`keras.constraints.MaxNorm(axis=1)`), `NonNeg`, or build the layer "
        "without a `variable_partitioner`."
    )


class ShardedTableReader:
    """A `_lookup.TableReader` over the parts of a sharded table (gather only)."""

    def __init__(self, parts, vocab_size, dim, layer_name):
        self.vocab_size = vocab_size
        self.dim = dim
        # A half-precision table is read in float32, as `_lookup.TableReader`
        # reads one, and its gradient stays float32.
        self._half = tf.as_dtype(parts[0].dtype) in _lookup.HALF_DTYPES
        self.dtype = tf.float32 if self._half else tf.as_dtype(parts[0].dtype)
        self._parts = parts
        self._layer_name = layer_name

    def gather(self, ids):
        # Each id reads its row on the ps task holding it ("div" split, as
        # the parts were made); the gradient is one IndexedSlices per part.
        rows = tf.nn.embedding_lookup(self._parts, ids)
        return _lookup._widen(rows) if self._half else rows

    def matmul(self, x):
        raise not_shardable(self._layer_name, 'strategy="matmul"', "gather")

    def times_transpose(self, x):
        # `x @ table^T`, one block of columns per part: what a dense
        # multi-hot input's gradient needs, computed only if it is used.
        x = tf.cast(x, tf.float32)
        blocks = [
            tf.matmul(x, tf.cast(p, tf.float32), transpose_b=True) for p in self._parts
        ]
        return tf.concat(blocks, axis=1)

    def whole(self):
        raise not_shardable(
            self._layer_name,
            "reverse=True",
            "a separate `keras_lookup.Dense`/`keras.layers.Dense` output layer",
        )


def not_shardable(layer_name, what, way_out):
    return NotImplementedError(
        f"Layer '{layer_name}' has its table split across parameter servers "
        f"(a `ParameterServerStrategy` with a `variable_partitioner`), and "
        f"{what} needs the whole table in one place. Use {way_out} instead, "
        "or build the layer without a `variable_partitioner` (whole tables, "
        "placed round-robin on the ps tasks)."
    )


def mark_slot(optimizer, reference, slot, name):
    """Marks optimizer `slot` of a table part as a part of the logical slot."""
    part = part_of(reference)
    if part is None:
        return slot
    groups = optimizer.__dict__.setdefault("_keras_lookup_slot_parts", {})
    parts = groups.setdefault((id(part.parts), name), [None] * len(part.parts))
    parts[part.index] = slot
    shape = (part.logical_shape[0],) + tuple(slot.shape[1:])
    slot_name = slot.name.replace(
        f"{part.logical_name}_part_{part.index}", part.logical_name
    )
    slot._keras_lookup_part = Part(parts, part.index, part.start, shape, slot_name)
    return slot


def adopt_optimizer(optimizer):
    """Marks the slots a Keras optimizer made for table parts (`mark_slot`).

    keras_lookup's optimizers mark each slot they make for a part of a sharded
    table. Keras's own optimizers make the same slots (named
    `{part path}_{slot name}`, on the part's ps task) without marking them;
    this marks them by name, so that they are saved as logical slots (which
    restore into any number of parts) and listed logically by `save_state`.
    Raises if a slot of a part does not have the part's rows.
    """
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None:  # LossScaleOptimizer: the slots are the inner one's
        adopt_optimizer(inner)
    parts = [v for v in getattr(optimizer, "_trainable_variables", []) if part_of(v)]
    if not parts or not optimizer.built:
        return
    slots = [v for v in optimizer.variables if part_of(v) is None]
    for part in parts:
        prefix = part.path.replace("/", "_") + "_"
        for slot in slots:
            if part_of(slot) is not None or not slot.name.startswith(prefix):
                continue
            if not slot.shape or int(slot.shape[0]) != int(part.shape[0]):
                raise NotImplementedError(
                    f"{type(optimizer).__name__} keeps a slot {slot.path!r} of "
                    f"shape {tuple(slot.shape)} for the part {part.path!r} of a "
                    f"sharded table ({tuple(part.shape)}): it cannot be saved as "
                    "part of a logical slot, so its checkpoints restore only "
                    "into the same number of parts. Use a keras_lookup "
                    "optimizer (`keras_lookup.optimizers`) to restore into any."
                )
            mark_slot(optimizer, part, slot, slot.name[len(prefix) :])
