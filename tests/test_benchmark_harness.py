"""benchmarks/_harness.py: children, their results, the RSS watchdog, timing."""

import pathlib
import sys
import textwrap

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import _harness  # noqa: E402


def _script(tmp_path, body):
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_child_result_is_its_last_result_line(tmp_path):
    script = _script(
        tmp_path,
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        import _harness
        print("noise")
        _harness.emit({"n": 1}, tag="BUILT ")
        _harness.emit({"n": 2})
        _harness.emit({"n": int(sys.argv[2])})
        """,
    )
    benchmarks = pathlib.Path(_harness.__file__).parent
    child = _harness.run_child(script, [benchmarks, 3])
    assert child.returncode == 0, child.stderr
    assert child.record() == {"n": 3}
    assert child.record("BUILT ") == {"n": 1}
    assert child.record("MISSING ") is None
    assert child.wall_s > 0


def test_failed_child_exits_the_parent_with_its_stderr(tmp_path):
    script = _script(tmp_path, "raise SystemExit('bad configuration 42')\n")
    with pytest.raises(SystemExit) as raised:
        _harness.run_or_exit(script, [], "ours V=1,000")
    assert "ours V=1,000 failed (exit 1)" in str(raised.value)
    assert "bad configuration 42" in str(raised.value)


def test_watchdog_kills_a_child_past_the_memory_limit(tmp_path):
    # Touches 1 GiB, 64 MiB at a time; the limit is 0.25 GiB.
    script = _script(
        tmp_path,
        """
        import time
        blocks = []
        for _ in range(16):
            blocks.append(bytearray(64 * 2**20))
            time.sleep(0.05)
        print("RESULT {}")
        """,
    )
    child = _harness.run_child(script, [], memory_limit_gib=0.25)
    assert child.returncode != 0
    assert child.record() is None
    assert 0.25 < child.peak_gib < 1.0


def test_time_steps_interleaves_runs_and_keeps_their_last_results():
    calls = []

    def run(name):
        def step(i):
            calls.append((name, i))
            return i

        return step

    times, results = _harness.time_steps([run("a"), run("b")], steps=3, warmup=2)
    assert calls == [
        ("a", 0), ("b", 0), ("a", 1), ("b", 1),  # warm-up
        ("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2),
    ]  # fmt: skip
    assert [len(t) for t in times] == [3, 3]
    assert results == [2, 2]
