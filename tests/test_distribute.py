"""keras_lookup.distribute: Keras's training loop beyond one machine.

One process runs in this process; `ParameterServerStrategy` runs on in-process
clusters (a worker and ps servers inside a child process, since TensorFlow
joins a process to one cluster only); `MultiWorkerMirroredStrategy` runs as
two worker processes on 127.0.0.1. Every child has a timeout and free ports;
a child that must die is killed by SIGKILL of its own process group (it is
started in a session of its own).
"""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import ps_cluster
import pytest
import tensorflow as tf

import keras_lookup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The data and model every test trains: ids whose first position decides the
# class, an Embedding table, average pooling, a classifier.
SETUP = """
import contextlib, json, os, signal, sys
import numpy as np
import tensorflow as tf
import keras
import keras_lookup

V, L, B = 2000, 8, 16
rng = np.random.default_rng(0)
X = rng.integers(1, V, (24 * B, L)).astype("int32")
Y = (X[:, 0] % 3 == 0).astype("int32")
# One more than 8 batches: the last validation batch leaves a worker of two
# nothing (under MultiWorkerMirroredStrategy it must count nothing).
XV = rng.integers(1, V, (8 * B + 1, L)).astype("int32")
YV = (XV[:, 0] % 3 == 0).astype("int32")


def dataset_fn(context):
    # A seeded shuffle, repeated: the same stream in every run; one worker
    # reads what one process reads.
    data = tf.data.Dataset.from_tensor_slices((X, Y)).shuffle(len(X), seed=5)
    return data.repeat().batch(B)


def val_fn(context):
    return tf.data.Dataset.from_tensor_slices((XV, YV)).batch(B)


def build(optimizer=None, strategy=None):
    keras.utils.set_random_seed(3)
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = keras.Sequential([
            keras.Input((L,), dtype="int32"),
            keras_lookup.Embedding(V, 16, name="embedding"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(2, name="classes"),
        ])
        model.compile(
            optimizer or keras_lookup.optimizers.LazyAdam(0.01),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    return model


class KillAfter(keras.callbacks.Callback):
    # SIGKILL of the whole process group after `step` steps (on the chief).
    def __init__(self, step, chief=True):
        super().__init__()
        self.step, self.chief, self.seen = step, chief, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.chief and self.seen == self.step:
            print("killing the process group", flush=True)
            os.killpg(os.getpgid(0), signal.SIGKILL)


def report(**values):
    print("REPORT " + json.dumps(values), flush=True)
"""

CLUSTER = """
sys.path.insert(0, "tests")
import ps_cluster
"""


def exec_setup():
    scope = {}
    exec(compile(SETUP, "SETUP", "exec"), scope)
    return scope


