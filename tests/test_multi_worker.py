"""examples/multi_worker.py: workers agree, and a killed run resumes exactly.

Every run is the example itself in subprocesses (`--local-workers N` starts N
worker processes on 127.0.0.1), with a timeout. The kills are real SIGKILLs,
made deterministic by the example's test hooks: the chief worker kills itself
after a given step, or in the middle of writing a given backup
(`keras_lookup.distribute.BackupAndRestore`).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "examples", "multi_worker.py")
# 30 steps, checkpoints at steps 10, 20 and 30.
SETTINGS = ("--quick", "--steps", "30", "--checkpoint-every", "10")
SLOTS = (
    "lazy_adam/iteration",
    "lazy_adam/embedding_embeddings_momentum",
    "lazy_adam/embedding_embeddings_velocity",
)


def run(*args, hook=None, timeout=180):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p
    )
    for name in ("MULTI_WORKER_TEST_KILL_AFTER_STEP", "MULTI_WORKER_TEST_KILL_IN_SAVE"):
        env.pop(name, None)
    env.update(hook or {})
    return subprocess.run(
        [sys.executable, EXAMPLE, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_ok(result):
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Summary:" in result.stdout, output[-4000:]


def assert_killed(result):
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]
    assert "worker 0" in result.stderr and "SIGKILL" in result.stderr, output[-4000:]


def weights(folder, worker):
    with np.load(os.path.join(folder, f"worker-{worker}.npz")) as data:
        return dict(data)


def max_abs_diff(a, b):
    assert sorted(a) == sorted(b)
    return max(float(np.max(np.abs(a[k] - b[k]), initial=0.0)) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Final weights of an uninterrupted 2-worker run with checkpoints."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    result = run(
        "--local-workers",
        2,
        *SETTINGS,
        "--checkpoint-dir",
        folder / "ckpt",
        "--out",
        folder / "out",
    )
    assert_ok(result)
    assert "resumed from" not in result.stdout
    # A run that finished leaves no backup behind.
    assert not (folder / "ckpt").exists()
    out = folder / "out"
    first = weights(out, 0)
    # The run trained: 30 updates, and the table's moments moved.
    assert int(first["lazy_adam/iteration"]) == 30
    for key in SLOTS[1:]:
        assert np.count_nonzero(np.any(first[key] != 0, axis=1)) > 100, key
    return out


def test_help():
    result = run("--help", timeout=60)
    assert result.returncode == 0, result.stderr
    for flag in ("--local-workers", "--quick", "--out", "--checkpoint-dir"):
        assert flag in result.stdout


def test_two_workers_agree_and_match_one_worker(uninterrupted, tmp_path):
    two = [weights(uninterrupted, 0), weights(uninterrupted, 1)]
    assert set(SLOTS) <= set(two[0])
    assert max_abs_diff(two[0], two[1]) <= 1e-6
    result = run("--single-process", *SETTINGS, "--out", tmp_path)
    assert_ok(result)
    one = weights(tmp_path, 0)
    assert max_abs_diff(two[0], one) <= 1e-5


def test_killed_while_saving_and_between_checkpoints_resumes_exactly(
    uninterrupted, tmp_path
):
    folder = tmp_path / "ckpt"
    command = (
        "--local-workers",
        2,
        *SETTINGS,
        "--checkpoint-dir",
        folder,
        "--out",
        tmp_path / "out",
    )
    # 1. Killed in the middle of saving the checkpoint of step 20.
    killed = run(*command, hook={"MULTI_WORKER_TEST_KILL_IN_SAVE": "20"})
    assert_killed(killed)
    assert "killed while saving ckpt-20" in killed.stdout
    # The torn checkpoint is on disk, but the state file still names the
    # previous, complete one.
    full = (folder / "ckpt-10.data-00000-of-00001").stat().st_size
    assert (folder / "ckpt-20.data-00000-of-00001").stat().st_size <= full // 2
    state = (folder / "checkpoint").read_text()
    assert 'model_checkpoint_path: "ckpt-10"' in state, state
    # 2. Started again, it resumes from step 10, saves step 20, and is killed
    # after step 25, between two checkpoints.
    killed = run(*command, hook={"MULTI_WORKER_TEST_KILL_AFTER_STEP": "25"})
    assert_killed(killed)
    assert "(epoch 1, batch 10, step 10)" in killed.stdout
    assert "killed after step 25" in killed.stdout
    # 3. Other settings refuse to resume from that folder (before TensorFlow
    # starts: a second or two).
    refused = run("--single-process", *SETTINGS, "--dim", 8, "--checkpoint-dir", folder)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "dim: 16 there, 8 now" in refused.stderr
    # 4. Started again, it resumes from step 20 and ends where the
    # uninterrupted run ends: weights and optimizer slots (moments,
    # iteration) alike, on both workers.
    resumed = run(*command)
    assert_ok(resumed)
    assert "(epoch 1, batch 20, step 20)" in resumed.stdout
    for worker in (0, 1):
        final = weights(tmp_path / "out", worker)
        assert max_abs_diff(final, weights(uninterrupted, worker)) <= 1e-6


def test_a_failing_worker_is_reported(tmp_path):
    # 33 examples cannot be split over 2 workers: both exit with status 1
    # (before TensorFlow starts) and the launcher says which one failed.
    # Without TF_CONFIG or --local-workers, 2 local workers by default.
    result = run("--quick", "--batch-size", 33, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "running 2 local workers on 127.0.0.1" in result.stdout
    assert "does not split evenly over 2 workers" in result.stdout
    assert "exited with status 1" in result.stderr
