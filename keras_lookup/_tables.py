"""Large tables built in place, in slices, with the values Keras would give.

Keras creates a weight as `tf.Variable(lambda: initializer(shape, dtype))`
(`keras/src/backend/tensorflow/core.py`, `Variable._initialize`): the
initializer materializes the whole table as an eager tensor, and the
variable's `AssignVariableOp` then copies it, because Python still holds the
tensor (the op adopts its input's buffer only when it is the last user). An
eager initializer also keeps its temporaries alive: `stateless_uniform` is
`rnd * (maxval - minval) + minval`, three full-size buffers. Building a
25M x 64 table (5.96 GiB) peaked at 13.0 GiB.

`in_place()` is a variable-creator scope. A variable created in it with one
of Keras's random initializers (`RandomUniform`, `RandomNormal`,
`TruncatedNormal`, and `VarianceScaling` with its Glorot, He and LeCun
subclasses) is created without a value and filled slice by slice, each
slice drawn with the counter that the full draw would have used there:
TensorFlow's stateless Philox kernels give output element `i` from counter
`counter + i // 4` (uniform and normal) or `counter + 256 * (i // 4)`
(truncated normal, which reserves 256 samples per group of four outputs).
So the table holds exactly the values of `initializer(shape)` (tested bit
for bit), and the peak is the table plus one slice. `Zeros`, `Ones` and a
scalar `Constant` (optimizer slots, for instance) are filled in slices of
their own shape. Other initializers (`Orthogonal`, `Identity`, custom ones)
run as one graph whose output the variable adopts without a copy, so they
peak at the table plus their temporaries; a graph is not used for
constants, because TensorFlow folds a constant fill into a constant, which
cannot exceed the 2 GB protocol-buffer limit. Variables
created under a `tf.distribute` strategy or inside a `tf.function` are left
to Keras and TensorFlow.

The initializer is called as Keras would call it, with the backend's
`uniform`, `normal` and `truncated_normal` replaced while a slice is drawn,
so its own arithmetic (VarianceScaling's limit, for instance) is reused; the
seed is drawn once, so a `keras.random.SeedGenerator` seed advances once, as
it does for a whole-table draw.
"""

import contextlib
import functools
import inspect
import math
import threading

import keras
import numpy as np
import tensorflow as tf
from keras.src.backend.tensorflow import random as _backend_random
from tensorflow.python.ops import gen_stateless_random_ops_v2 as _stateless
from tensorflow.python.ops import random_ops_util, resource_variable_ops

# Tables with fewer entries are created the Keras way.
MIN_SIZE = 2**20
# Entries per slice: 16 MiB of float32.
SLICE_SIZE = 2**22

# Keras backend function -> (TensorFlow kernel, counters per group of four).
_DRAWS = {
    "uniform": (_stateless.stateless_random_uniform_v2, 1),
    "normal": (_stateless.stateless_random_normal_v2, 1),
    "truncated_normal": (_stateless.stateless_truncated_normal_v2, 256),
}
_RANDOM = (
    keras.initializers.RandomUniform,
    keras.initializers.RandomNormal,
    keras.initializers.TruncatedNormal,
    keras.initializers.VarianceScaling,
)
# Initializers whose value does not depend on the shape (with a scalar value).
_CONSTANT = (
    keras.initializers.Zeros,
    keras.initializers.Ones,
    keras.initializers.Constant,
)
# Only one thread at a time may replace the backend's random functions.
_PATCH_LOCK = threading.Lock()


class RoundedInitializer(keras.initializers.Initializer):
    """`initializer`'s float32 values, rounded to nearest in the dtype asked for.

    A bfloat16 or float16 table starts as the float32 table of the same seed
    would, rounded; built in place, each slice is drawn in float32 and
    rounded, so the peak stays near the half table's own size.
    """

    def __init__(self, initializer):
        self.initializer = initializer

    def __call__(self, shape, dtype=None):
        return keras.ops.cast(self.initializer(shape, dtype="float32"), dtype)

    def get_config(self):
        return {"initializer": keras.initializers.serialize(self.initializer)}


@contextlib.contextmanager
def in_place(min_size=None):
    """Creates the Keras variables of at least `min_size` entries in place.

    `min_size` defaults to `MIN_SIZE`.
    """
    min_size = MIN_SIZE if min_size is None else min_size
    with tf.variable_creator_scope(functools.partial(_create, min_size=min_size)):
        yield


