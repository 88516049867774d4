"""Train a text classifier whose table is split across parameter servers.

Classifies State of the Union paragraphs by era from their words and word
bigrams, hashed with `keras.layers.Hashing` into `--buckets` rows
(fastText-style: the table is large for a real reason, and grows with the
buckets, not with a vocabulary). Each paragraph is one bag of hashed ids,
averaged by `keras_lookup.Embedding(combiner="mean")` and classified by
`keras_lookup.Dense`. Under `tf.distribute.ParameterServerStrategy` with a
`variable_partitioner`, the table (and its optimizer slots) is split by rows
across the ps tasks, each built in place on its task; training is
`keras_lookup.distribute.fit`, Keras's own loop (progress bar, validation on
the held-out paragraphs each epoch, callbacks), which schedules the steps on
the workers with `ClusterCoordinator`: each worker reads its own batches, and
each step reads only the rows its batch needs and updates them on the ps task
that holds them. The same script trains in one process (`--single-process`).

Usage:

    # W workers and P ps tasks as processes on this machine (127.0.0.1):
    python examples/parameter_server.py --local-cluster 2,2 --quick --out out/
    # the same model in one process without any strategy (the reference):
    python examples/parameter_server.py --single-process --quick --out ref/
    # on real hosts: every task runs the script with its TF_CONFIG; the
    # "chief" task is the coordinator, "worker" and "ps" tasks serve.
    TF_CONFIG='{"cluster": {"chief": ["c:2222"], "worker": ["w0:2222"],
                "ps": ["p0:2222", "p1:2222"]},
                "task": {"type": "ps", "index": 0}}' \\
        python examples/parameter_server.py --checkpoint-dir /shared/ckpt

Without `TF_CONFIG`, `--local-cluster` or `--single-process`, it runs a small
local cluster (`--local-cluster 2,2`) and says so. With `--local-cluster`, a
worker process that dies is started again (as a cluster manager would), and
the coordinator reschedules its steps; a ps task that dies ends the run with a
message. With `--checkpoint-dir`, `keras_lookup.distribute.BackupAndRestore`
backs the run up every `--checkpoint-every` steps, and the same command run
again after a crash resumes at the last backup's step (with one worker, it then
ends with the weights of an uninterrupted run). `--out DIR` writes the trained
state with `keras_lookup.save_state` (the logical, unsharded view, written part
by part, 64 MiB at a time) and `DIR/summary.json`.

Test hooks (environment variables read by the coordinator):
`PARAMETER_SERVER_TEST_KILL_AFTER_STEP=S` SIGKILLs the coordinator (its
children die with it) right after step S (after its backup, if one is due);
`PARAMETER_SERVER_TEST_KILL_TASK="worker 0@S"` (or `"ps 1@S"`) SIGKILLs that
task of `--local-cluster` once step S is scheduled.
"""

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time

import _data
import _launcher
import _training
import numpy as np