def run_child(code, *args, env=None, timeout=240, killed=False):
    """Runs `code` in a new process (and session) from the repository root;
    returns its output. `killed`: it must end by SIGKILL."""
    env = {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "CUDA_VISIBLE_DEVICES": "-1",
        **(env or {}),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(  # noqa: B904 - the output is the story
            f"timed out after {timeout} s:\n{out[-3000:]}{err[-3000:]}"
        )
    expected = -signal.SIGKILL if killed else 0
    assert process.returncode == expected, (
        process.returncode,
        out[-3000:],
        err[-3000:],
    )
    return out


def reports(out):
    return [
        json.loads(x[len("REPORT ") :])
        for x in out.splitlines()
        if x.startswith("REPORT ")
    ]


def run_workers(code, count, *args, timeout=240):
    """Runs `code` as `count` MultiWorkerMirroredStrategy workers on 127.0.0.1;
    returns their outputs. Every worker is killed by PID at the end."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ps_cluster.free_ports(count)]}
    processes = []
    try:
        for index in range(count):
            tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                    cwd=REPO,
                    env={
                        **os.environ,
                        "TF_CONFIG": json.dumps(tf_config),
                        "KERAS_BACKEND": "tensorflow",
                        "TF_CPP_MIN_LOG_LEVEL": "3",
                        "CUDA_VISIBLE_DEVICES": "-1",
                    },
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(processes, outputs, strict=True):
        assert p.returncode == 0, out[-4000:]
    return outputs


def max_diff(a, b):
    assert len(a) == len(b)
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(a, b, strict=True)
    )


# -- one process ---------------------------------------------------------------


def test_one_process_is_model_fit(tmp_path):
    s = exec_setup()

    class Count(keras.callbacks.Callback):
        batches = 0

        def on_train_batch_end(self, batch, logs=None):
            Count.batches += 1

    schedule = keras.callbacks.LearningRateScheduler(
        lambda epoch, lr: 0.01 / (epoch + 1)
    )
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=5)
    reference = s["build"]()
    expected = reference.fit(
        s["dataset_fn"](None),
        epochs=2,
        steps_per_epoch=6,
        validation_data=s["val_fn"](None),
        callbacks=[keras.callbacks.LearningRateScheduler(lambda e, lr: 0.01 / (e + 1))],
        verbose=0,
    )
    model = s["build"]()
    history = keras_lookup.distribute.fit(
        model,
        s["dataset_fn"],
        epochs=2,
        steps_per_epoch=6,
        validation_data=s["val_fn"],
        callbacks=[
            keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
            Count(),
            schedule,
            stop,
        ],
        verbose=0,
    )
    assert history is model.history
    assert sorted(history.history) == [
        "accuracy",
        "learning_rate",
        "loss",
        "val_accuracy",
        "val_loss",
    ]
    for key, values in expected.history.items():
        np.testing.assert_allclose(history.history[key], values, rtol=1e-6, err_msg=key)
    assert max_diff(model.get_weights(), reference.get_weights()) <= 1e-6
    assert Count.batches == 12
    assert float(model.optimizer.learning_rate) == pytest.approx(0.005)
    assert stop.best == pytest.approx(min(history.history["val_loss"]))
    with open(tmp_path / "log.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    # evaluate and predict are Keras's own here.
    got = keras_lookup.distribute.evaluate(
        model, s["val_fn"], return_dict=True, verbose=0
    )
    want = reference.evaluate(s["val_fn"](None), return_dict=True, verbose=0)
    assert got == pytest.approx(want, rel=1e-6)
    np.testing.assert_allclose(
        keras_lookup.distribute.predict(model, s["XV"], verbose=0),
        reference.predict(s["XV"], verbose=0),
        rtol=1e-6,
        atol=1e-6,
    )
    # Arrays, batched here, as model.fit batches them (not shuffled: the
    # shuffles differ).
    arrays = s["build"]()
    keras_lookup.distribute.fit(
        arrays, s["X"], s["Y"], batch_size=32, shuffle=False, verbose=0
    )
    reference = s["build"]()
    reference.fit(s["X"], s["Y"], batch_size=32, shuffle=False, verbose=0)
    assert max_diff(arrays.get_weights(), reference.get_weights()) <= 1e-6


def test_what_cannot_work_raises_naming_it(tmp_path):
    s = exec_setup()
    model = s["build"]()
    fit = keras_lookup.distribute.fit
    with pytest.raises(ValueError, match="keras_lookup.distribute.BackupAndRestore"):
        fit(
            model,
            s["dataset_fn"],
            steps_per_epoch=2,
            callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path))],
        )
    backup = keras_lookup.distribute.BackupAndRestore(str(tmp_path / "b"))
    with pytest.raises(ValueError, match="at most one"):
        fit(
            model,
            s["dataset_fn"],
            steps_per_epoch=2,
            callbacks=[
                backup,
                keras_lookup.distribute.BackupAndRestore(str(tmp_path / "c")),
            ],
        )
    with pytest.raises(ValueError, match="only `keras_lookup.distribute.fit`"):
        model.fit(s["X"], s["Y"], callbacks=[backup], verbose=0)
    for bad in (0, -1, "batch", 1.5, True):
        with pytest.raises(ValueError, match="save_freq"):
            keras_lookup.distribute.BackupAndRestore(str(tmp_path), save_freq=bad)
    with pytest.raises(ValueError, match="`y` and `sample_weight` must be None"):
        fit(model, s["dataset_fn"], s["Y"], steps_per_epoch=2)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        fit(model, s["dataset_fn"], steps_per_epoch=0)
    with pytest.raises(ValueError, match="compile"):
        fit(
            keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), s["X"], s["Y"]
        )


def test_one_process_resumes_at_its_batch_after_sigkill(tmp_path):
    # 3 epochs of 10 steps, a backup every 8 steps; killed after step 13
    # (backup of step 8, in epoch 1), then the same command again.
    code = (
        SETUP
        + """
folder, kill = sys.argv[1], int(sys.argv[2])
model = build()
callbacks = [keras_lookup.distribute.BackupAndRestore(folder + "/backup", save_freq=8)]
if kill:
    callbacks.append(KillAfter(kill))
history = keras_lookup.distribute.fit(
    model, dataset_fn, epochs=3, steps_per_epoch=10, callbacks=callbacks, verbose=0
)
optimizer = [v.numpy() for v in model.optimizer.variables]
np.savez(folder + "/weights.npz", *model.get_weights(), *optimizer)
report(history=history.history, backup_left=os.path.exists(folder + "/backup"))
"""
    )
    killed = run_child(code, tmp_path, 13, killed=True)
    assert "killing the process group" in killed
    assert sorted(os.listdir(tmp_path / "backup")) == [
        "checkpoint",
        "ckpt-8.data-00000-of-00001",
        "ckpt-8.index",
    ]
    resumed = run_child(code, tmp_path, 0)
    assert "resumed from" in resumed and "(epoch 1, batch 8, step 8)" in resumed
    (result,) = reports(resumed)
    assert not result["backup_left"]
    # The uninterrupted run, here.
    s = exec_setup()
    model = s["build"]()
    expected = keras_lookup.distribute.fit(
        model, s["dataset_fn"], epochs=3, steps_per_epoch=10, verbose=0
    )
    with np.load(tmp_path / "weights.npz") as saved:
        got = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    want = model.get_weights() + [v.numpy() for v in model.optimizer.variables]
    assert max_diff(got, want) <= 1e-6
    # The resumed epoch's logs count its batches from before the kill too.
    for key, values in expected.history.items():
        np.testing.assert_allclose(
            result["history"][key], values, rtol=1e-6, err_msg=key
        )


def test_mirrored_strategy_on_one_machine_is_model_fit():
    # Two logical CPUs: configured before TensorFlow starts, so in a child.
    code = (
        """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)
