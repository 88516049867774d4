"""Saving that never leaves a broken file behind."""

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