KILL_AFTER_STEP = "PARAMETER_SERVER_TEST_KILL_AFTER_STEP"
KILL_TASK = "PARAMETER_SERVER_TEST_KILL_TASK"
OPTIMIZERS = ("lazy_adam", "lazy_adagrad", "rowwise_adagrad", "rowwise_adam")
TABLE_DTYPES = ("float32", "bfloat16", "float16")
# Without TF_CONFIG or a choice: this cluster, on 127.0.0.1.
DEFAULT_CLUSTER = "2,2"
MODES = {
    "full": {
        "buckets": 2**22,
        "dim": 64,
        "steps": 400,
        "batch_size": 64,
        "max_ids": 256,
    },
    "quick": {
        "buckets": 2**18,
        "dim": 16,
        "steps": 150,
        "batch_size": 64,
        "max_ids": 192,
    },
}
LEARNING_RATES = {
    "lazy_adam": 2e-3,
    "lazy_adagrad": 0.2,
    "rowwise_adagrad": 0.2,
    "rowwise_adam": 2e-3,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--local-cluster",
        metavar="W,P",
        help="start W worker and P ps processes on 127.0.0.1; coordinate here "
        f"(the default without TF_CONFIG: {DEFAULT_CLUSTER})",
    )
    where.add_argument(
        "--single-process",
        action="store_true",
        help="train in this process without any strategy (the reference)",
    )
    parser.add_argument("--task-type", choices=("worker", "ps"), help=argparse.SUPPRESS)
    parser.add_argument("--task-index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a small, fast run")
    parser.add_argument(
        "--steps", type=int, help="training steps (rounded up to whole epochs)"
    )
    parser.add_argument("--buckets", type=int, help="hash buckets = table rows")
    parser.add_argument("--dim", type=int, help="embedding dimension")
    parser.add_argument(
        "--table-dtype",
        choices=TABLE_DTYPES,
        default="float32",
        help="the dtype the table is stored in (half: half the memory per ps "
        "task, stochastic rounding in the optimizer; default float32)",
    )
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-ids", type=int, help="hashed ids kept per paragraph")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="rowwise_adagrad")
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="folder for save_state files + summary.json")
    parser.add_argument("--checkpoint-dir", help="backups; resume from there")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args(argv)
    mode = MODES["quick" if args.quick else "full"]
    for key, value in mode.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.learning_rate is None:
        args.learning_rate = LEARNING_RATES[args.optimizer]
    if args.buckets < 2:
        parser.error(f"--buckets must be at least 2; got {args.buckets}")
    for key in ("steps", "batch_size", "max_ids", "dim", "checkpoint_every"):
        if getattr(args, key) < 1:
            flag = "--" + key.replace("_", "-")
            parser.error(f"{flag} must be a positive integer; got {getattr(args, key)}")
    if args.local_cluster:
        try:
            workers, ps = (int(n) for n in args.local_cluster.split(","))
        except ValueError:
            parser.error(f"--local-cluster takes W,P; got {args.local_cluster!r}")
        if workers < 1 or ps < 1:
            parser.error(f"--local-cluster needs W >= 1 and P >= 1; got {workers},{ps}")
        args.workers, args.ps = workers, ps
    return args


