"""Steps per second through `keras_lookup.distribute.fit` against a hand-written loop.

One cluster (W worker and P ps processes on 127.0.0.1, started here), one
model with its table split across the ps tasks (the model of
`examples/parameter_server.py`: a mean-of-embeddings bag of hashed ids and a
classifier, `LazyRowwiseAdagrad` by default), trained in turns by:

- **hand-written**: the loop `examples/parameter_server.py` had before
  `keras_lookup.distribute` (kept here verbatim for this comparison): the
  coordinator slices each batch from NumPy arrays and schedules a
  `tf.function` step (`strategy.run` of tape + `optimizer.apply`) with the
  batch as its argument, then joins;
- **distribute.fit**: `keras_lookup.distribute.fit(model, dataset_fn,
  steps_per_epoch=N)`: each worker reads its own batches from a
  `dataset_fn`, Keras's `train_step` runs (loss and accuracy metrics
  included), callbacks and the coordinator's bookkeeping as in `model.fit`.

Both train on the same batches, a pure function of the step: bags of 20 to
`--max-ids` hashed ids, uniform over the buckets (made on the coordinator for
the hand-written loop, on the workers for `fit`).
The loops alternate, `--rounds` rounds of `--steps` steps each, so that they
share the machine's load; a round's time runs from the first step scheduled to
the last one done (the fit call's own start-up included), after one untimed
warm-up round of each. Steps per second is the median over the rounds.

Usage:

    python benchmarks/distribute_fit.py --out benchmarks/results/distribute_fit
"""

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import _launcher  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ps", type=int, default=2)
    parser.add_argument("--buckets", type=int, default=2**22)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-ids", type=int, default=256)
    parser.add_argument(
        "--optimizer",
        choices=("lazy_adam", "lazy_adagrad", "rowwise_adagrad", "rowwise_adam"),
        default="rowwise_adagrad",
    )
    parser.add_argument("--steps", type=int, default=200, help="steps a round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write OUT.md and OUT.jsonl")
    return parser.parse_args(argv)


def batch_maker(args, tf):
    """`make_batch(step)`: step `step`'s batch, drawn from `(seed, step)`.

    Bags of 20 to `--max-ids` hashed ids (0-padded), uniform over the buckets,
    and labels of 3 classes: a pure function of the step, computed by
    TensorFlow ops (on the coordinator for the hand-written loop, on the
    workers inside `fit`'s `dataset_fn`).
    """

    def make_batch(step):
        shape = (args.batch_size, args.max_ids)
        seed = tf.stack([tf.constant(args.seed, tf.int64), tf.cast(step, tf.int64)])
        ids = tf.random.stateless_uniform(
            shape, seed, minval=1, maxval=args.buckets, dtype=tf.int64
        )
        lengths = tf.random.stateless_uniform(
            (args.batch_size, 1), seed + 1, 20, args.max_ids + 1, dtype=tf.int32
        )
        ids = tf.where(tf.range(args.max_ids)[None, :] < lengths, ids, 0)
        labels = tf.random.stateless_uniform(
            (args.batch_size,), seed + 2, 0, 3, dtype=tf.int32
        )
        return ids, labels

    return make_batch


# ---------------------------------------------------------------------------
# The hand-written loop of examples/parameter_server.py before
# keras_lookup.distribute (its `train_fn` and the scheduling part of its
# `run`), for the comparison.


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


def hand_written(model, strategy, coordinator, make_batch, first, count, keras, tf):
    # The old loop's scheduling; its batches were `ids[batch_rows(...)]`
    # slices of NumPy arrays made into tensors here, now `make_batch(i)`.
    if not hasattr(hand_written, "step"):
        step_fn = train_fn(model, keras, tf)
        hand_written.step = tf.function(lambda x, y: strategy.run(step_fn, args=(x, y)))
    losses = []
    for i in range(first, first + count):
        x, labels = make_batch(i)
        losses.append(coordinator.schedule(hand_written.step, args=(x, labels)))
    coordinator.join()
    return float(losses[-1].fetch())


# ---------------------------------------------------------------------------
# The same steps through keras_lookup.distribute.fit.


def through_fit(model, make_batch, first, count, tf):
    import keras_lookup

    def dataset_fn(context):
        steps = tf.data.Dataset.range(first, first + count)
        steps = steps.shard(context.num_input_pipelines, context.input_pipeline_id)
        steps = steps.repeat()  # a faster worker reads on
        return steps.map(make_batch)

    history = keras_lookup.distribute.fit(
        model, dataset_fn, epochs=1, steps_per_epoch=count, verbose=0
    )
    return history.history["loss"][-1]