"""
        + SETUP
        + """
mirrored = lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
data = tf.data.Dataset.from_tensor_slices((X, Y)).batch(B)
reference = build(strategy=mirrored())
expected = reference.fit(data, epochs=2, validation_data=data, verbose=0)
model = build(strategy=mirrored())
history = keras_lookup.distribute.fit(
    model, data, epochs=2, validation_data=data, verbose=0
)
report(
    same_history=history.history == expected.history,
    diff=max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(model.get_weights(), reference.get_weights())
    ),
)
"""
    )
    (r,) = reports(run_child(code))
    assert r["same_history"]
    assert r["diff"] <= 1e-6


# -- ParameterServerStrategy -----------------------------------------------------


def test_parameter_server_fit_two_workers_two_ps(tmp_path):
    code = (
        SETUP
        + CLUSTER
        + """
folder = sys.argv[1]
partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
    min_shard_bytes=32 << 10, max_shards=2
)
strategy, _ = ps_cluster.strategy(num_workers=2, num_ps=2, partitioner=partitioner)


class Count(keras.callbacks.Callback):
    batches = 0

    def on_train_batch_end(self, batch, logs=None):
        Count.batches += 1


model = build(strategy=strategy)
schedule = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.01 / (epoch + 1))
stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=5)
checkpoint = keras.callbacks.ModelCheckpoint(
    folder + "/best.weights.h5", save_weights_only=True
)
log = keras.callbacks.CSVLogger(folder + "/log.csv")
callbacks = [log, Count(), schedule, stop, checkpoint]
try:
    import tensorboard  # noqa: F401
    callbacks.append(keras.callbacks.TensorBoard(folder + "/tb"))