def _create(next_creator, min_size, **kwargs):
    found = _keras_initializer(kwargs.get("initial_value"))
    if (
        found is None
        or not tf.executing_eagerly()
        or tf.distribute.has_strategy()
        or math.prod(found[1]) < max(min_size, 1)
    ):
        return next_creator(**kwargs)
    initializer, shape, dtype = found
    variable = resource_variable_ops.UninitializedVariable(
        shape=shape,
        dtype=dtype,
        name=kwargs.get("name"),
        trainable=kwargs.get("trainable", True),
        synchronization=kwargs.get("synchronization"),
        aggregation=kwargs.get("aggregation"),
    )
    fill(variable, initializer, shape, dtype)
    return variable


def _keras_initializer(initial_value):
    """`(initializer, shape, dtype)` of a Keras variable's initial value.

    Keras passes `lambda: initializer(self._shape, dtype=self._dtype)`; any
    other initial value is left to TensorFlow.
    """
    if not callable(initial_value) or not inspect.isfunction(initial_value):
        return None
    names = inspect.getclosurevars(initial_value).nonlocals
    initializer, owner = names.get("initializer"), names.get("self")
    if initializer is None or not isinstance(owner, keras.Variable):
        return None
    return initializer, tuple(int(n) for n in owner.shape), tf.as_dtype(owner.dtype)


