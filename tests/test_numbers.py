"""Every measured figure in the README and the guides is in the file it cites.

The rule: a headline bullet of the README ("## Headline measurements") links
at least one file under `benchmarks/results/` (or `saved_models/README.md`,
the record of the examples' full runs), and every number in it (outside
code spans and link targets) is in one of the files it links, as written there
or rounded to the precision the bullet gives (`436 ms` matches `436.4`, `1M`
matches `1,000,000`, `2²⁰` matches `1,048,576`). In the guides the same holds
for the figures with a unit (ms, s, GiB, MiB, ×, %) of every paragraph, list
item or table that links a results file (a table also by the block before it,
a list item by the paragraph that introduces its list, and a table the site
includes with `<!-- results-table: FILE -->` cites FILE). So a new headline or
a new page
is checked as soon as it cites its file, and a figure copied from another run
fails here instead of drifting.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))
RESULTS = ROOT / "benchmarks" / "results"

SUPERSCRIPT = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
# A number: digits with thousands commas, decimals, an optional k/M suffix or
# a superscript exponent (2²⁰).
NUMBER = re.compile(
    r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:([kM])(?![a-zA-Z])|([⁰¹²³⁴⁵⁶⁷⁸⁹]+))?"
)
# A "×" or "x" between two numbers is a shape (4,096 × 64), not a ratio.
UNIT = re.compile(r"\s?(ms|s|GiB|MiB|GB|%|[×x](?!\s?\d))(?![a-zA-Z])")
# Links to results files, in the README's form (benchmarks/results/...) and in
# the guides' (../results/...); saved_models/README.md records the examples'
# full runs (served to the guides as ../saved_models.md).
LINK = re.compile(
    r"\]\(((?:\.\./)*(?:benchmarks/)?results/[^)#\s]+|saved_models/README\.md"
    r"|(?:\.\./)*saved_models\.md)"
)

INCLUDED = re.compile(r"<!-- results-table: (\S+?)(?:#\d+)? -->")


def _plain(text):
    """The text a reader reads: no code spans, no link targets."""
    text = re.sub(r"`[^`]*`", " ", text)
    return re.sub(r"\]\([^)]*\)", "]", text)


def figures(text, with_unit=False):
    """`(as written, value, decimals)` for each number in `text`."""
    found = []
    for match in NUMBER.finditer(_plain(text)):
        whole, decimals, suffix, exponent = match.groups()
        if with_unit and not UNIT.match(text_after(match)):
            continue
        value = float(whole.replace(",", "") + (decimals or ""))
        places = len(decimals) - 1 if decimals else 0
        if suffix:
            value *= {"k": 1e3, "M": 1e6}[suffix]
            places = 0 if not decimals else places
        if exponent:
            value **= int(exponent.translate(SUPERSCRIPT))
        found.append((match.group(0), value, places))
    return found


def text_after(match):
    return match.string[match.end() : match.end() + 5]


def source_values(paths):
    values = set()
    for path in paths:
        for _, value, _ in figures(path.read_text()):
            values.add(value)
    return values


def matches(value, places, values, suffixed):
    for source in values:
        if abs(round(source, places) - value) < 10 ** (-places) / 2 + 1e-9:
            return True
        if suffixed and source == value:
            return True
    return False


def missing(text, paths, with_unit):
    values = source_values(paths)
    return [
        written
        for written, value, places in figures(text, with_unit)
        if not matches(value, places, values, written[-1:] in "kM")
    ]


def readme_headlines():
    text = README.read_text()
    section = text.split("## Headline measurements", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- (.*?)(?=^- |^\s*$|\Z)", section, re.S | re.M)


def _resolve(page, target):
    if target.startswith(("benchmarks/", "saved_models/")):
        return ROOT / target
    if target.endswith("saved_models.md"):
        # The site serves saved_models/README.md as saved_models.md.
        return ROOT / "saved_models" / "README.md"
    # The site serves benchmarks/results/ as results/ (docs/hooks.py).
    return RESULTS / target.split("results/", 1)[1]


def blocks(page):
    """`(text, links)` for the paragraphs, list items and tables of a page,
    without code blocks. A table without links of its own takes those of
    the block before it ("… full table in [scale.md](…):"), and a list item
    those of the paragraph that introduces its list."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    previous = intro = []
    for block in re.split(r"\n\s*\n|\n(?=\s*- )", text):
        if not block.strip():
            continue
        item = block.lstrip().startswith("- ")
        # Plots are not sources a figure can be read from.
        links = [t for t in LINK.findall(block) if not t.endswith(".png")]
        # A table the site includes from a results file (docs/hooks.py).
        links += ["results/" + name for name in INCLUDED.findall(block)]
        if not links:
            if block.lstrip().startswith("|"):
                links = previous
            elif item:
                links = intro
        if not item:
            intro = links
        yield block, links
        previous = links


def test_every_headline_cites_a_results_file():
    bullets = readme_headlines()
    assert bullets, "README.md has no '## Headline measurements' bullets"
    for bullet in bullets:
        assert LINK.search(bullet), (
            "A README headline must link the results file its figures come from "
            f"(benchmarks/results/...):\n{bullet}"
        )


@pytest.mark.parametrize("index", range(len(readme_headlines())))
def test_readme_headline_figures_are_in_the_cited_file(index):
    bullet = readme_headlines()[index]
    paths = [_resolve(README, t) for t in LINK.findall(bullet)]
    for path in paths:
        assert path.exists(), f"README cites {path.relative_to(ROOT)}, which is absent"
    absent = missing(bullet, paths, with_unit=False)
    assert not absent, (
        f"README headline figures {absent} are not in "
        f"{[str(p.relative_to(ROOT)) for p in paths]}:\n{bullet}"
    )


@pytest.mark.parametrize("page", GUIDES, ids=lambda p: p.name)
def test_guide_figures_are_in_the_cited_file(page):
    problems = []
    for block, targets in blocks(page):
        if not targets:
            continue
        paths = [_resolve(page, t) for t in targets]
        absent = missing(block, [p for p in paths if p.exists()], with_unit=True)
        if absent:
            problems.append(f"{absent} not in {[p.name for p in paths]}: {block!r}")
    assert not problems, "\n\n".join(problems)


def test_figure_parsing():
    assert [f[1] for f in figures("6.1 ms, 1,575 ms, 1M rows, 2²⁰, `9.9`")] == [
        6.1,
        1575.0,
        1e6,
        2.0**20,
    ]
    values = {436.4, 1_000_000.0, 71.4}
    assert matches(436.0, 0, values, False) and matches(71.0, 0, values, False)
    assert not matches(437.0, 0, values, False)
    assert [f[0] for f in figures("4,096 × 64 entries, 1.5× faster", True)] == ["1.5"]
    assert matches(1e6, 0, values, True)
