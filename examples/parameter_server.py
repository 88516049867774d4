"""Train a text classifier whose table is split across parameter servers.

Classifies State of the Union paragraphs by era from their words and word
bigrams, hashed with `keras.layers.Hashing` into `--buckets` rows
(fastText-style: the table is large for a real reason, and grows with the
buckets, not with a vocabulary). Each paragraph is one bag of hashed ids,
averaged by `keras_lookup.Embedding(combiner="mean")` and classified by
`keras_lookup.Dense`. Under `tf.distribute.ParameterServerStrategy` with a
`variable_partitioner`, the table (and its optimizer slots) is split by rows
across the ps tasks, each built in place on its task; the coordinator
schedules steps on the workers with `ClusterCoordinator`, each step reading
only the rows its batch needs and updating them on the ps task that holds
them.

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

With `--local-cluster`, a worker process that dies is started again (as a
cluster manager would), and the coordinator reschedules its steps; a ps task
that dies ends the run with a message (with `--checkpoint-dir`, the same
command then resumes from the last checkpoint). `--out DIR` writes the trained
state with `keras_lookup.save_state` (the logical, unsharded view, written
part by part, 64 MiB at a time) and `DIR/summary.json`.

Test hooks (environment variables read by the coordinator):
`PARAMETER_SERVER_TEST_KILL_AFTER_STEP=S` SIGKILLs the coordinator (its
children die with it) right after the checkpoint of step S;
`PARAMETER_SERVER_TEST_KILL_TASK="worker 0@S"` (or `"ps 1@S"`) SIGKILLs that
task of `--local-cluster` once step S is scheduled.
"""

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time

import _data
import _launcher
import numpy as np

KILL_AFTER_STEP = "PARAMETER_SERVER_TEST_KILL_AFTER_STEP"
KILL_TASK = "PARAMETER_SERVER_TEST_KILL_TASK"
OPTIMIZERS = ("lazy_adam", "lazy_adagrad", "rowwise_adagrad", "rowwise_adam")
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
        help="start W worker and P ps processes on 127.0.0.1; coordinate here",
    )
    where.add_argument(
        "--single-process",
        action="store_true",
        help="train in this process without any strategy (the reference)",
    )
    parser.add_argument("--task-type", choices=("worker", "ps"), help=argparse.SUPPRESS)
    parser.add_argument("--task-index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a small, fast run")
    parser.add_argument("--steps", type=int, help="training steps")
    parser.add_argument("--buckets", type=int, help="hash buckets = table rows")
    parser.add_argument("--dim", type=int, help="embedding dimension")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-ids", type=int, help="hashed ids kept per paragraph")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="rowwise_adagrad")
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="folder for save_state files + summary.json")
    parser.add_argument("--checkpoint-dir", help="checkpoints; resume from there")
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
        flat = np.asarray(hashing(np.array(sum(rows, []), dtype=object))) + 1
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


# ---------------------------------------------------------------------------
# Model and training, the same with and without a strategy.


def build(args, keras):
    import keras_lookup

    keras.utils.set_random_seed(args.seed)
    ids = keras.Input((args.max_ids,), dtype="int64", name="hashed_ids")
    x = keras_lookup.Embedding(
        args.buckets, args.dim, combiner="mean", mask_zero=True, name="embedding"
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
    optimizer.build(model.trainable_variables)
    model.optimizer = optimizer
    return model


def train_fn(model, keras, tf):
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(
                    y, logits, from_logits=True
                )
            )
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply(grads, model.trainable_variables)
        return loss

    return step


def evaluate(model, x, y, batch=128):
    # On the coordinator: each batch reads only its rows from the ps tasks.
    correct = 0
    for start in range(0, len(x), batch):
        logits = np.asarray(model(x[start : start + batch]))
        correct += int((logits.argmax(-1) == y[start : start + batch]).sum())
    return correct / len(x)


def table_layout(model):
    layer = model.get_layer("embedding")
    parts = layer.table_parts or [layer.embeddings]
    out = []
    for part in parts:
        device = getattr(part, "value", part).device or "this process"
        out.append({"device": device, "rows": int(part.shape[0])})
    return out