def build(args, strategy, keras):
    import keras_lookup

    keras.utils.set_random_seed(args.seed)
    with strategy.scope():
        ids = keras.Input((args.max_ids,), dtype="int64", name="hashed_ids")
        x = keras_lookup.Embedding(
            args.buckets, args.dim, combiner="mean", mask_zero=True, name="embedding"
        )(ids)
        model = keras.Model(ids, keras_lookup.Dense(3, name="classifier")(x))
        optimizer = {
            "lazy_adam": keras_lookup.optimizers.LazyAdam(2e-3),
            "lazy_adagrad": keras_lookup.optimizers.LazyAdagrad(0.2),
            "rowwise_adagrad": keras_lookup.optimizers.LazyRowwiseAdagrad(0.2),
            "rowwise_adam": keras_lookup.optimizers.LazyRowwiseAdam(2e-3),
        }[args.optimizer]
        model.compile(
            optimizer,
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        optimizer.build(model.trainable_variables)
    return model


def main(argv=None):
    args = parse_args(argv)
    cluster = _launcher.loopback_cluster(args.workers, args.ps)
    server = os.path.join(ROOT, "examples", "parameter_server.py")
    with _launcher.Launcher() as launcher:
        _launcher.start_ps_cluster_tasks(launcher, server, cluster)
        from _startup import import_keras

        keras, tf = import_keras()
        import keras_lookup

        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), rpc_layer="grpc"
        )
        partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=1 << 20, max_shards=args.ps
        )
        strategy = tf.distribute.ParameterServerStrategy(
            resolver, variable_partitioner=partitioner
        )
        coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
        make_batch = batch_maker(args, tf)
        model = build(args, strategy, keras)
        parts = model.get_layer("embedding").table_parts or []
        print(
            f"Table {args.buckets:,} x {args.dim} in {len(parts)} part(s); "
            f"{args.workers} worker(s), {args.ps} ps task(s); {args.rounds} rounds "
            f"of {args.steps} steps each way, after a warm-up round.",
            flush=True,
        )
        runs = {
            "hand-written": lambda first: hand_written(
                model, strategy, coordinator, make_batch, first, args.steps, keras, tf
            ),
            "distribute.fit": lambda first: through_fit(
                model, make_batch, first, args.steps, tf
            ),
        }
        times = {name: [] for name in runs}
        step = 0
        for round_index in range(args.rounds + 1):
            for name, run in runs.items():
                start = time.perf_counter()
                loss = run(step)
                seconds = time.perf_counter() - start
                step += args.steps
                if round_index:  # round 0 warms up (tracing, first reads)
                    times[name].append(seconds)
                print(
                    f"round {round_index}{' (warm-up)' if not round_index else ''}: "
                    f"{name}: {args.steps / seconds:.1f} steps/s (loss {loss:.4f})",
                    flush=True,
                )
        versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
        del keras_lookup
    rates = {n: [args.steps / s for s in t] for n, t in times.items()}
    medians = {n: statistics.median(r) for n, r in rates.items()}
    ratio = medians["distribute.fit"] / medians["hand-written"]
    print(
        f"median steps/s: hand-written {medians['hand-written']:.1f}, "
        f"distribute.fit {medians['distribute.fit']:.1f} (fit / hand-written = "
        f"{ratio:.3f})"
    )
    if args.out:
        write(args, rates, medians, ratio, versions)
    sys.stdout.flush()
    # The coordinator's threads would report the stopped tasks: leave now.
    os._exit(0)


def write(args, rates, medians, ratio, versions):
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    record = {
        "config": vars(args),
        "versions": versions,
        "steps_per_second": rates,
        "median": medians,
        "ratio_fit_to_hand_written": ratio,
    }
    with open(args.out + ".jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    command = "python benchmarks/distribute_fit.py " + " ".join(sys.argv[1:])
    lines = [
        "# Steps per second: `keras_lookup.distribute.fit` vs a hand-written loop",
        "",
        f"Command: `{command}` (2 shared CPU cores, TensorFlow "
        f"{versions['tensorflow']}, Keras {versions['keras']}). Cluster: "
        f"{args.workers} worker and {args.ps} ps processes on 127.0.0.1 and the "
        f"coordinator; table {args.buckets:,} × {args.dim} float32 split across the "
        f"ps tasks, `{args.optimizer}`, batches of {args.batch_size} bags of up "
        f"to {args.max_ids} hashed ids. The two loops train the same model in turns, "
        f"{args.rounds} rounds of {args.steps} steps each (after a warm-up round "
        "each). Raw records: `distribute_fit.jsonl`.",
        "",
        "| loop | median steps/s | rounds (steps/s) |",
        "|---|---|---|",
    ]
    for name in ("hand-written", "distribute.fit"):
        rounds = ", ".join(f"{r:.1f}" for r in rates[name])
        lines.append(f"| {name} | {medians[name]:.1f} | {rounds} |")
    lines += ["", f"**fit / hand-written: {ratio:.3f}** (median over median).", ""]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines))
    print(f"Wrote {args.out}.md and {args.out}.jsonl")


if __name__ == "__main__":
    main()
