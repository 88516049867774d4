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
from helpers import (
    run_python,
    skip_if_written_by_newer_keras,
    written_by_newer_keras,
)
from tf_warnings import tf_warnings

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


def _first_blocks():
    """The README's example and the first ```python block of every page
    (but those that load a model this Keras cannot read: see
    `test_code_block_runs`)."""
    for page in PAGES:
        found = BLOCK.findall(page.read_text())
        models = re.findall(
            r"\"(saved_models/[^\"]+)\.keras\"", found[0] if found else ""
        )
        if found and not any(written_by_newer_keras(str(ROOT / m)) for m in models):
            yield page.relative_to(ROOT).as_posix(), found[0]


def _run_printing_warnings(blocks, folder):
    """Runs `blocks` in one new process, as a user would run them saved as
    scripts (TensorFlow's full log, Python's default warning filters);
    returns its stderr, each block's part after a `### <page>` line."""
    lines = ["import runpy, sys"]
    for index, (name, code) in enumerate(blocks):
        # A file, not a string: AutoGraph reads a function's source.
        script = folder / f"block{index}.py"
        script.write_text(code)
        lines.append(f"print('### {name}', file=sys.stderr, flush=True)")
        lines.append(f"runpy.run_path({str(script)!r}, run_name='__main__')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONWARN")}
    env.update(KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="0")
    result = subprocess.run(
        [sys.executable, "-c", "\n".join(lines)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return result.stderr


def test_first_blocks_print_no_tensorflow_warning(tmp_path):
    # A model with five tables or slots of 2**20 entries or more made
    # TensorFlow warn of tf.function retracing (the README's example did).
    blocks = list(_first_blocks())
    # TensorFlow joins a process to one cluster only: such a block runs in a
    # process of its own.
    groups = [[b for b in blocks if "tf.distribute.Server(" not in b[1]]]
    groups += [[b] for b in blocks if "tf.distribute.Server(" in b[1]]
    found = []
    for group in groups:
        page = "?"
        for line in _run_printing_warnings(group, tmp_path).splitlines():
            if line.startswith("### "):
                page = line[4:]
            found += [f"{page}: {w}" for w in tf_warnings(line)]
    assert not found, "\n".join(found)


def test_pages_name_the_declared_floors_and_extras():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = dict(
        re.fullmatch(r"(tensorflow|keras)>=([0-9.]+)", r).groups()
        for r in project["dependencies"]
        if re.fullmatch(r"(tensorflow|keras)>=([0-9.]+)", r)
    )
    for page in (README, DOCS / "guides" / "getting_started.md"):
        text = page.read_text()
        for name, floor in floors.items():
            label = {"tensorflow": "TensorFlow", "keras": "Keras"}[name]
            assert f"{label} ≥ {floor}" in text, f"{page.name} lacks {label} ≥ {floor}"
    guide = (DOCS / "guides" / "getting_started.md").read_text()
    for extra, requirements in project["optional-dependencies"].items():
        row = next(
            line for line in guide.splitlines() if line.startswith(f"| `{extra}`")
        )
        for requirement in requirements:
            name = re.match(r"[\w-]+", requirement)[0]
            if name != "keras_lookup":
                assert f"`{name}`" in row, (
                    f"getting_started: `{extra}` row lacks {name}"
                )


def test_lookup_guide_is_short():
    text = (DOCS / "guides" / "lookup_vs_matmul.md").read_text()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    assert len(prose.split()) <= 1200, f"{len(prose.split())} words of prose"


def test_reference_lists_every_public_name():
    reference = "\n".join(p.read_text() for p in sorted((DOCS / "api").glob("*.md")))
    packages = ("optimizers", "distribute")
    names = [f"keras_lookup.{n}" for n in keras_lookup.__all__ if n not in packages]
    names += [f"keras_lookup.optimizers.{n}" for n in optimizers.__all__]
    names += [f"keras_lookup.distribute.{n}" for n in distribute.__all__]
    names += [f"keras_lookup.{n}" for n in packages]
    missing = [n for n in names if f"::: {n}\n" not in reference]
    assert not missing, f"docs/api/*.md has no `::: NAME` entry for {missing}"


HAS_MKDOCS = all(
    importlib.util.find_spec(m) for m in ("mkdocs", "material", "mkdocstrings")
)
NO_MKDOCS = (
    "mkdocs, mkdocs-material or mkdocstrings is not installed "
    '(pip install -e ".[docs]")'
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(folder)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


@pytest.mark.skipif(not HAS_MKDOCS, reason=NO_MKDOCS)
def test_mkdocs_build_strict(site):
    for page in ("index.html", "api/layers/index.html", "changelog/index.html"):
        assert (site / page).exists(), page
    assert (site / "results" / "train_step.png").exists()
    # Tables of results are the results files, included at build time.
    html = (site / "guides" / "large_tables" / "index.html").read_text()
    assert "results-table:" not in html and "<table>" in html


def _chromium():
    sys.path.insert(0, str(DOCS))
    try:
        import check_render
    finally:
        sys.path.remove(str(DOCS))
    return check_render, check_render.find_chromium()


@pytest.mark.skipif(not HAS_MKDOCS, reason=NO_MKDOCS)
@pytest.mark.skipif(
    _chromium()[1] is None,
    reason="Chromium is not installed (apt-get install chromium): "
    "docs/check_render.py renders the site in it",
)
def test_site_renders_in_chromium(site):
    check_render, chromium = _chromium()
    failures, _ = check_render.check(site, chromium)
    assert not failures, "\n".join(failures)
