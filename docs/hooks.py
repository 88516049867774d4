"""MkDocs hook: serve files that live outside docs/ from where they are.

- benchmarks/results/ becomes the site's results/ folder: the plots and
  tables stay where the benchmarks write them and the site reads them from
  there at every build (plots, tables and the JSON they came from), so a
  page can never show a stale copy, and a page that links a file that no
  longer exists fails `mkdocs build --strict`.
- CHANGELOG.md at the repository root becomes the page changelog.md, and
  saved_models/README.md (the record of the examples' full runs) the page
  saved_models.md.
- A guide shows a table of results as the file that holds it, not a copy:
  a line `<!-- results-table: scale.md -->` (a path under
  benchmarks/results/, and `#2` for the file's second table) is replaced by
  that table at build time. A missing file or table fails the build.
"""

import pathlib
import posixpath
import re

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SUFFIXES = (".png", ".md", ".json", ".jsonl")


def on_files(files, config):
    for path in sorted(RESULTS.rglob("*")):
        if path.suffix in SUFFIXES:
            uri = "results/" + path.relative_to(RESULTS).as_posix()
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    files.append(
        File.generated(config, "changelog.md", abs_src_path=str(ROOT / "CHANGELOG.md"))
    )
    # The record of the examples' full runs, cited by the examples guide.
    files.append(
        File.generated(
            config,
            "saved_models.md",
            abs_src_path=str(ROOT / "saved_models" / "README.md"),
        )
    )
    return files


INCLUDE = re.compile(r"^<!-- results-table: (\S+?)(?:#(\d+))? -->$", re.M)


def tables(text):
    """The Markdown tables of `text`, each as one string."""
    found, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append("\n".join(current))
            current = []
    return found


def results_table(name, index=1):
    path = RESULTS / name
    if not path.is_file():
        raise PluginError(f"results-table: benchmarks/results/{name} does not exist")
    found = tables(path.read_text())
    if len(found) < index:
        raise PluginError(f"results-table: {name} has no table #{index}")
    return found[index - 1]


LINK = re.compile(r"\]\((?![a-z]+:|#|/)([^)\s]+)\)")


def relinked(table, name, page_uri):
    """`table` from results/`name`, its relative links made relative to the
    page that includes it."""
    folder = posixpath.dirname("results/" + name)
    here = posixpath.dirname(page_uri)

    def move(match):
        target = posixpath.normpath(posixpath.join(folder, match[1]))
        return f"]({posixpath.relpath(target, here or '.')})"

    return LINK.sub(move, table)


def on_page_markdown(markdown, page, config, files):
    return INCLUDE.sub(
        lambda m: relinked(
            results_table(m[1], int(m[2] or 1)), m[1], page.file.src_uri
        ),
        markdown,
    )
