"""Restoring a `tf.train.Checkpoint` into existing variables, in slices."""

import math

import keras
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

# Variables with at least this many entries are read in slices.
MIN_SIZE = 2**20
# Entries per slice: 64 MiB of float32.
SLICE_SIZE = 2**24


def read_checkpoint(prefix, **objects):
    """Restores `objects` from a `tf.train.Checkpoint`, large tables in slices.

    Use it with `tf.train.Checkpoint` to save and restore models whose tables
    take most of the memory. `tf.train.Checkpoint(**objects).write(prefix)`
    writes each variable from its own buffer (no copy), but its `read`
    restores a variable by reading the whole saved tensor and then assigning
    it: one more copy of the largest table. This reads every variable of at
    least 2**20 entries 64 MiB at a time straight into the existing variable
    (TensorFlow's `RestoreV2` with a slice spec), so loading needs no more
    memory than the model itself. It is strict, like
    `tf.train.Checkpoint.read(prefix).assert_consumed()`: every variable of
    the checkpoint must match a variable of `objects`, with the same shape.
    Build the model and the optimizer first
    (`model.optimizer.build(model.trainable_variables)`) so that their
    variables exist.

    Args:
        prefix: String. The prefix `tf.train.Checkpoint.write` returned.
        **objects: The objects the checkpoint was written with, under the
            same names, e.g. `model=model, optimizer=model.optimizer`.

    Example:

    >>> import os, tempfile, keras, tensorflow as tf, keras_lookup
    >>> def build():
    ...     model = keras.Sequential(
    ...         [keras.Input((3,), dtype="int32"), keras_lookup.Embedding(10, 4)]
    ...     )
    ...     model.compile(keras_lookup.optimizers.LazyRowwiseAdagrad(), "mse")
    ...     model.optimizer.build(model.trainable_variables)
    ...     return model
    >>> model = build()
    >>> prefix = os.path.join(tempfile.mkdtemp(), "ckpt")
    >>> prefix = tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(
    ...     prefix
    ... )
    >>> restored = build()
    >>> keras_lookup.read_checkpoint(
    ...     prefix, model=restored, optimizer=restored.optimizer
    ... )
    >>> bool((restored.get_weights()[0] == model.get_weights()[0]).all())
    True
    """
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
        reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")
    )
    targets = _variables_by_key(graph, tf.train.Checkpoint(**objects))
    saved = {
        attribute.checkpoint_key
        for node in graph.nodes
        for attribute in node.attributes
        if attribute.name == "VARIABLE_VALUE"
    }
    if saved - set(targets):
        raise ValueError(
            f"{len(saved - set(targets))} variable(s) of the checkpoint at "
            f"{prefix!r} have no counterpart in the objects given, e.g. "
            f"{sorted(saved - set(targets))[0]!r}. Pass the objects the "
            "checkpoint was written with, under the same names, built (call "
            "`optimizer.build(model.trainable_variables)` first)."
        )
    targets = {
        key: variable.value if isinstance(variable, keras.Variable) else variable
        for key, variable in targets.items()
    }
    # Every shape is checked before anything is written.
    for key, variable in targets.items():
        shape = tuple(shapes[key])
        if tuple(variable.shape) != shape:
            raise ValueError(
                f"Variable {variable.name!r} has shape {tuple(variable.shape)}, but "
                f"the checkpoint holds {shape} for it ({key!r}). Build the model "
                "with the configuration it was saved with."
            )
    for key, variable in targets.items():
        _restore(variable, prefix, key, tuple(shapes[key]), dtypes[key])


def _variables_by_key(graph, root):
    targets, stack, seen = {}, [(0, root)], set()
    while stack:
        node_id, obj = stack.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        node = graph.nodes[node_id]
        for attribute in node.attributes:
            if attribute.name == "VARIABLE_VALUE" and isinstance(
                obj, (tf.Variable, keras.Variable)
            ):
                targets[attribute.checkpoint_key] = obj
        children = obj._trackable_children(save_type="checkpoint")
        stack.extend(
            (child.node_id, children[child.local_name])
            for child in node.children
            if child.local_name in children
        )
    return targets


def _restore(variable, prefix, key, shape, dtype):
    size = math.prod(shape)
    if size < MIN_SIZE or not shape:
        (value,) = tf.raw_ops.RestoreV2(
            prefix=prefix, tensor_names=[key], shape_and_slices=[""], dtypes=[dtype]
        )
        variable.assign(value)
        return
    rows = max(1, SLICE_SIZE // max(1, size // shape[0]))
    dims = " ".join(str(n) for n in shape)
    rest = ":-" * (len(shape) - 1)
    for start in range(0, shape[0], rows):
        count = min(rows, shape[0] - start)
        (value,) = tf.raw_ops.RestoreV2(
            prefix=prefix,
            tensor_names=[key],
            shape_and_slices=[f"{dims} {start},{count}{rest}"],
            dtypes=[dtype],
        )
        tf.raw_ops.ResourceStridedSliceAssign(
            ref=variable.handle,
            begin=[start] + [0] * (len(shape) - 1),
            end=[start + count] + list(shape[1:]),
            strides=[1] * len(shape),
            value=value,
        )
        del value