def run(args, strategy=None, coordinator=None, launcher=None):
    from _startup import import_keras

    keras, tf = import_keras()
    import keras_lookup

    ids, y, train, test = load_data(args, keras)
    scope = strategy.scope() if strategy else contextlib.nullcontext()
    with scope:
        model = build(args, keras)
    layout = table_layout(model)
    table_bytes = args.buckets * args.dim * 4
    print(
        f"Table: {args.buckets:,} rows x {args.dim} = {table_bytes / 2**30:.2f} GiB "
        f"in {len(layout)} part(s): "
        + ", ".join(f"{p['rows']:,} rows on {p['device']}" for p in layout)
    )
    step_fn = train_fn(model, keras, tf)
    if strategy:
        step = tf.function(lambda x, y: strategy.run(step_fn, args=(x, y)))
    else:
        step = tf.function(step_fn)

    start_step, manager = 0, None
    if args.checkpoint_dir:
        checkpoint = tf.train.Checkpoint(model=model)
        manager = tf.train.CheckpointManager(checkpoint, args.checkpoint_dir, 3)
        if manager.latest_checkpoint:
            checkpoint.read(manager.latest_checkpoint).assert_existing_objects_matched()
            start_step = int(manager.latest_checkpoint.rsplit("-", 1)[1])
            print(f"resumed from step {start_step}")
    kill_after = int(os.environ.get(KILL_AFTER_STEP, -1))
    kill_task, _, kill_task_at = os.environ.get(KILL_TASK, "@-1").partition("@")
    kill_task_at = int(kill_task_at)

    def save(done):
        if coordinator:
            coordinator.join()
        manager.save(checkpoint_number=done)
        print(f"checkpoint at step {done}")
        sys.stdout.flush()
        if done == kill_after:
            print(f"test hook: killing the coordinator after step {done}")
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    began = time.perf_counter()
    warm, warm_step = None, None
    losses = []
    for i in range(start_step, args.steps):
        rows = batch_rows(train, i, args.batch_size, args.seed)
        x, labels = tf.constant(ids[rows]), tf.constant(y[rows])
        if coordinator:
            losses.append(coordinator.schedule(step, args=(x, labels)))
        else:
            losses.append(step(x, labels))
        if i == kill_task_at and launcher:
            child = next(c for c in launcher.children if c.name == kill_task)
            print(f"test hook: killing {kill_task} (pid {child.pid}) at step {i}")
            sys.stdout.flush()
            os.kill(child.pid, signal.SIGKILL)
        if i + 1 - start_step == 10:
            if coordinator:
                coordinator.join()
            warm, warm_step = time.perf_counter(), i + 1
        done = i + 1
        if manager and (done % args.checkpoint_every == 0 or done == args.steps):
            save(done)
    if coordinator:
        coordinator.join()
    ended = time.perf_counter()
    last_loss = float(losses[-1].fetch() if coordinator else losses[-1])
    per_step = None
    if warm is not None and args.steps > warm_step:
        per_step = (ended - warm) / (args.steps - warm_step)
    accuracy = evaluate(model, ids[test], y[test])
    baseline = float(np.bincount(y[test]).max() / len(test))
    print(
        f"Trained steps {start_step}..{args.steps} in {ended - began:.1f} s"
        + (f" ({per_step * 1000:.1f} ms a step after 10)" if per_step else "")
        + f"; final loss {last_loss:.4f}; held-out accuracy {accuracy:.1%} "
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
                "steps": args.steps,
                "resumed_from": start_step,
                "accuracy": accuracy,
                "baseline": baseline,
                "final_loss": last_loss,
                "table_rows": args.buckets,
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
        " Run the same command again to resume from the last checkpoint."
        if args.checkpoint_dir
        else " (With --checkpoint-dir, the same command would resume.)"
    )
    return f"error: {failure}: a parameter server is gone, and the run ends.{resume}"


# ---------------------------------------------------------------------------
# Cluster roles


def serve(args):
    """A worker or ps task: a TensorFlow server until it is killed."""
    from _startup import import_keras

    _, tf = import_keras()
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    config = tf.compat.v1.ConfigProto()
    if args.task_type == "worker":
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
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    run(args, strategy, coordinator, launcher)


def local_cluster(args, argv):
    ports = _launcher.free_ports(args.workers + args.ps)
    cluster = {
        "worker": [f"127.0.0.1:{p}" for p in ports[: args.workers]],
        "ps": [f"127.0.0.1:{p}" for p in ports[args.workers :]],
    }
    print(
        f"Starting {args.workers} worker(s) and {args.ps} ps task(s) on 127.0.0.1 "
        f"(ports {', '.join(map(str, ports))}); coordinator: this process."
    )
    sys.stdout.flush()
    script = os.path.abspath(__file__)
    with _launcher.Launcher() as launcher:
        for task_type, count in (("ps", args.ps), ("worker", args.workers)):
            for index in range(count):
                tf_config = {
                    "cluster": cluster,
                    "task": {"type": task_type, "index": index},
                }
                launcher.start(
                    f"{task_type} {index}",
                    [
                        sys.executable,
                        script,
                        "--task-type",
                        task_type,
                        "--task-index",
                        str(index),
                    ],
                    env={
                        "TF_CONFIG": json.dumps(tf_config),
                        "KERAS_BACKEND": "tensorflow",
                        # Unset unless the user set it: the children then
                        # leave out TensorFlow's start-up log (_startup.py).
                        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL"),
                    },
                    restart=task_type == "worker",
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
                print(ps_died(failure, args), file=sys.stderr)
                sys.stderr.flush()
                launcher.stop()
                os._exit(1)
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
            print(ps_died(failure, args), file=sys.stderr)
            sys.stderr.flush()
            launcher.stop()
            os._exit(1)
        done.wait(0.5)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.task_type:
        return serve(args)
    if args.local_cluster:
        return local_cluster(args, argv)
    if args.single_process:
        return run(args)
    from _startup import import_keras

    _, tf = import_keras()
    if "TF_CONFIG" not in os.environ:
        _data.fail(
            "choose --local-cluster W,P, --single-process, or set TF_CONFIG "
            '(with "chief", "worker" and "ps" tasks) to run on a cluster.'
        )
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if resolver.task_type in ("worker", "ps"):
        args.task_type, args.task_index = resolver.task_type, resolver.task_id
        return serve(args)
    coordinate(args, resolver)


if __name__ == "__main__":
    main()