def fill(variable, initializer, shape, dtype):
    """Writes `initializer(shape, dtype)` into the uninitialized `variable`."""
    draw_dtype = dtype
    if isinstance(initializer, RoundedInitializer):
        # A half table: each slice is drawn in float32, then rounded.
        initializer, draw_dtype = initializer.initializer, tf.float32
    constant = isinstance(initializer, _CONSTANT) and not np.ndim(
        getattr(initializer, "value", 0)
    )
    if not shape or not (
        constant or draw_dtype == tf.float32 and isinstance(initializer, _RANDOM)
    ):
        # Other initializers run as one graph: the variable adopts its output
        # without a copy, but their temporaries remain.
        return _assign_graph(
            variable, lambda: tf.cast(initializer(shape, draw_dtype), dtype)
        )
    # A value the variable adopts without a copy or a memset.
    _assign_empty(variable.handle, tf.constant(shape, tf.int32), dtype)
    row_size = math.prod(shape[1:])
    # Slices start on a multiple of four entries: one Philox counter.
    # A half table's slices hold half the entries: each is drawn in float32
    # and rounded, two buffers (measured: 1.20x a 256 MiB bfloat16 table
    # built in full-size slices, 1.03x in half-size ones).
    slice_size = SLICE_SIZE if draw_dtype == dtype else SLICE_SIZE // 2
    rows = max(4, slice_size // max(row_size, 1) // 4 * 4)
    seeds = {}
    for start in range(0, shape[0], rows):
        stop = min(start + rows, shape[0])
        if constant:  # the same value everywhere: a slice of the shape's own
            values = initializer((stop - start,) + shape[1:], draw_dtype)
        else:
            with _draw_rows(start, stop, shape, seeds):
                values = initializer(shape, draw_dtype)
        values = tf.cast(tf.convert_to_tensor(values, draw_dtype), dtype)
        if tuple(values.shape) != (stop - start,) + shape[1:]:
            raise RuntimeError(
                f"{type(initializer).__name__} did not draw one value per table "
                "entry; build the table without `keras_lookup._tables.in_place`."
            )
        tf.raw_ops.ResourceStridedSliceAssign(
            ref=variable.handle,
            begin=[start] + [0] * (len(shape) - 1),
            end=[stop] + list(shape[1:]),
            strides=[1] * len(shape),
            value=values,
        )
        del values
    # Slice writes can leave the variable in copy-on-read mode, where each
    # dense read (`keras.layers.Embedding` makes one every step) copies it.
    if hasattr(tf.raw_ops, "DisableCopyOnRead"):
        tf.raw_ops.DisableCopyOnRead(resource=variable.handle)


# Inside a graph the value has no other user when `AssignVariableOp` runs, so
# the variable adopts its buffer instead of copying it (eagerly, Python would
# still hold the value, and the op would copy it).
@tf.function(autograph=False, reduce_retracing=True)
def _assign_empty(handle, shape, dtype):
    # One function for every table and slot, traced once per dtype and rank:
    # a new `tf.function` per variable made TensorFlow warn of retracing once
    # a model had five large variables.
    tf.raw_ops.AssignVariableOp(
        resource=handle, value=tf.raw_ops.Empty(shape=shape, dtype=dtype)
    )


def _assign_graph(variable, value_fn):
    """Assigns `value_fn()`, run as one graph, to `variable` without a copy."""

    def assign():
        variable.assign(value_fn(), read_value=False)

    # The graph depends on `value_fn`, so it is traced for each variable; as
    # a concrete function it is called without the retracing warning that
    # repeated calls of new `tf.function`s raise.
    tf.function(assign, autograph=False).get_concrete_function()()


@contextlib.contextmanager
def _draw_rows(start, stop, shape, seeds):
    """Makes the backend's random draws of `shape` return rows `start:stop`."""

    def key_counter(name, seed):
        if name not in seeds:  # draw the seed once for the whole table
            seeds[name] = _backend_random._cast_seed(_backend_random.draw_seed(seed))
        key, counter, alg = random_ops_util.get_key_counter_alg(seeds[name], None)
        offset = start * math.prod(shape[1:]) // 4 * _DRAWS[name][1]
        return key, _skip(counter, offset), alg

    with _replaced_draws(shape, (stop - start,) + shape[1:], key_counter):
        yield


def draw_rows(initializer, shape, count, seed, dtype):
    """`count` rows of values as `initializer(shape, dtype)` would draw them.

    For rows handed out again (`DynamicEmbedding`): each row is drawn from the
    distribution the initializer gives a row of the whole `shape` table (a
    variance-scaling initializer's scale comes from `shape`, not from the
    rows drawn), from the stateless random `seed` (a `(2,)` integer tensor),
    so that the same seed draws the same rows. `count` may be a tensor.
    Constant initializers give their constant; other initializers are not
    supported (see `draws_rows`).
    """
    rows_shape = tf.concat([tf.reshape(tf.cast(count, tf.int32), [1]), shape[1:]], 0)
    if isinstance(initializer, _CONSTANT):
        return tf.cast(initializer(rows_shape, dtype), dtype)
    seed = tf.cast(seed, tf.int64)

    def key_counter(name, _):
        return random_ops_util.get_key_counter_alg(seed, None)

    with _replaced_draws(shape, rows_shape, key_counter):
        return tf.cast(initializer(shape, dtype), dtype)


def draws_rows(initializer):
    """Whether `draw_rows` supports `initializer`."""
    constant = isinstance(initializer, _CONSTANT) and not np.ndim(
        getattr(initializer, "value", 0)
    )
    return constant or isinstance(initializer, _RANDOM)


@contextlib.contextmanager
def _replaced_draws(shape, rows_shape, key_counter):
    """Makes the backend's random draws of `shape` return `rows_shape` samples.

    `key_counter(name, seed)` gives the Philox `(key, counter, alg)` of the
    draw `name` ("uniform", "normal" or "truncated_normal") that the
    initializer asks for with `seed`.
    """

    def draw(name):
        kernel = _DRAWS[name][0]

        def rows(*args, dtype=None, seed=None, **kwargs):
            if "shape" in kwargs:
                draw_shape = kwargs.pop("shape")
            else:
                draw_shape, args = args[0], args[1:]
            if tuple(draw_shape) != shape:
                raise RuntimeError(
                    f"The initializer drew a {tuple(draw_shape)} sample for a "
                    f"{shape} table; it cannot be built in slices."
                )
            key, counter, alg = key_counter(name, seed)
            rnd = kernel(
                rows_shape, key=key, counter=counter, dtype=tf.as_dtype(dtype), alg=alg
            )
            # The arithmetic of `tf.random.stateless_uniform` / `_normal` /
            # `stateless_truncated_normal`, so the values are bit-identical.
            if name == "uniform":
                low, high = _params(
                    args, kwargs, ("minval", "maxval"), (0.0, 1.0), dtype
                )
                return tf.add(rnd * (high - low), low)
            mean, stddev = _params(args, kwargs, ("mean", "stddev"), (0.0, 1.0), dtype)
            return tf.add(rnd * stddev, mean)

        return rows

    with _PATCH_LOCK:
        saved = {name: getattr(_backend_random, name) for name in _DRAWS}
        try:
            for name in saved:
                setattr(_backend_random, name, draw(name))
            yield
        finally:
            for name, original in saved.items():
                setattr(_backend_random, name, original)


def _params(args, kwargs, names, defaults, dtype):
    values = (
        list(args)
        + [kwargs.get(n, d) for n, d in zip(names, defaults, strict=True)][len(args) :]
    )
    return [tf.convert_to_tensor(tf.cast(v, dtype), dtype) for v in values]


def _skip(counter, offset):
    """`counter + offset` as Philox's 128-bit counter (`PhiloxRandom::Skip`)."""
    words = counter.numpy().view(np.uint64).copy()
    low = words[:1] + np.uint64(offset)  # arrays wrap around silently
    words[1:2] += (low < words[:1]).astype(np.uint64)
    words[:1] = low
    return tf.constant(words.view(counter.dtype.as_numpy_dtype))
