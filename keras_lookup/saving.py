"""Saving that never leaves a broken file behind, and saving tables in slices."""

import math
import os
import tempfile


def save_model(model, filepath, **kwargs):
    """Saves `model` to `filepath` atomically: all of the new file or none of it.

    `model.save(filepath)` writes the `.keras` zip in place, so an error or a
    crash halfway (a full disk, a layer whose state fails to save, an
    interrupted process) leaves a truncated file where the last good model was.
    This writes to a temporary file in the same folder and renames it over
    `filepath` only once the save has succeeded (`os.replace` is atomic on
    POSIX and Windows within one file system).

    Args:
        model: A `keras.Model`.
        filepath: String or `os.PathLike`, ending in `.keras`.
        **kwargs: Passed on to `model.save`.

    Example:

    >>> import os, tempfile, keras, keras_lookup
    >>> model = keras.Sequential([keras_lookup.Embedding(10, 4)])
    >>> model.build((None, 3))
    >>> path = os.path.join(tempfile.mkdtemp(), "model.keras")
    >>> keras_lookup.save_model(model, path)
    >>> sorted(os.listdir(os.path.dirname(path)))
    ['model.keras']
    """
    filepath = os.fspath(filepath)
    if not filepath.endswith(".keras"):
        raise ValueError(
            "`filepath` must end in `.keras` (the format `save_model` writes "
            f"atomically). Received: filepath={filepath!r}"
        )
    folder = os.path.dirname(os.path.abspath(filepath))
    handle, tmp_path = tempfile.mkstemp(
        dir=folder, prefix=".tmp-", suffix="-" + os.path.basename(filepath)
    )
    os.close(handle)
    try:
        model.save(tmp_path, overwrite=True, **kwargs)
        # mkstemp makes the file private (0600); give it the mode that
        # `model.save` would have: the old file's, or the umask's default.
        os.chmod(tmp_path, _mode_for(filepath))
        os.replace(tmp_path, filepath)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def _mode_for(filepath):
    if os.path.exists(filepath):
        return os.stat(filepath).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# Rows per slice when a variable is written or read: 64 MiB of float32 rows
# of 64 entries (at least one row).
SLICE_SIZE = 2**24
_MANIFEST = "manifest.json"


def save_state(model, folder):
    """Saves a model's variables and its optimizer's, 64 MiB at a time.

    Use it for models whose tables fill the memory: `model.save` and
    `model.save_weights` hold two more copies of a table while they write it
    (the HDF5 file is built in memory, from NumPy copies), and
    `tf.train.Checkpoint.read` two more while it restores. This writes each
    variable as a `.npy` file, row slice by row slice, and `load_state` reads
    it back the same way into the variables of a model built like this one,
    so neither needs more than the model and one slice. Architecture and
    configuration are not saved: keep `.keras` files for those, and for
    ordinary sizes.

    Args:
        model: A built `keras.Model`. If it has a built optimizer, the
            optimizer's variables (iterations, slots) are saved too.
        folder: String or `os.PathLike`. Created if needed; files already
            there are overwritten.

    Example:

    >>> import tempfile, keras, numpy as np, keras_lookup
    >>> def build():
    ...     model = keras.Sequential(
    ...         [keras.Input((3,), dtype="int32"), keras_lookup.Embedding(10, 4)]
    ...     )
    ...     model.compile(keras_lookup.optimizers.LazyRowwiseAdagrad(), "mse")
    ...     return model
    >>> model = build()
    >>> model.optimizer.build(model.trainable_variables)
    >>> folder = tempfile.mkdtemp()
    >>> keras_lookup.save_state(model, folder)
    >>> restored = build()
    >>> keras_lookup.load_state(restored, folder)
    >>> bool(np.array_equal(restored.get_weights()[0], model.get_weights()[0]))
    True
    """
    import json

    import numpy as np

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    entries = []
    for index, (path, shape, parts) in enumerate(_logical_variables(model)):
        values = [(_backend_variable(v), start) for v, start in parts]
        dtype = np.dtype(values[0][0].dtype.as_numpy_dtype)
        name = f"{index:05d}.npy"
        with open(os.path.join(folder, name), "wb") as f:
            np.lib.format.write_array_header_1_0(
                f,
                {
                    "descr": np.lib.format.dtype_to_descr(dtype),
                    "fortran_order": False,
                    "shape": shape,
                },
            )
            # A sharded variable is written part after part (each part's rows
            # read on its ps task), as the one logical array it stands for.
            for value, _ in values:
                part_shape = tuple(int(n) for n in value.shape)
                # A part's slices are read on its ps task and sent over the
                # network: smaller ones keep that task's peak memory low.
                size = SLICE_SIZE // 8 if len(values) > 1 else SLICE_SIZE
                for start, stop in _row_slices(part_shape, size):
                    f.write(_read_rows(value, start, stop).tobytes())
                _disable_copy_on_read(value)
        entries.append({"file": name, "path": path, "shape": list(shape)})
    maps = _save_maps(model, folder)
    # Written last: a folder without it (an interrupted save) does not load.
    with open(os.path.join(folder, _MANIFEST), "w") as f:
        json.dump({"variables": entries, "maps": maps}, f, indent=1)