except ImportError:
    pass
history = keras_lookup.distribute.fit(
    model, dataset_fn, epochs=2, steps_per_epoch=24, validation_data=val_fn,
    validation_steps=8, verbose=1, callbacks=callbacks,
)
table = model.get_layer("embedding")
report(
    history=history.history,
    batches=Count.batches,
    devices=[p.value.device for p in table.table_parts],
    kernel=len(model.get_layer("classes").weights),
    learning_rate=float(model.optimizer.learning_rate),
    stopped_best=stop.best,
    weights=[list(w.shape) for w in model.get_weights()],
    iterations=int(model.optimizer.iterations.numpy()),
    tensorboard=len(callbacks) == 6,
)
"""
    )
    out = run_child(code, tmp_path)
    (r,) = reports(out)
    history = r["history"]
    assert sorted(history) == [
        "accuracy",
        "learning_rate",
        "loss",
        "val_accuracy",
        "val_loss",
    ]
    assert all(len(v) == 2 for v in history.values())
    assert all(np.isfinite(v).all() for v in history.values())
    assert "24/24" in out
    assert r["batches"] == 48
    assert r["iterations"] == 48  # each worker's steps counted once
    assert r["devices"] == [f"/job:ps/replica:0/task:{i}/device:CPU:0" for i in (0, 1)]
    assert r["weights"] == [[2000, 16], [16, 2], [2]]  # logical
    assert r["learning_rate"] == pytest.approx(0.005)
    assert r["stopped_best"] == pytest.approx(min(history["val_loss"]))
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["epoch"]) for row in rows] == [0, 1]
    assert float(rows[1]["val_loss"]) == pytest.approx(history["val_loss"][1])
    assert (tmp_path / "best.weights.h5").exists()
    if r["tensorboard"]:
        assert any(
            "events" in n for _, _, names in os.walk(tmp_path / "tb") for n in names
        )


def test_parameter_server_one_worker_is_model_fit_and_resumes_exactly(tmp_path):
    code = (
        SETUP
        + CLUSTER
        + """
folder, kill, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
strategy, _ = ps_cluster.strategy(num_workers=1, num_ps=2, parts=2, min_rows=100)
model = build(strategy=strategy)
callbacks = [keras_lookup.distribute.BackupAndRestore(folder + "/backup", save_freq=8)]
if kill:
    callbacks.append(KillAfter(kill))
history = keras_lookup.distribute.fit(
    model, dataset_fn, epochs=3, steps_per_epoch=10, validation_data=val_fn,
    callbacks=callbacks, verbose=0,
)
keras_lookup.save_state(model, f"{folder}/{name}")  # slots too, logically
parts = len(model.get_layer("embedding").table_parts)
values = dict(history=history.history, parts=parts)
if name == "uninterrupted":
    # The same model and batches in one process, with Keras's own fit.
    reference = build()
    expected = reference.fit(
        dataset_fn(None), epochs=3, steps_per_epoch=10, validation_data=val_fn(None),
        verbose=0,
    )
    values["expected"] = expected.history
    values["fit_diff"] = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(model.get_weights(), reference.get_weights())
    )
    values["evaluate"] = keras_lookup.distribute.evaluate(
        model, val_fn, return_dict=True
    )
    values["keras_evaluate"] = reference.evaluate(
        val_fn(None), return_dict=True, verbose=0
    )
    predicted = keras_lookup.distribute.predict(model, val_fn, verbose=0)
    expected = reference.predict(XV, verbose=0)
    values["predict_diff"] = float(np.max(np.abs(predicted - expected)))
