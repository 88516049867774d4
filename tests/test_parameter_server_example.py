"""examples/parameter_server.py on real processes: ps and worker tasks on
127.0.0.1, the coordinator killed after a checkpoint and resumed, and the
result equal to the single-process reference (one worker: steps in order);
a worker killed and started again; a ps task killed, the run ended with a
message, and resumed."""

import json
import os
import re
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "examples", "parameter_server.py")
SETTINGS = ("--quick", "--steps", "40", "--checkpoint-every", "20")


def run(*args, hook=None, timeout=240):
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p
    )
    env.pop("PARAMETER_SERVER_TEST_KILL_AFTER_STEP", None)
    env.pop("PARAMETER_SERVER_TEST_KILL_TASK", None)
    env.update(hook or {})
    return subprocess.run(
        [sys.executable, EXAMPLE, *SETTINGS, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def saved(folder):
    with open(os.path.join(folder, "manifest.json")) as f:
        entries = json.load(f)["variables"]
    return {e["path"]: np.load(os.path.join(folder, e["file"])) for e in entries}


def test_killed_coordinator_resumes_and_ends_as_one_process(tmp_path):
    cluster = ("--local-cluster", "1,2", "--checkpoint-dir", tmp_path / "ckpt")
    killed = run(
        *cluster,
        "--out",
        tmp_path / "a",
        hook={"PARAMETER_SERVER_TEST_KILL_AFTER_STEP": "20"},
    )
    assert killed.returncode == -9, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert "killing the coordinator after step 20" in killed.stdout
    assert "2 part(s)" in killed.stdout
    resumed = run(*cluster, "--out", tmp_path / "a")
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-4000:]
    assert "(epoch 1, batch 20, step 20)" in resumed.stdout
    assert "24/24" not in resumed.stdout and "40/40" in resumed.stdout
    reference = run("--single-process", "--out", tmp_path / "b")
    assert reference.returncode == 0, reference.stderr[-4000:]
    a, b = saved(tmp_path / "a"), saved(tmp_path / "b")
    assert list(a) == list(b)
    for path in a:
        np.testing.assert_allclose(a[path], b[path], rtol=1e-5, atol=1e-5, err_msg=path)
    with open(tmp_path / "a" / "summary.json") as f:
        summary = json.load(f)
    assert summary["resumed_from"] == 20
    assert [s["rows"] for s in summary["shards"]] == [2**17, 2**17]
    assert {"coordinator", "ps 0", "ps 1", "worker 0"} <= set(summary["peak_rss_mib"])


def summary_of(folder):
    with open(os.path.join(folder, "summary.json")) as f:
        return json.load(f)


def test_killed_worker_is_started_again_and_the_run_completes(tmp_path):
    # One worker: the steps scheduled after the kill (11..40) can only run on
    # the worker started again, once the coordinator has made its dataset
    # iterator again there.
    done = run(
        "--local-cluster",
        "1,1",
        "--out",
        tmp_path / "out",
        hook={"PARAMETER_SERVER_TEST_KILL_TASK": "worker 0@10"},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    pid = re.search(r"test hook: killing worker 0 \(pid (\d+)\) at step 10", output)
    assert pid, output[-4000:]
    pid = pid[1]
    assert f"worker 0 (pid {pid}) was killed by SIGKILL; starting it again." in (
        done.stderr
    )
    serving = re.findall(r"\[worker 0\] worker 0 serving \(pid (\d+)\)", done.stdout)
    assert len(serving) == 2 and serving[0] == pid != serving[1], serving
    # ClusterCoordinator logs this when it takes a failed step for a lost
    # worker and puts the step back in its queue (cluster_coordinator.py,
    # WorkerPreemptionHandler.wait_on_failure and Worker._on_closure_failure).
    assert "Worker /job:worker/replica:0/task:0 failed with UnavailableError" in (
        done.stderr
    )
    assert "40/40" in done.stdout and "Traceback" not in output
    summary = summary_of(tmp_path / "out")
    assert (summary["steps"], summary["resumed_from"]) == (40, 0)
    # Trained, not just ended: well above the majority class (~43%).
    assert summary["accuracy"] > summary["baseline"] + 0.25, summary["accuracy"]


def test_killed_ps_task_ends_the_run_and_the_same_command_resumes(tmp_path):
    command = (
        "--local-cluster",
        "1,1",
        "--checkpoint-dir",
        tmp_path / "ckpt",
        "--out",
        tmp_path / "out",
    )
    # Backed up at step 20 (--checkpoint-every 20), killed at 25.
    killed = run(*command, hook={"PARAMETER_SERVER_TEST_KILL_TASK": "ps 0@25"})
    output = killed.stdout + killed.stderr
    assert killed.returncode == 1, output[-4000:]
    pid = re.search(r"test hook: killing ps 0 \(pid (\d+)\) at step 25", output)
    assert pid, output[-4000:]
    # The last thing on the screen is what happened and what to do, not a
    # traceback (TensorFlow's own error logs come before it).
    assert killed.stderr.rstrip().splitlines()[-1] == (
        f"error: ps 0 (pid {pid[1]}) was killed by SIGKILL: a parameter server "
        "is gone, and the run ends. Run the same command again to resume from "
        "the last backup."
    ), killed.stderr[-3000:]
    assert killed.stderr.count("error: ps 0") == 1
    assert "Traceback" not in output
    assert not os.path.exists(tmp_path / "out" / "summary.json")
    resumed = run(*command)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-4000:]
    assert "(epoch 1, batch 20, step 20)" in resumed.stdout
    assert "40/40" in resumed.stdout and "Traceback" not in output
    summary = summary_of(tmp_path / "out")
    assert (summary["steps"], summary["resumed_from"]) == (40, 20)
    assert summary["accuracy"] > summary["baseline"] + 0.25, summary["accuracy"]


def test_without_tf_config_it_runs_a_small_local_cluster(monkeypatch, capsys):
    # Tried as a new user would (no TF_CONFIG, no choice): a local cluster.
    sys.path.insert(0, os.path.join(REPO, "examples"))
    import parameter_server

    monkeypatch.delenv("TF_CONFIG", raising=False)
    started = []
    monkeypatch.setattr(
        parameter_server, "local_cluster", lambda args: started.append(args)
    )
    parameter_server.main(["--quick"])
    (args,) = started
    assert (args.workers, args.ps) == (2, 2)
    assert "running a local cluster of 2 workers and 2 ps tasks" in (
        capsys.readouterr().out
    )
