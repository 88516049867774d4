"""What the benchmark scripts share: one process per configuration, an RSS
watchdog, interleaved step timing, and plots that need matplotlib only if it
is there.

Each script runs itself again as a child for every configuration (so that a
configuration's peak RSS is its own, and one that does not fit cannot take the
others with it); the child prints one `RESULT {json}` line, which the parent
reads back. The lookup benchmark (`python -m keras_lookup.bench`) lives in the
package and times with `keras_lookup._timing.time_interleaved` (fastest call
per round); the training-step benchmarks here report the median of every step
instead, so they time with `time_steps` below.
"""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

RESULT = "RESULT "
EXTRA_FOR_PLOTS = "examples"


def child_env():
    """The environment of a child: TensorFlow quiet, Keras on TensorFlow."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}


def emit(record, tag=RESULT):
    """Prints `record` as the child's result line (or another tagged line)."""
    print(tag + json.dumps(record), flush=True)


def status_gib(field, pid="self"):
    """`VmRSS`, `VmHWM`, `VmPeak`, ... of a process, in GiB (NaN if unknown)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def watch_rss(process, limit_gib):
    """Waits for `process`, killing it once its RSS exceeds `limit_gib`.

    An address-space limit (`RLIMIT_AS`) does not work here: TensorFlow's
    oneDNN allocator reserves regions in powers of two, so an 11.9 GiB table
    reserves 16 GiB of address space and fails under a 16.5 GiB limit while
    using 12. The RSS is polled every 10 ms instead; at the few GB/s a process
    can touch memory, it overshoots the limit by well under 0.1 GiB.
    Returns the highest RSS seen, in GiB.
    """
    peak = 0.0
    status = f"/proc/{process.pid}/status"
    while process.poll() is None:
        try:
            with open(status) as f:
                rss = next(int(x.split()[1]) for x in f if x.startswith("VmRSS:"))
        except (OSError, StopIteration):
            rss = 0
        peak = max(peak, rss / 2**20)
        if peak > limit_gib:
            process.kill()
            process.wait()
            break
        time.sleep(0.01)
    return peak


@dataclasses.dataclass
class Child:
    """A finished child: its exit code, output, peak RSS seen and wall time."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    peak_gib: float = float("nan")

    def lines(self, tag):
        lines = self.stdout.splitlines()
        return [json.loads(x[len(tag) :]) for x in lines if x.startswith(tag)]

    def record(self, tag=RESULT):
        """The last `tag` line's JSON, or None if the child printed none."""
        found = self.lines(tag)
        return found[-1] if found else None

    def failure(self, label):
        return f"{label} failed (exit {self.returncode}):\n{self.stderr[-3000:]}"


def run_child(script, args, memory_limit_gib=None):
    """Runs `python script *args` and waits for it.

    With `memory_limit_gib`, the child is watched and killed once its RSS
    passes the limit (`watch_rss`); without, the parent just waits, so it
    takes no CPU from the child being timed.
    """
    command = [sys.executable, os.path.abspath(script), *map(str, args)]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(
            command, stdout=out, stderr=err, text=True, env=child_env()
        )
        if memory_limit_gib is None:
            process.wait()
            peak = float("nan")
        else:
            peak = watch_rss(process, memory_limit_gib)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    return Child(process.returncode, stdout, stderr, time.perf_counter() - start, peak)


def run_or_exit(script, args, label):
    """`run_child`, then its result record; exits naming `label` if it failed."""
    child = run_child(script, args)
    record = child.record()
    if child.returncode != 0 or record is None:
        sys.exit(child.failure(label))
    record["wall_s"] = child.wall_s
    return record


def latest_records(path, key):
    """The JSON records of a results log, one a line: the latest one for each
    `key(record)` (a configuration run again replaces its older record)."""
    latest = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    latest[key(record)] = record
    return latest


def time_steps(runs, steps, warmup):
    """Times `steps` calls of each run, interleaved; returns (times, results).

    `runs` is a list of callables taking the step index. Each is called
    `warmup` times untimed, then `steps` times, the runs alternating step by
    step so that they share the machine's load. Returns a list of step times
    in seconds for each run, and each run's last return value.
    """
    for i in range(warmup):
        for run in runs:
            run(i)
    times = [[] for _ in runs]
    results = [None] * len(runs)
    for i in range(steps):
        for j, run in enumerate(runs):
            start = time.perf_counter()
            results[j] = run(i)
            times[j].append(time.perf_counter() - start)
    return times, results


def write_plot(plot, *args):
    """Calls `plot(*args)`; without matplotlib, says which extra brings it.

    Returns True if the plot was written.
    """
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        print(
            "No plot: matplotlib is not installed. The tables are written; for "
            f'the plots too, pip install "keras_lookup[{EXTRA_FOR_PLOTS}]" (or '
            "pip install matplotlib) and run this again."
        )
        return False
    plot(*args)
    return True
