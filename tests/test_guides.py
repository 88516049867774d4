"""The guides' Python examples run as written."""

import pathlib
import re

import pytest

GUIDES = pathlib.Path(__file__).resolve().parents[1] / "docs" / "guides"
BLOCKS = [
    pytest.param(block, id=f"{path.stem}-{i}")
    for path in sorted(GUIDES.glob("*.md"))
    for i, block in enumerate(
        re.findall(r"```python\n(.*?)```", path.read_text(), re.S)
    )
]


def test_guides_have_examples():
    assert BLOCKS


@pytest.mark.parametrize("block", BLOCKS)
def test_guide_example_runs(block):
    exec(compile(block, "guide example", "exec"), {})