def load_state(model, folder):
    """Loads what `save_state` wrote into `model`, 64 MiB at a time.

    `model` must be built like the saved one; its optimizer, if it has one,
    is built first when it is not yet.

    Args:
        model: A built `keras.Model`.
        folder: String or `os.PathLike` written by `save_state`.
    """
    import json

    import numpy as np
    import tensorflow as tf

    folder = os.fspath(folder)
    manifest_path = os.path.join(folder, _MANIFEST)
    if not os.path.exists(manifest_path):
        raise ValueError(
            f"{manifest_path!r} does not exist: `folder` must be written by "
            f"`keras_lookup.save_state` (completely). Received: folder={folder!r}"
        )
    with open(manifest_path) as f:
        manifest = json.load(f)
    entries = manifest["variables"]
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    variables = _logical_variables(model)
    if len(variables) != len(entries):
        raise ValueError(
            f"The model has {len(variables)} variables (optimizer included) but "
            f"{folder!r} holds {len(entries)}. Build and compile the model as the "
            "saved one was."
        )
    for (path, shape, _), entry in zip(variables, entries, strict=True):
        if list(shape) != entry["shape"]:
            raise ValueError(
                f"Variable {path!r} has shape {tuple(shape)}, but "
                f"{folder!r} holds {tuple(entry['shape'])} for it (saved as "
                f"{entry['path']!r}). Build the model as the saved one was."
            )
    map_layers = _map_layers(model, folder, manifest.get("maps", []))
    for (_, _, parts), entry in zip(variables, entries, strict=True):
        values = [(_backend_variable(v), start) for v, start in parts]
        with open(os.path.join(folder, entry["file"]), "rb") as f:
            version = np.lib.format.read_magic(f)
            if version != (1, 0):
                raise ValueError(f"{f.name!r} was not written by `save_state`.")
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            if dtype.kind == "V":
                # NumPy has no name for bfloat16 and writes it as raw bytes.
                dtype = np.dtype(values[0][0].dtype.as_numpy_dtype)
            if not shape:
                values[0][0].assign(np.fromfile(f, dtype, count=1).reshape(()))
                continue
            row = int(np.prod(shape[1:]))
            for start, stop in _row_slices(shape):
                rows = np.fromfile(f, dtype, count=(stop - start) * row)
                rows = rows.reshape((stop - start,) + tuple(shape[1:]))
                # Each part (one, unless the variable is sharded) takes the
                # rows of this slice that it holds, whatever the saved split.
                for value, first in values:
                    low = max(start, first)
                    high = min(stop, first + int(value.shape[0]))
                    if low >= high:
                        continue
                    tf.raw_ops.ResourceStridedSliceAssign(
                        ref=value.handle,
                        begin=[low - first] + [0] * (len(shape) - 1),
                        end=[high - first] + list(shape[1:]),
                        strides=[1] * len(shape),
                        value=rows[low - start : high - start],
                    )
        for value, _ in values:
            _disable_copy_on_read(value)
    for layer, entry in map_layers:
        arrays = {
            name: np.load(os.path.join(folder, file), allow_pickle=False)
            for name, file in entry["files"].items()
        }
        layer._load_map_arrays(arrays)


