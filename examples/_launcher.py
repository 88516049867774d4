"""Local processes for the distributed examples: one launcher, not two.

`examples/multi_worker.py` (`--local-workers N`) and
`examples/parameter_server.py` (`--local-cluster W,P`) start their cluster's
tasks as processes on 127.0.0.1. This module picks free ports, starts each
child with its role in its name, relays its output line by line prefixed
with that role, restarts a child that dies when asked to (as a cluster manager
restarts a lost worker), and kills every child by its PID at the end.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_ports(count):
    """`count` distinct free TCP ports on 127.0.0.1.

    The sockets are held open until all are picked, so the ports differ; they
    are free again (for the children to bind) once this returns. Another
    program could take one in between; the children then fail to start, and
    the launcher reports it.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def loopback_cluster(num_workers, num_ps):
    """A cluster spec of `num_workers` workers and `num_ps` ps tasks on free
    ports of 127.0.0.1, as `TF_CONFIG`'s `"cluster"` entry wants it."""
    ports = free_ports(num_workers + num_ps)
    return {
        "worker": [f"127.0.0.1:{p}" for p in ports[:num_workers]],
        "ps": [f"127.0.0.1:{p}" for p in ports[num_workers:]],
    }


def start_ps_cluster_tasks(launcher, script, cluster, env=None, restart_workers=False):
    """Starts `script --task-type T --task-index I` for every worker and ps task
    of `cluster`, each with its `TF_CONFIG` (ps tasks first, as workers connect
    to them). `env` is added to each child's environment."""
    for task_type in ("ps", "worker"):
        for index in range(len(cluster[task_type])):
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
                    **(env or {}),
                },
                restart=restart_workers and task_type == "worker",
            )


def _die_with_parent():
    # Linux: the child gets SIGKILL if the launcher dies (killed by a test's
    # timeout, say), instead of waiting forever for its peers. Elsewhere the
    # launcher's own cleanup is all there is.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def describe_exit(code):
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class Child:
    """One task's process: `name` (e.g. "worker 0"), its output `lines`."""

    def __init__(self, name, command, env, restart, hide):
        self.name = name
        self.command = command
        self.env = env
        self.restart = restart
        self.hide = hide
        self.lines = []
        self.restarts = 0
        self.process = None
        self._relay = None

    @property
    def pid(self):
        return self.process.pid

    def start(self):
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        self._relay = threading.Thread(target=self._relay_lines, daemon=True)
        self._relay.start()

    def _relay_lines(self):
        for line in self.process.stdout:
            self.lines.append(line)
            if self.hide is not None and self.hide(line):
                continue
            sys.stdout.write(f"[{self.name}] {line}")
            sys.stdout.flush()

    def poll(self):
        return self.process.poll()


class Launcher:
    """Starts children; `check()` restarts or reports dead ones; `stop()`
    (also on leaving a `with` block) kills the rest by PID."""

    def __init__(self):
        self.children = []
        self._lock = threading.Lock()

    def start(self, name, command, env=None, restart=False, hide=None):
        """Starts `command` as the child `name`; returns the `Child`.

        `env` is added to this process's environment (a `None` value removes
        the variable); `restart=True` starts
        the same command again whenever it dies; `hide(line)` says which of
        its output lines are not relayed (they are kept in `Child.lines`).
        """
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env = {key: value for key, value in env.items() if value is not None}
        child = Child(name, command, env, restart, hide)
        child.start()
        with self._lock:
            self.children.append(child)
        return child

    def check(self):
        """Restarts dead restartable children; returns a message about the
        first other child that failed (exit status other than 0), or None."""
        with self._lock:
            for child in self.children:
                code = child.poll()
                if code is None or code == 0 and not child.restart:
                    continue
                if child.restart:
                    print(
                        f"{child.name} (pid {child.pid}) {describe_exit(code)}; "
                        "starting it again.",
                        file=sys.stderr,
                    )
                    child.restarts += 1
                    child.start()
                    continue
                return f"{child.name} (pid {child.pid}) {describe_exit(code)}"
        return None

    def wait(self, deadline):
        """None once every child exited with 0, else what went wrong."""
        while True:
            failure = self.check()
            if failure is not None:
                return failure
            codes = [child.poll() for child in self.children]
            if all(code == 0 for code in codes):
                return None
            if time.perf_counter() > deadline:
                running = [
                    c.name
                    for c, code in zip(self.children, codes, strict=True)
                    if code is None
                ]
                return (
                    f"timed out: {', '.join(running)} still running after "
                    "--timeout seconds; raise --timeout for a bigger run"
                )
            time.sleep(0.1)

    def stop(self):
        # Whatever happened, no child outlives the launcher: each is killed by
        # its PID (a task left alone would wait for its peers forever).
        with self._lock:
            for child in self.children:
                if child.poll() is None:
                    os.kill(child.pid, signal.SIGKILL)
                child.process.wait()
            for child in self.children:
                child._relay.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
