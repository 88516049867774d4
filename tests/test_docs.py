"""The README and the documentation site: their code runs, the site builds.

Every ```python block of README.md and of every page under docs/ runs as
written (from the repository root, as a reader's shell would be), the API
reference names every public name, and `mkdocs build --strict` passes.
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest
from helpers import run_python, skip_if_written_by_newer_keras

import keras_lookup
from keras_lookup import distribute, optimizers

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks():
    for page in PAGES:
        name = page.relative_to(ROOT).as_posix()
        for index, code in enumerate(BLOCK.findall(page.read_text())):
            yield pytest.param(name, code, id=f"{name}-{index}")


def test_readme_is_short_and_runs_code():
    lines = README.read_text().splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines; keep it <= 160"
    assert BLOCK.findall(README.read_text()), "README.md has no ```python block"


def test_every_guide_opens_with_code():
    for page in sorted((DOCS / "guides").glob("*.md")):
        text = page.read_text()
        if "Placeholder" in text:
            continue
        assert "```" in text.split("\n## ")[0], f"{page.name} opens without code"


@pytest.mark.parametrize("name, code", list(_blocks()))
def test_code_block_runs(name, code, monkeypatch):
    for model in re.findall(r"\"(saved_models/[^\"]+)\.keras\"", code):
        skip_if_written_by_newer_keras(str(ROOT / model))
    if "tf.distribute.Server(" in code:
        # TensorFlow joins a process to one cluster only: a block that starts
        # one runs in a process of its own.
        run_python(code, ROOT)
        return
    monkeypatch.chdir(ROOT)
    exec(compile(code, name, "exec"), {"__name__": "__docs__"})


def test_reference_lists_every_public_name():
    reference = "\n".join(p.read_text() for p in sorted((DOCS / "api").glob("*.md")))
    packages = ("optimizers", "distribute")
    names = [f"keras_lookup.{n}" for n in keras_lookup.__all__ if n not in packages]
    names += [f"keras_lookup.optimizers.{n}" for n in optimizers.__all__]
    names += [f"keras_lookup.distribute.{n}" for n in distribute.__all__]
    names += [f"keras_lookup.{n}" for n in packages]
    missing = [n for n in names if f"::: {n}\n" not in reference]
    assert not missing, f"docs/api/*.md has no `::: NAME` entry for {missing}"


@pytest.mark.skipif(
    not all(
        importlib.util.find_spec(m) for m in ("mkdocs", "material", "mkdocstrings")
    ),
    reason="mkdocs, mkdocs-material or mkdocstrings is not installed "
    '(pip install -e ".[docs]")',
)
def test_mkdocs_build_strict(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("index.html", "api/layers/index.html", "changelog/index.html"):
        assert (tmp_path / page).exists(), page
    assert (tmp_path / "results" / "train_step.png").exists()