def _map_layers(model, folder=None, maps=None):
    """The layers whose state is more than variables (a `DynamicEmbedding`'s
    id -> row map), in a fixed order; with `maps` (a manifest's), paired
    with their entries."""
    layers = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if hasattr(layer, "_map_arrays") and layer.built
    ]
    if maps is None:
        return layers
    if len(layers) != len(maps):
        raise ValueError(
            f"The model has {len(layers)} layers with an id -> row map "
            f"(DynamicEmbedding) but {folder!r} holds {len(maps)}. Build the "
            "model as the saved one was."
        )
    return list(zip(layers, maps, strict=True))


def _save_maps(model, folder):
    import numpy as np

    maps = []
    for index, layer in enumerate(_map_layers(model)):
        files = {}
        for name, value in layer._map_arrays().items():
            files[name] = f"map{index:03d}_{name}.npy"
            np.save(os.path.join(folder, files[name]), value, allow_pickle=False)
        maps.append({"layer": layer.path, "files": files})
    return maps


def _state_variables(model):
    from keras_lookup import _sharded

    variables = list(model.variables)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        # A Keras optimizer's slots of a sharded table: one logical slot each.
        _sharded.adopt_optimizer(optimizer)
        variables += list(optimizer.variables)
    return variables


def _logical_variables(model):
    """`[(path, shape, [(variable, first_row)])]`, one per logical variable.

    A sharded table (and each optimizer slot of it) is one logical variable
    made of its parts, listed where its first part is, so that a sharded model
    lists what the same model built in one process lists.
    """
    from keras_lookup import _sharded

    out = []
    for variable in _state_variables(model):
        part = _sharded.part_of(variable)
        shape = tuple(int(n) for n in variable.shape)
        if part is None:
            out.append((variable.path, shape, [(variable, 0)]))
        elif part.index == 0:
            path = variable.path.rsplit("/", 1)[0] + "/" + part.logical_name
            parts = [(p, _sharded.part_of(p).start) for p in part.parts]
            out.append((path, part.logical_shape, parts))
    return out


def _backend_variable(variable):
    return getattr(variable, "value", variable)


def _row_slices(shape, size=SLICE_SIZE):
    if not shape:
        return [(0, 1)]
    row_bytes = max(1, math.prod(shape[1:]) * 4)
    rows = max(1, size * 4 // row_bytes)
    return [(start, min(start + rows, shape[0])) for start in range(0, shape[0], rows)]


def _disable_copy_on_read(value):
    # Row reads and slice writes put a variable in TensorFlow's copy-on-read
    # mode, where every dense read (`keras.layers.Embedding` makes one each
    # step) copies the whole variable; nothing holds its buffer now.
    import tensorflow as tf

    if value.shape.rank and hasattr(tf.raw_ops, "DisableCopyOnRead"):
        tf.raw_ops.DisableCopyOnRead(resource=value.handle)


def _read_rows(value, start, stop):
    import tensorflow as tf

    if value.shape.rank == 0:
        return value.numpy()
    # A gather reads just these rows; a slice of `value` would first read the
    # whole variable, and copy it if a sparse update left it in copy-on-read
    # mode (the optimizer's slots are).
    return tf.gather(value, tf.range(start, stop)).numpy()
