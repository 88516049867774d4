"""Train a keras_lookup text model on several workers, and survive `kill -9`.

Classifies State of the Union paragraphs by era (as
`examples/text_classification.py` does) with a keras_lookup `Embedding` +
average pooling (`--model embedding`) or a `DimensionReducer` bag of words
(`--model reducer`), trained by `keras_lookup.optimizers.LazyAdam` under
`tf.distribute.MultiWorkerMirroredStrategy`: every worker holds a copy of the
weights, takes its slice of each global batch, and the gradients are summed
across workers (the table's `tf.IndexedSlices` by all-gather) before every
worker applies the same update.

Training is `keras_lookup.distribute.fit`: Keras's own loop (progress bar on
the chief, validation on the held-out paragraphs each epoch, callbacks), which
Keras 3's `model.fit` cannot run under this strategy with two or more workers
(keras-team/keras#20585, #20329; tensorflow/tensorflow#72388).

Usage:

    # N worker processes on this machine (127.0.0.1, free ports):
    python examples/multi_worker.py --local-workers 2 --quick --out weights/
    # the same model and global batches in one process, without a strategy:
    python examples/multi_worker.py --single-process --quick --out reference/
    # one worker of a real cluster: run on every host with its TF_CONFIG set
    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                "task": {"type": "worker", "index": 0}}' \\
        python examples/multi_worker.py --checkpoint-dir /shared/ckpt

Without `TF_CONFIG`, `--local-workers` or `--single-process`, it runs 2 local
workers (`--local-workers 2`) and says so. With `--checkpoint-dir`,
`keras_lookup.distribute.BackupAndRestore` backs the run up (weights,
optimizer slots and iteration count, metrics, data position) every
`--checkpoint-every` steps; run the same command again after a crash and
training resumes at the last backup's step, ending with the weights an
uninterrupted run ends with. The folder must be readable by every worker (one
folder here; shared storage on real hosts); only the chief writes it.

Test hooks (environment variables read by the chief worker only, used by
`tests/test_multi_worker.py` to kill a run at a deterministic point):

- `MULTI_WORKER_TEST_KILL_AFTER_STEP=S`: the chief SIGKILLs itself right after
  step S (pick an S between two backups).
- `MULTI_WORKER_TEST_KILL_IN_SAVE=S`: during the backup of step S, after its
  files are written and before `tf.train.CheckpointManager` records it, the
  chief truncates the new data file to half (as an interrupted write leaves
  it) and SIGKILLs itself.
"""

import argparse
import json
import os
import re
import signal
import sys
import time

import _data
import _launcher
import _training
import numpy as np

