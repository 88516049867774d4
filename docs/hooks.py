"""MkDocs hook: serve files that live outside docs/ from where they are.

- benchmarks/results/ becomes the site's results/ folder: the plots and
  tables stay where the benchmarks write them and the site reads them from
  there at every build (plots, tables and the JSON they came from), so a
  page can never show a stale copy, and a page that links a file that no
  longer exists fails `mkdocs build --strict`.
- CHANGELOG.md at the repository root becomes the page changelog.md.
"""

import pathlib

from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SUFFIXES = (".png", ".md", ".json")


def on_files(files, config):
    for path in sorted(RESULTS.rglob("*")):
        if path.suffix in SUFFIXES:
            uri = "results/" + path.relative_to(RESULTS).as_posix()
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    files.append(
        File.generated(config, "changelog.md", abs_src_path=str(ROOT / "CHANGELOG.md"))
    )
    return files
