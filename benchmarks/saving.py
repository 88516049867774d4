"""Peak memory of saving and loading a model with a large embedding table.

Builds `keras_lookup.Embedding(V, 64) -> GlobalAveragePooling1D -> Dense(1)`
with `LazyRowwiseAdagrad`, trains one step, and measures, each operation in
its own process (so that `ru_maxrss` is that operation's peak):

- `keras_lookup.save_model(model, "m.keras")` and
  `keras.saving.load_model("m.keras")`;
- `model.save_weights("m.weights.h5")` and `model.load_weights(...)` into a
  freshly built model;
- `tf.train.Checkpoint(model=model, optimizer=model.optimizer)`'s `write`
  and `read` (into a freshly built model);
- `keras_lookup.save_state(model, folder)` and `keras_lookup.load_state`.

Peak RSS is compared with the process's RSS just before the operation (the
model state plus TensorFlow). The parent kills a child whose RSS passes
`--memory-limit-gib`, so an operation that does not fit never wakes the
machine's OOM killer.

Usage:

    python benchmarks/saving.py --vocab 10000000 --folder /tmp/saving
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

DIM, BATCH, LENGTH = 64, 32, 128
OPERATIONS = (
    "save_keras",
    "load_keras",
    "save_weights",
    "load_weights",
    "save_checkpoint",
    "load_checkpoint",
    "save_state",
    "load_state",
)


def _model(vocab):
    import keras

    import keras_lookup

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((LENGTH,), dtype="int32"),
            keras_lookup.Embedding(vocab, DIM),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )
    optimizer = keras_lookup.optimizers.LazyRowwiseAdagrad(0.1)
    model.compile(optimizer=optimizer, loss="mse")
    optimizer.build(model.trainable_variables)
    return model


def child(operation, vocab, folder, limit_gib):
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_lookup

    paths = {
        "keras": os.path.join(folder, "m.keras"),
        "weights": os.path.join(folder, "m.weights.h5"),
        "checkpoint": os.path.join(folder, "ckpt"),
        "state": os.path.join(folder, "state"),
    }
    record = {"operation": operation, "vocab": vocab, "limit_gib": limit_gib}
    if operation != "load_keras":
        model = _model(vocab)
        if operation.startswith("save"):
            rng = np.random.default_rng(0)
            x = rng.integers(0, vocab, size=(BATCH, LENGTH), dtype=np.int32)
            model.train_on_batch(x, np.ones((BATCH, 1), "float32"))
    record["before_gib"] = _harness.status_gib("VmRSS")
    record["before_peak_gib"] = _harness.status_gib("VmHWM")
    start = time.perf_counter()
    try:
        if operation == "save_keras":
            keras_lookup.save_model(model, paths["keras"])
        elif operation == "load_keras":
            model = keras.saving.load_model(paths["keras"])
        elif operation == "save_weights":
            model.save_weights(paths["weights"])
        elif operation == "load_weights":
            model.load_weights(paths["weights"])
        elif operation == "save_checkpoint":
            tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(
                paths["checkpoint"]
            )
        elif operation == "save_state":
            keras_lookup.save_state(model, paths["state"])
        elif operation == "load_state":
            keras_lookup.load_state(model, paths["state"])
        else:
            status = tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(
                paths["checkpoint"]
            )
            status.assert_consumed()
        record["seconds"] = time.perf_counter() - start
        record["op_peak_gib"] = _harness.status_gib("VmHWM")
        table = model.layers[0].embeddings
        record["check"] = float(np.sum(table.value[:1000].numpy()))
    except Exception as error:
        text = f"{type(error).__name__}: {error}"
        if "OOM" not in text and "Memory" not in text and "alloc" not in text:
            raise
        record["oom"] = text[:300]
    record["peak_gib"] = _harness.status_gib("VmHWM")
    record["table_gib"] = vocab * DIM * 4 / 2**30
    _harness.emit(record)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=10**7)
    parser.add_argument("--folder", required=True, help="where the files go")
    parser.add_argument("--memory-limit-gib", type=float, default=14.0)
    parser.add_argument("--operations", nargs="+", choices=OPERATIONS)
    parser.add_argument("--child", choices=OPERATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.vocab, args.folder, args.memory_limit_gib)
        return
    os.makedirs(args.folder, exist_ok=True)
    for operation in args.operations or OPERATIONS:
        run = _harness.run_child(
            __file__,
            [
                *("--child", operation, "--vocab", args.vocab),
                *("--folder", args.folder),
                *("--memory-limit-gib", args.memory_limit_gib),
            ],
            memory_limit_gib=args.memory_limit_gib,
        )
        record = run.record()
        if record is None:
            print(
                json.dumps(
                    {
                        "operation": operation,
                        "vocab": args.vocab,
                        "killed_at_gib": run.peak_gib,
                        "exit": run.returncode,
                        "stderr": run.stderr[-300:],
                    }
                )
            )
            continue
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