KILL_AFTER_STEP = "MULTI_WORKER_TEST_KILL_AFTER_STEP"
KILL_IN_SAVE = "MULTI_WORKER_TEST_KILL_IN_SAVE"
MODELS = ("embedding", "reducer")
# Without TF_CONFIG or a choice: this many workers, on 127.0.0.1.
DEFAULT_WORKERS = 2
# Settings per mode; any of them can be overridden from the command line.
MODES = {
    "full": {
        "vocab_size": 20000,
        "max_length": 128,
        "dim": 32,
        "steps": 300,
        "batch_size": 64,
        "learning_rate": 5e-3,
        "checkpoint_every": 25,
        "timeout": 1800.0,
    },
    "quick": {
        "vocab_size": 5000,
        "max_length": 64,
        "dim": 16,
        "steps": 100,
        "batch_size": 32,
        "learning_rate": 5e-3,
        "checkpoint_every": 20,
        "timeout": 300.0,
    },
}
# What the data order and the model depend on: a backup folder written with
# other values cannot be resumed from.
RUN_KEYS = (
    "model",
    "task",
    "vocab_size",
    "max_length",
    "dim",
    "batch_size",
    "learning_rate",
    "seed",
    "steps",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=(
            "Train a keras_lookup text classifier (State of the Union "
            "paragraphs) with LazyAdam under MultiWorkerMirroredStrategy, "
            "through keras_lookup.distribute.fit, on N local worker processes "
            "(--local-workers N), as one worker of the cluster described by the "
            "TF_CONFIG environment variable, or in one process "
            "(--single-process). With --checkpoint-dir it resumes exactly after "
            "being killed."
        ),
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--local-workers",
        type=int,
        metavar="N",
        help="start N worker processes of this script on 127.0.0.1 (free ports "
        "picked at run time) and wait for them; without it, this process is "
        "one worker and reads TF_CONFIG (no TF_CONFIG: "
        f"--local-workers {DEFAULT_WORKERS})",
    )
    where.add_argument(
        "--single-process",
        action="store_true",
        help="train in this process without any strategy, on the same global "
        "batches (the reference)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small run: under a minute with 2 local workers on 2 CPU cores",
    )
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="embedding",
        help="embedding: Embedding + average pooling + Dense; reducer: "
        "DimensionReducer bag of words (gather) + Dense (default: embedding)",
    )
    parser.add_argument(
        "--task",
        choices=_data.TASKS,
        default="era",
        help="label to predict: the speech's era or the president's party "
        "(default: era)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="each worker writes its final weights and optimizer variables to "
        "DIR/worker-<i>.npz, one array per variable keyed by its path",
    )
    parser.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="back up every --checkpoint-every steps into DIR, and resume "
        "from the last backup there when started again",
    )
    for flag, kind, text in (
        ("--steps", int, "training steps (global batches; rounded up to whole epochs)"),
        ("--batch-size", int, "global batch size, split evenly over the workers"),
        ("--checkpoint-every", int, "steps between backups"),
        ("--vocab-size", int, "vocabulary size, padding and unknown-word ids included"),
        ("--max-length", int, "token ids kept per paragraph"),
        ("--dim", int, "embedding dimension"),
        ("--learning-rate", float, "LazyAdam learning rate"),
        (
            "--timeout",
            float,
            "with --local-workers: seconds before the workers are killed",
        ),
    ):
        parser.add_argument(flag, type=kind, help=f"{text} ({per_mode(flag)})")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="TensorFlow intra-op threads per worker (default: 0, TensorFlow's "
        "choice; --local-workers passes cores / N)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    # Set by --local-workers on the workers it starts: the launcher prints
    # the summary.
    parser.add_argument("--launched", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.mode = "quick" if args.quick else "full"
    for key, value in MODES[args.mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in (
        "steps",
        "batch_size",
        "checkpoint_every",
        "vocab_size",
        "max_length",
        "dim",
    ):
        if getattr(args, key) < 1:
            flag = "--" + key.replace("_", "-")
            parser.error(f"{flag} must be a positive integer; got {getattr(args, key)}")
    if args.vocab_size < 3:
        parser.error(
            f"--vocab-size must be at least 3 (padding, unknown word and one "
            f"word); got {args.vocab_size}"
        )
    if args.local_workers is not None and not 1 <= args.local_workers <= 16:
        parser.error(
            f"--local-workers must be between 1 and 16; got {args.local_workers}"
        )
    if args.timeout <= 0:
        parser.error(f"--timeout must be a positive number; got {args.timeout}")
    if args.threads < 0:
        parser.error(f"--threads must be 0 (automatic) or more; got {args.threads}")
    return args


def per_mode(flag):
    key = flag.lstrip("-").replace("-", "_")
    return "default: " + ", ".join(f"{m} {MODES[m][key]}" for m in MODES)


# ---------------------------------------------------------------------------
# Launcher: --local-workers N


def worker_argv(argv):
    """The command line minus `--local-workers N`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--local-workers":
            skip = True
        elif not arg.startswith("--local-workers="):
            out.append(arg)
    return out


def launch(args, argv):
    count = args.local_workers
    ports = _launcher.free_ports(count)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    threads = args.threads or max(1, (os.cpu_count() or 1) // count)
    command = [sys.executable, os.path.abspath(__file__), *worker_argv(argv)]
    command.append("--launched")
    if not args.threads:
        command += ["--threads", str(threads)]
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    print(
        f"Starting {count} worker process(es) on 127.0.0.1, ports "
        f"{', '.join(map(str, ports))} ({threads} thread(s) each; timeout "
        f"{args.timeout:.0f} s)."
    )
    sys.stdout.flush()
    start = time.perf_counter()
    with _launcher.Launcher() as launcher:
        for index in range(count):
            tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            launcher.start(
                f"worker {index}",
                command,
                env={"TF_CONFIG": json.dumps(tf_config), "KERAS_BACKEND": "tensorflow"},
                # Result lines are for `summarize`, not for the reader.
                hide=RESULT.match,
            )
        failure = launcher.wait(start + args.timeout)
    outputs = [child.lines for child in launcher.children]
    seconds = time.perf_counter() - start
    if failure is not None:
        raise SystemExit(f"error: {failure}; the other workers were stopped.")
    summarize(args, count, outputs, seconds)


def summarize(args, count, outputs, seconds):
    results = []
    for lines in outputs:
        found = [json.loads(m.group(1)) for m in map(RESULT.match, lines) if m]
        results.append(found[-1] if found else None)
    if any(r is None for r in results):
        raise SystemExit("error: a worker exited without reporting its result.")
    agree = ""
    if args.out and count > 1:
        first = dict(np.load(os.path.join(args.out, "worker-0.npz")))
        diff = 0.0
        for index in range(1, count):
            other = dict(np.load(os.path.join(args.out, f"worker-{index}.npz")))
            if sorted(other) != sorted(first):
                raise SystemExit(
                    f"error: worker {index} saved other variables than worker 0"
                )
            for key, value in first.items():
                diff = max(diff, float(np.max(np.abs(value - other[key]), initial=0)))
        agree = f"; workers' weights agree to max abs diff {diff:.1e}"
    r = results[0]
    resumed = f" (resumed from step {r['resumed_from']})" if r["resumed_from"] else ""
    print(
        f"\nSummary: {count} local worker(s), {r['model']} model, "
        f"{r['steps']} steps of {r['batch_size']} examples"
        f"{resumed}: "
        f"final loss {r['loss']:.4f}, held-out accuracy {r['accuracy']:.1%}"
        f"{agree}; {seconds:.0f} s."
    )


# ---------------------------------------------------------------------------
# Data: token ids computed with numpy, so that no TensorFlow op runs before
# the strategy is created.

RESULT = re.compile(r"^result (\{.*\})$")
WORD = re.compile(r"[a-z0-9']+")


def tokenize(text):
    return WORD.findall(text.lower())


def load_data(args):
    """`(ids, labels, train, test, class_names)`; ids padded with 0, 1 = unknown."""
    texts, labels, groups, class_names = _data.sotu_paragraphs(args.task)
    train, test = _data.split_groups(groups, labels, 0.2, args.seed)
    tokens = [tokenize(t) for t in texts]
    counts = {}
    for i in train:
        for word in tokens[i]:
            counts[word] = counts.get(word, 0) + 1
    # Most frequent first, ties by spelling: the same vocabulary everywhere.
    words = sorted(counts, key=lambda w: (-counts[w], w))[: args.vocab_size - 2]
    index = {word: k + 2 for k, word in enumerate(words)}
    ids = np.zeros((len(texts), args.max_length), "int32")
    for row, words_of_row in enumerate(tokens):
        kept = [index.get(w, 1) for w in words_of_row[: args.max_length]]
        ids[row, : len(kept)] = kept
    y = np.array([class_names.index(label) for label in labels], "int32")
    return ids, y, train, test, class_names


def batch_rows(train, step, batch_size, seed):
    """Indices of the examples in global batch `step`.

    A pure function of the step: each epoch is its own permutation of the
    training examples (seeded by `seed` and the epoch), cut into batches
    (the last partial batch dropped). A resumed run recomputes its data
    position from the step saved in the backup.
    """
    per_epoch = len(train) // batch_size
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(train)
    return order[position * batch_size : (position + 1) * batch_size]


# ---------------------------------------------------------------------------
# Worker


def cluster_info():
    """`(task_index, num_workers)` from TF_CONFIG (a lone worker without it)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0, 1
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        task = config["task"]
    except (ValueError, KeyError, TypeError) as error:
        _data.fail(
            f"TF_CONFIG is not valid ({error!r}); it must be JSON like "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}.'
        )
    if task.get("type") != "worker" or not 0 <= task.get("index", -1) < len(workers):
        _data.fail(
            f"TF_CONFIG task {task!r} is not one of the {len(workers)} workers; "
            'set "task": {"type": "worker", "index": i} with 0 <= i < '
            f"{len(workers)} (this example uses no chief or ps tasks)."
        )
    return task["index"], len(workers)


def build_model(args, num_classes):
    import keras

    import keras_lookup

    ids = keras.Input((args.max_length,), dtype="int32", name="token_ids")
    if args.model == "embedding":
        x = keras_lookup.Embedding(
            args.vocab_size, args.dim, mask_zero=True, name="embedding"
        )(ids)
        x = keras.layers.GlobalAveragePooling1D(name="average")(x)
    else:
        x = keras_lookup.DimensionReducer(
            args.vocab_size,
            args.dim,
            strategy="gather",
            combiner="mean",
            mask_zero=True,
            use_bias=True,
            activation="relu",
            name="bag_of_words",
        )(ids)
    out = keras_lookup.Dense(num_classes, activation="softmax", name="classes")(x)
    model = keras.Model(ids, out, name=f"multi_worker_{args.model}")
    model.compile(
        keras_lookup.optimizers.LazyAdam(args.learning_rate),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _kill_self(why):
    print(f"test hook: {why}; sending SIGKILL to myself", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _truncate_and_kill(save_path):
    # Runs as a write callback of the save, before the CheckpointManager's own
    # callback that records the new backup in the `checkpoint` file.
    for name in os.listdir(os.path.dirname(save_path)):
        if name.startswith(os.path.basename(save_path) + ".data-"):
            path = os.path.join(os.path.dirname(save_path), name)
            os.truncate(path, os.path.getsize(path) // 2)
    _kill_self(f"{KILL_IN_SAVE}: killed while saving {os.path.basename(save_path)}")


def _hook_step(name):
    value = os.environ.get(name)
    if value is None:
        return None
    if not value.isdigit():
        _data.fail(f"test hook {name}={value!r} must be a step number.")
    return int(value)


def _check_run_config(path, record, is_chief):
    """Refuses to resume from a backup folder written with other settings."""
    # Before the first backup there is nothing to resume: new settings win.
    has_backup = os.path.exists(os.path.join(os.path.dirname(path), "checkpoint"))
    if has_backup and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        changed = [k for k in RUN_KEYS if saved.get(k) != record[k]]
        if changed:
            details = ", ".join(
                f"{k}: {saved.get(k)!r} there, {record[k]!r} now" for k in changed
            )
            _data.fail(
                f"the backup folder {os.path.dirname(path)!r} was written with "
                f"other settings ({details}); resuming would not give the run "
                "you asked for. Pass the same settings, or a new --checkpoint-dir."
            )
    elif is_chief:
        temp = f"{path}.tmp{os.getpid()}"
        with open(temp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        os.replace(temp, path)


def callbacks_for(args, keras, tf, is_chief):
    """BackupAndRestore (with `--checkpoint-dir`) and the test hooks."""
    import keras_lookup

    kill_after = _hook_step(KILL_AFTER_STEP) if is_chief else None
    kill_in_save = _hook_step(KILL_IN_SAVE) if is_chief else None
    callbacks = []
    if args.checkpoint_dir:

        class Backup(keras_lookup.distribute.BackupAndRestore):
            def _write_options(self):
                if self._position.steps != kill_in_save:
                    return None
                return tf.train.CheckpointOptions(
                    experimental_write_callbacks=[_truncate_and_kill]
                )

        callbacks.append(Backup(args.checkpoint_dir, save_freq=args.checkpoint_every))

    class KillAfter(keras.callbacks.Callback):
        step = 0

        def on_train_begin(self, logs=None):
            # The steps of the run so far, those before a resume included.
            if callbacks and callbacks[0]._position is not None:
                self.step = callbacks[0]._position.steps

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if self.step == kill_after:
                _kill_self(f"{KILL_AFTER_STEP}: killed after step {self.step}")

    return callbacks + [KillAfter()]


def worker(args):
    began = time.perf_counter()
    if args.single_process:
        task_index, num_workers = 0, 1
    else:
        task_index, num_workers = cluster_info()
    if args.batch_size % num_workers:
        _data.fail(
            f"--batch-size {args.batch_size} does not split evenly over "
            f"{num_workers} workers; pass a multiple of {num_workers}."
        )
    is_chief = task_index == 0
    ids, y, train, test, class_names = load_data(args)
    if len(train) < args.batch_size:
        _data.fail(
            f"--batch-size {args.batch_size} is larger than the {len(train)} "
            "training examples; pass a smaller one."
        )
    if args.checkpoint_dir:
        os.makedirs(args.checkpoint_dir, exist_ok=True)
        record = {k: getattr(args, k) for k in RUN_KEYS}
        _check_run_config(
            os.path.join(args.checkpoint_dir, "run.json"), record, is_chief
        )

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    # Before any other TensorFlow op: collectives are configured at start-up.
    strategy = None
    if not args.single_process:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    joined = time.perf_counter() - began
    import keras

    import keras_lookup

    replicas = strategy.num_replicas_in_sync if strategy else 1
    if replicas != num_workers:
        _data.fail(
            f"expected one replica per worker ({num_workers}), got {replicas}; "
            "this example runs on CPU, one device per worker (hide GPUs with "
            "CUDA_VISIBLE_DEVICES=)."
        )
    print(
        f"worker {task_index} of {num_workers}: {len(train):,} training and "
        f"{len(test):,} held-out paragraphs; {args.batch_size // num_workers} of "
        f"each global batch of {args.batch_size}; data, TensorFlow and the "
        f"cluster ready in {joined:.1f} s.",
        flush=True,
    )

    keras.utils.set_random_seed(args.seed)
    if strategy:
        with strategy.scope():
            model = build_model(args, len(class_names))
    else:
        model = build_model(args, len(class_names))
    epochs, steps_per_epoch = _training.epochs_of(
        args.steps, len(train) // args.batch_size
    )
    steps = epochs * steps_per_epoch
    # One element per step: its global batch (each worker takes its share).
    rows = np.stack(
        [batch_rows(train, s, args.batch_size, args.seed) for s in range(steps)]
    )
    global_batches = tf.data.Dataset.from_tensor_slices((ids[rows], y[rows]))

    class Progress(keras.callbacks.Callback):
        steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1

    progress = Progress()
    started = time.perf_counter()
    history = keras_lookup.distribute.fit(
        model,
        global_batches,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=(ids[test], y[test]),
        # Large batches: each costs a round of collectives, not much compute.
        validation_batch_size=512 * num_workers,
        callbacks=[*callbacks_for(args, keras, tf, is_chief), progress],
        verbose=_training_verbose(),
    )
    seconds = time.perf_counter() - started
    resumed_from = steps - progress.steps
    loss = history.history["loss"][-1]
    accuracy = history.history["val_accuracy"][-1]
    variables = {v.path: np.asarray(v.numpy()) for v in model.weights}
    variables.update({v.path: np.asarray(v.numpy()) for v in model.optimizer.variables})
    where = ""
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, f"worker-{task_index}.npz")
        np.savez(path, **variables)
        where = f", weights in {path}"
    print(
        f"worker {task_index}: trained steps {resumed_from + 1}-{steps} in "
        f"{seconds:.1f} s, last epoch's loss {loss:.4f}, held-out accuracy "
        f"{accuracy:.1%}{where}",
        flush=True,
    )
    result = {
        "model": args.model,
        "steps": steps,
        "batch_size": args.batch_size,
        "resumed_from": resumed_from,
        "loss": loss,
        "accuracy": accuracy,
    }
    if args.launched:
        print(f"result {json.dumps(result)}", flush=True)
    return result, task_index, num_workers


def _training_verbose():
    # Keras's bar in a terminal; one line an epoch in a log or a pipe.
    return 1 if sys.stdout.isatty() else 2


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if (
        args.local_workers is None
        and not args.single_process
        and not args.launched
        and "TF_CONFIG" not in os.environ
    ):
        print(
            f"No TF_CONFIG, --local-workers or --single-process: running "
            f"{DEFAULT_WORKERS} local workers on 127.0.0.1 (--local-workers "
            f"{DEFAULT_WORKERS}). Set TF_CONFIG to be one worker of a cluster on "
            "real hosts.",
            flush=True,
        )
        args.local_workers = DEFAULT_WORKERS
    if args.local_workers is not None:
        launch(args, argv)
        return
    r, task_index, num_workers = worker(args)
    if args.launched:
        # Nothing is left to write (the .npz file is closed), and a normal
        # interpreter exit spends seconds shutting down TensorFlow's
        # collective runtime (measured: ~4 s per run on 2 cores, 8 s under
        # load), which the launcher and every test would wait for.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    where = "one process" if args.single_process else f"worker {task_index}"
    print(
        f"\nSummary: {where} of {num_workers}, {r['model']} model, "
        f"{r['steps']} steps of {r['batch_size']} examples: final loss "
        f"{r['loss']:.4f}, held-out accuracy {r['accuracy']:.1%}."
    )


if __name__ == "__main__":
    main()