def peak_rss_mib(pid="self"):
    """Peak resident memory of a process (Linux `VmHWM`), in MiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------
# Data: words and bigrams hashed into buckets; id 0 is padding.


def load_data(args, keras):
    texts, labels, groups, class_names = _data.sotu_paragraphs("era")
    train, test = _data.split_groups(groups, labels, 0.2, args.seed)
    hashing = keras.layers.Hashing(num_bins=args.buckets - 1)
    ids = np.zeros((len(texts), args.max_ids), "int64")
    for first in range(0, len(texts), 2000):  # hashed in chunks, not one by one
        rows = []
        for text in texts[first : first + 2000]:
            words = text.lower().split()
            bigrams = [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
            rows.append((words + bigrams)[: args.max_ids])
        # Flattened in one pass (`sum(rows, [])` copies the list once per row:
        # quadratic, seconds per chunk).
        strings = np.array([s for row in rows for s in row], dtype=object)
        flat = np.asarray(hashing(strings)) + 1
        ends = np.cumsum([len(r) for r in rows])
        for k, (row, end) in enumerate(zip(rows, ends, strict=True)):
            ids[first + k, : len(row)] = flat[end - len(row) : end]
    y = np.array([class_names.index(label) for label in labels], "int32")
    return ids, y, train, test


def batch_rows(train, step, batch_size, seed):
    """Examples of batch `step`: a pure function of the step (for resuming)."""
    per_epoch = len(train) // batch_size
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(train)
    return order[position * batch_size : (position + 1) * batch_size]


def dataset_fn_for(ids, y, train, steps, args, tf):
    """`dataset_fn(input_context)`: batch `s` of the run is step `s`'s rows.

    Worker `i` of `n` (`input_context.input_pipeline_id`) reads the steps
    `i, i + n, ...` (and again from `i` if it runs ahead of the others); one
    worker, or one process, reads them all, in order.
    """
    rows = np.stack(
        [batch_rows(train, s, args.batch_size, args.seed) for s in range(steps)]
    )
    # The rows travel to every task with the data function, which holds a few
    # copies of them: only the training rows used, their ids without the
    # padding, in int32 (the buckets fit).
    used = np.unique(rows)
    local = np.searchsorted(used, rows).astype("int32")
    kept = ids[used]
    lengths = (kept != 0).sum(axis=1)  # padding (0) only at the ends
    flat = kept[kept != 0].astype("int32")
    splits = np.concatenate([[0], np.cumsum(lengths)]).astype("int64")
    labels = y[used]

    def dataset_fn(context):
        table = tf.RaggedTensor.from_row_splits(flat, splits)
        steps_rows = tf.data.Dataset.from_tensor_slices(local)
        # The coordinator gives each step to whichever worker is free: with
        # several, a faster one reads on into its shard's next pass.
        steps_rows = steps_rows.shard(
            context.num_input_pipelines, context.input_pipeline_id
        ).repeat()

        def batch(r):
            bags = tf.gather(table, r).to_tensor(shape=[None, args.max_ids])
            return tf.cast(bags, tf.int64), tf.gather(labels, r)

        return steps_rows.map(batch)

    return dataset_fn


# ---------------------------------------------------------------------------
# Model and training, the same with and without a strategy.


def build(args, keras):
    import keras_lookup

    keras.utils.set_random_seed(args.seed)
    ids = keras.Input((args.max_ids,), dtype="int64", name="hashed_ids")
    x = keras_lookup.Embedding(
        args.buckets,
        args.dim,
        combiner="mean",
        mask_zero=True,
        table_dtype=args.table_dtype,
        name="embedding",
    )(ids)
    logits = keras_lookup.Dense(3, name="classifier")(x)
    model = keras.Model(ids, logits)
    optimizers = keras_lookup.optimizers
    optimizer = {
        "lazy_adam": optimizers.LazyAdam,
        "lazy_adagrad": optimizers.LazyAdagrad,
        "rowwise_adagrad": optimizers.LazyRowwiseAdagrad,
        "rowwise_adam": optimizers.LazyRowwiseAdam,
    }[args.optimizer](args.learning_rate)
    model.compile(
        optimizer,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def table_layout(model):
    layer = model.get_layer("embedding")
    parts = layer.table_parts or [layer.embeddings]
    out = []
    for part in parts:
        device = getattr(part, "value", part).device or "this process"
        out.append({"device": device, "rows": int(part.shape[0])})
    return out


def test_hooks(keras, launcher, backup):
    """Callbacks for the test hooks (see the module docstring)."""
    kill_after = int(os.environ.get(KILL_AFTER_STEP, -1))
    kill_task, _, kill_task_at = os.environ.get(KILL_TASK, "@-1").partition("@")
    kill_task_at = int(kill_task_at)

    class Hooks(keras.callbacks.Callback):
        step = 0

        def on_train_begin(self, logs=None):
            # The steps of the run so far, those before a resume included.
            if backup is not None:
                self.step = backup._position.steps

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if self.step == kill_task_at and launcher:
                child = next(c for c in launcher.children if c.name == kill_task)
                print(
                    f"test hook: killing {kill_task} (pid {child.pid}) at step "
                    f"{self.step}"
                )
                sys.stdout.flush()
                os.kill(child.pid, signal.SIGKILL)
            if self.step == kill_after:
                print(f"test hook: killing the coordinator after step {self.step}")
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    return Hooks()


class StepTimer:
    """Wall time of training steps 10 onwards (a Keras callback's hooks)."""

    def __init__(self, keras):
        timer = self

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                timer.steps += 1
                if timer.steps == 10:
                    timer.warm = time.perf_counter()

            def on_train_end(self, logs=None):
                timer.end = time.perf_counter()

        self.callback = Callback()
        self.steps, self.warm, self.end = 0, None, None

    def per_step(self):
        if self.warm is None or self.end is None or self.steps <= 10:
            return None
        return (self.end - self.warm) / (self.steps - 10)


def run(args, strategy=None, launcher=None):
    from _startup import import_keras

    keras, tf = import_keras()
    import keras_lookup

    ids, y, train, test = load_data(args, keras)
    scope = strategy.scope() if strategy else contextlib.nullcontext()
    with scope:
        model = build(args, keras)
    layout = table_layout(model)
    bytes_per_entry = 4 if args.table_dtype == "float32" else 2
    table_bytes = args.buckets * args.dim * bytes_per_entry
    print(
        f"Table: {args.buckets:,} rows x {args.dim} {args.table_dtype} = "
        f"{table_bytes / 2**30:.2f} GiB in {len(layout)} part(s): "
        + ", ".join(f"{p['rows']:,} rows on {p['device']}" for p in layout)
    )
    epochs, steps_per_epoch = _training.epochs_of(
        args.steps, len(train) // args.batch_size
    )
    steps = epochs * steps_per_epoch
    timer = StepTimer(keras)
    backup = None
    if args.checkpoint_dir:
        backup = keras_lookup.distribute.BackupAndRestore(
            args.checkpoint_dir, save_freq=args.checkpoint_every
        )
    callbacks = [c for c in (backup, timer.callback) if c is not None]
    callbacks.append(test_hooks(keras, launcher, backup))
    began = time.perf_counter()
    history = keras_lookup.distribute.fit(
        model,
        dataset_fn_for(ids, y, train, steps, args, tf),
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=(ids[test], y[test]),
        validation_batch_size=256,
        callbacks=callbacks,
        verbose=1,
    )
    seconds = time.perf_counter() - began
    resumed_from = steps - timer.steps
    accuracy = history.history["val_accuracy"][-1]
    last_loss = history.history["loss"][-1]
    per_step = timer.per_step()
    baseline = float(np.bincount(y[test]).max() / len(test))
    print(
        f"Trained steps {resumed_from}..{steps} ({epochs} epoch(s) of "
        f"{steps_per_epoch}) in {seconds:.1f} s"
        + (f" ({per_step * 1000:.1f} ms a step after 10)" if per_step else "")
        + f"; last epoch's loss {last_loss:.4f}; held-out accuracy {accuracy:.1%} "
        f"(majority-class baseline {baseline:.1%})."
    )
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        keras_lookup.save_state(model, args.out)
    # Read last: the peaks of the whole run, saving included.
    rss = {"coordinator" if strategy else "single process": peak_rss_mib()}
    if launcher:
        for child in launcher.children:
            rss[child.name] = peak_rss_mib(child.pid)
    for name, mib in rss.items():
        print(f"peak RSS {name}: {mib:.0f} MiB" if mib else f"peak RSS {name}: ?")
    if args.out:
        _data.write_json(
            os.path.join(args.out, "summary.json"),
            {
                "steps": steps,
                "epochs": epochs,
                "resumed_from": resumed_from,
                "accuracy": accuracy,
                "baseline": baseline,
                "final_loss": last_loss,
                "history": history.history,
                "table_rows": args.buckets,
                "table_dtype": args.table_dtype,
                "table_bytes": table_bytes,
                "shards": layout,
                "seconds_per_step": per_step,
                "peak_rss_mib": rss,
                "optimizer": args.optimizer,
            },
        )
        print(f"Wrote {args.out}/ (save_state files, summary.json).")


def ps_died(failure, args):
    resume = (
        " Run the same command again to resume from the last backup."
        if args.checkpoint_dir
        else " (With --checkpoint-dir, the same command would resume.)"
    )
    return f"error: {failure}: a parameter server is gone, and the run ends.{resume}"


# Taken by the first thread that ends the run (the watch thread or the one
# that trains): the message is printed once.
_ENDING = threading.Lock()


def end_run(launcher, failure, args):
    """Ends the run after a ps task died, its message the last line shown."""
    _ENDING.acquire()
    # TensorFlow's threads go on logging the failed steps (and, as the
    # children are stopped, their reconnects): silenced first, and the
    # children stopped, before the message.
    logging.disable(logging.CRITICAL)
    launcher.stop()
    sys.stdout.flush()
    print(ps_died(failure, args), file=sys.stderr)
    sys.stderr.flush()
    os._exit(1)


# ---------------------------------------------------------------------------
# Cluster roles


def serve(args):
    """A worker or ps task: a TensorFlow server until it is killed."""
    from _startup import import_keras

    _, tf = import_keras()
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    config = tf.compat.v1.ConfigProto()
    if args.task_type == "worker":
        # Without it, a worker hangs when the machine has fewer cores than
        # workers + 1 (TensorFlow's own tutorial does the same).
        workers = len(resolver.cluster_spec().as_dict().get("worker", []))
        config.inter_op_parallelism_threads = workers + 1
    server = tf.distribute.Server(
        resolver.cluster_spec(),
        job_name=args.task_type,
        task_index=args.task_index,
        config=config,
        protocol="grpc",
        start=True,
    )
    print(f"{args.task_type} {args.task_index} serving (pid {os.getpid()})")
    sys.stdout.flush()
    server.join()


def coordinate(args, resolver, launcher=None):
    from _startup import import_keras

    _, tf = import_keras()
    num_ps = resolver.cluster_spec().num_tasks("ps")
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=1 << 20, max_shards=num_ps
    )
    strategy = tf.distribute.ParameterServerStrategy(
        resolver, variable_partitioner=partitioner
    )
    run(args, strategy, launcher)


