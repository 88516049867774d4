"""Griffe extension: make the docstrings read in the reference as in `help()`.

- The optimizers' docstrings hold a `{{base_args}}` placeholder that
  `keras_lookup/optimizers/lazy.py` fills with `BASE_ARGS_DOC` at import time
  (as Keras's optimizers do); griffe reads the source without importing it, so
  the same text is put in here.
- The docstrings follow Keras's layout, where the doctest runs under `Example:`
  are not indented; as plain Markdown their `>>>` prompts would render as nested
  quotes. Each run (prompts, continuation lines and expected output, up to the
  next blank line) is wrapped in a ```pycon fence. The docstrings themselves,
  which the tests run as doctests, are unchanged.
"""

import ast

import griffe

FENCE = "```"
PLACEHOLDER = "{{base_args}}"
BASE_ARGS = "optimizers.lazy.BASE_ARGS_DOC"


def fence_doctests(text):
    out, inside, indent = [], False, ""
    for line in text.split("\n"):
        stripped = line.lstrip()
        if not inside and stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            out.append(indent + FENCE + "pycon")
            inside = True
        elif inside and not stripped:
            out.append(indent + FENCE)
            inside = False
        out.append(line)
    if inside:
        out.append(indent + FENCE)
    return "\n".join(out)


def fill_base_args(text, base_args):
    for line in text.split("\n"):
        if line.strip() == PLACEHOLDER:
            indent = line[: len(line) - len(line.lstrip())]
            # BASE_ARGS_DOC is indented for the raw docstring (8 spaces for
            # an argument, 12 for its continuation), the text here for the
            # cleaned one (4 less).
            first, *rest = base_args.split("\n")
            rest = [r[4:] if r.startswith("    ") else r for r in rest]
            filled = "\n".join([indent + first, *rest])
            text = text.replace(line, filled)
    return text


def _objects(obj):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)


class DoctestFences(griffe.Extension):
    def on_package(self, *, pkg, **kwargs):
        base_args = ast.literal_eval(str(pkg[BASE_ARGS].value))
        for obj in _objects(pkg):
            docstring = obj.docstring
            if docstring is None:
                continue
            text = docstring.value
            if PLACEHOLDER in text:
                text = fill_base_args(text, base_args)
            docstring.value = fence_doctests(text)