report(**values)
"""
    )
    (r,) = reports(run_child(code, tmp_path, 0, "uninterrupted"))
    assert r["parts"] == 2
    assert r["fit_diff"] <= 1e-5
    for key, values in r["expected"].items():
        np.testing.assert_allclose(r["history"][key], values, rtol=1e-5, err_msg=key)
    assert r["evaluate"] == pytest.approx(r["keras_evaluate"], rel=1e-5)
    assert r["predict_diff"] <= 1e-5
    # Killed after step 13 (the backup of step 8), then the same command.
    killed = run_child(code, tmp_path, 13, "resumed", killed=True)
    assert "killing the process group" in killed
    resumed = run_child(code, tmp_path, 0, "resumed")
    assert "(epoch 1, batch 8, step 8)" in resumed
    (again,) = reports(resumed)
    for key, values in r["history"].items():
        np.testing.assert_allclose(
            again["history"][key], values, rtol=1e-6, err_msg=key
        )
    files = sorted(p.name for p in (tmp_path / "resumed").glob("*.npy"))
    # Table, kernel, bias; iterations, learning rate, two slots for each.
    assert len(files) == 11
    states = [
        [np.load(tmp_path / name / f) for f in files]
        for name in ("uninterrupted", "resumed")
    ]
    assert max_diff(*states) <= 1e-6
    assert not (tmp_path / "backup").exists()


# -- MultiWorkerMirroredStrategy --------------------------------------------------


def test_multi_worker_fit_matches_one_process_and_only_the_chief_writes(tmp_path):
    code = (
        """
import json, os, sys
import tensorflow as tf
strategy = tf.distribute.MultiWorkerMirroredStrategy()  # before any other op
"""
        + SETUP
        + """
folder = sys.argv[1]
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
mine = f"{folder}/worker-{index}"
os.makedirs(mine, exist_ok=True)
model = build(keras_lookup.optimizers.LazySGD(0.5), strategy=strategy)
global_batches = tf.data.Dataset.from_tensor_slices((X, Y)).batch(B)


class StopOnWorkerOne(keras.callbacks.Callback):
    # A stop asked on one worker only stops them all, at the epoch's end.
    def on_epoch_end(self, epoch, logs=None):
        if index == 1 and epoch == 1:
            self.model.stop_training = True


history = keras_lookup.distribute.fit(
    model, global_batches, epochs=3, validation_data=(XV, YV), validation_batch_size=B,
    verbose=1, callbacks=[
        keras.callbacks.CSVLogger(mine + "/log.csv"),
        keras.callbacks.ModelCheckpoint(mine + "/model.keras"),
        StopOnWorkerOne(),
    ],
)
np.savez(mine + "/weights.npz", *model.get_weights())
report(history=history.history)
sys.stdout.flush()
os._exit(0)  # the collective runtime's shutdown takes seconds
"""
    )
    outputs = run_workers(code, 2, tmp_path)
    histories = [reports(out)[0]["history"] for out in outputs]
    assert histories[0] == histories[1]
    assert len(histories[0]["loss"]) == 2  # of 3 epochs: stopped on worker 1
    weights = []
    for index in (0, 1):
        with np.load(tmp_path / f"worker-{index}" / "weights.npz") as f:
            weights.append([f[k] for k in sorted(f.files, key=lambda k: int(k[4:]))])
    assert max_diff(*weights) <= 1e-6
    # Only the chief wrote the log, the model file and the progress bar.
    assert sorted(os.listdir(tmp_path / "worker-0")) == [
        "log.csv",
        "model.keras",
        "weights.npz",
    ]
    assert sorted(os.listdir(tmp_path / "worker-1")) == ["weights.npz"]
    assert "24/24" in outputs[0] and "24/24" not in outputs[1]
    # One process on the same global batches.
    s = exec_setup()
    model = s["build"](keras_lookup.optimizers.LazySGD(0.5))
    expected = model.fit(
        tf.data.Dataset.from_tensor_slices((s["X"], s["Y"])).batch(16),
        epochs=2,
        validation_data=(s["XV"], s["YV"]),
        validation_batch_size=16,
        verbose=0,
    )
    assert max_diff(weights[0], model.get_weights()) <= 1e-4
    for key, values in expected.history.items():
        np.testing.assert_allclose(histories[0][key], values, rtol=1e-4, err_msg=key)