def local_cluster(args):
    cluster = _launcher.loopback_cluster(args.workers, args.ps)
    ports = [address.rsplit(":", 1)[1] for address in cluster["worker"] + cluster["ps"]]
    print(
        f"Starting {args.workers} worker(s) and {args.ps} ps task(s) on 127.0.0.1 "
        f"(ports {', '.join(ports)}); coordinator: this process."
    )
    sys.stdout.flush()
    with _launcher.Launcher() as launcher:
        _launcher.start_ps_cluster_tasks(
            launcher,
            os.path.abspath(__file__),
            cluster,
            # Unset unless the user set it: the children then leave out
            # TensorFlow's start-up log (_startup.py).
            env={"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL")},
            restart_workers=True,
        )
        done = threading.Event()
        watch = threading.Thread(
            target=_watch_ps, args=(launcher, args, done), daemon=True
        )
        watch.start()
        from _startup import import_keras

        _, tf = import_keras()
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), rpc_layer="grpc"
        )
        try:
            coordinate(args, resolver, launcher)
        except Exception:
            # A step that failed because a ps task died: say that, not how.
            time.sleep(1)
            failure = launcher.check()
            if failure and failure.startswith("ps "):
                end_run(launcher, failure, args)
            raise
        finally:
            done.set()
            watch.join()
    # The coordinator's background threads would now report the tasks just
    # stopped as failures (and try to reconnect): the run is over, so leave.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _watch_ps(launcher, args, done):
    # The coordinator may be blocked waiting on a ps task that is gone: this
    # thread restarts dead workers and ends the run when a ps task dies.
    while not done.is_set():
        failure = launcher.check()
        if failure and not done.is_set():
            end_run(launcher, failure, args)
        done.wait(0.5)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.task_type:
        return serve(args)
    if args.single_process:
        return run(args)
    if not args.local_cluster and "TF_CONFIG" not in os.environ:
        args.workers, args.ps = (int(n) for n in DEFAULT_CLUSTER.split(","))
        print(
            f"No TF_CONFIG, --local-cluster or --single-process: running a local "
            f"cluster of {args.workers} workers and {args.ps} ps tasks on "
            f"127.0.0.1 (--local-cluster {DEFAULT_CLUSTER}). Set TF_CONFIG (with "
            '"chief", "worker" and "ps" tasks) to run on real hosts.'
        )
        args.local_cluster = DEFAULT_CLUSTER
    if args.local_cluster:
        return local_cluster(args)
    from _startup import import_keras

    _, tf = import_keras()
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if resolver.task_type in ("worker", "ps"):
        args.task_type, args.task_index = resolver.task_type, resolver.task_id
        return serve(args)
    coordinate(args, resolver)


if __name__ == "__main__":
    main()
