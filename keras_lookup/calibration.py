"""`keras_lookup.calibrate()`: measure where matmul stops beating gather here.

`DimensionReducer(strategy="auto")` picks gather or matmul from crossovers
(see `keras_lookup._cost_model`). Without a calibration it uses crossovers
measured on our 2-core CPU; on a GPU or TPU, or a very different CPU, run
`keras_lookup.calibrate()` (or `python -m keras_lookup.bench --calibrate`)
once. It times both strategies on this device, forward + backward, and writes
a small JSON file that every later `"auto"` layer reads when it is built:

    $KERAS_LOOKUP_CACHE_DIR/                      if set, else
    $XDG_CACHE_HOME/keras_lookup/                 if set, else
    ~/.cache/keras_lookup/
        <device>-<dtype>-tf<TensorFlow version>.json

Layers never time anything themselves: a layer built without a matching file
uses the shipped CPU defaults, and says so in `layer.strategy_choice`.
"""

import datetime
import json
import os
import platform

import tensorflow as tf

from keras_lookup import _cost_model, _timing
from keras_lookup._cost_model import (  # noqa: F401  (public here since 0.1)
    CACHE_DIR_ENV,
    FORMAT_VERSION,
    cache_dir,
    calibration_path,
    device_kind,
    load_calibration,
)


def calibrate(
    dtype="float32",
    dim=64,
    rows=256,
    single_ids=4096,
    ids_per_row=(1, 8, 64),
    vocabs=None,
    rounds=7,
    save=True,
    verbose=True,
):
    """Measures the gather/matmul crossovers on this device and stores them.

    For each input form (single ids; dense-padded and ragged bags of each
    size in `ids_per_row`, summed; dense multi-hot rows with that many
    nonzeros) it times a forward + backward step of
    `DimensionReducer(strategy="gather")` and `"matmul"` side by side, rounds
    interleaved, over growing vocabulary sizes until matmul is clearly the
    slower, and records the vocabulary size where their minimum times cross.
    A default run takes about a minute or two on 2 CPU cores.

    Args:
        dtype: String. Compute dtype of the layers timed (`"float32"`,
            `"float16"`, `"bfloat16"`); the file is keyed by it.
        dim: Integer. Output width D of the timed layers.
        rows: Integer. Bags per batch.
        single_ids: Integer. Ids per batch for single ids (no combiner).
        ids_per_row: Bag sizes to measure (at least one).
        vocabs: Vocabulary sizes to scan, ascending; default powers of 2 from
            2 to 2**15.
        rounds: Integer. Interleaved timing rounds per point (minimum taken).
        save: Boolean. Write the JSON file (else only return the record).
        verbose: Boolean. Print one line per form and bag size.

    Returns:
        The calibration record (a dict, as written): `"crossover"` maps each
        form to `{ids_per_row: V*}`, `"measurements"` holds the timings,
        `"path"` where it was written (or would be).
    """
    if not ids_per_row:
        raise ValueError(
            "`ids_per_row` must list at least one bag size. Received: "
            f"ids_per_row={ids_per_row!r}"
        )
    vocabs = list(vocabs or [2**i for i in range(1, 16)])
    settings = _timing.Settings(
        dim=dim, rows=rows, single_ids=single_ids, dtype=dtype, rounds=rounds
    )
    crossover, measurements = {}, []
    plan = [("single", 1)] + [
        (form, k) for form in ("padded", "ragged", "multi_hot") for k in ids_per_row
    ]
    for form, k in plan:
        scan = _timing.scan_crossover(form, k, vocabs, settings)
        crossover.setdefault(form, {})[str(k)] = scan["crossover"]
        measurements.append(scan)
        if verbose:
            what = {"single": "single ids", "multi_hot": f"multi-hot rows of {k} ids"}
            what = what.get(form, f"{form} bags of {k} ids")
            print(
                f"{what:>22}: matmul faster up to V ~ {scan['crossover']:,.0f}",
                flush=True,
            )
    device = device_kind()
    path = calibration_path(dtype, device)
    record = {
        "format": FORMAT_VERSION,
        "device": device,
        "dtype": tf.as_dtype(dtype).name,
        "tensorflow": tf.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "settings": settings.as_dict(),
        "crossover": crossover,
        "measurements": measurements,
        "path": path,
    }
    # Refuse a record the layers could not read, before writing it.
    _cost_model.Calibration(crossover, path)
    if save:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, path)
    return record
