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
- `Call arguments:` is Keras's section, not Google style's, so griffe reads it
  as an admonition of one run-on paragraph: its entries become a Markdown list.
- Args carry their type as a lead ("Integer. …", "String or `os.PathLike`.");
  the reference's Type column gets it as a Python type (`int`,
  `str | os.PathLike`) where the lead names one.
- "Bases:" names public classes only: a private base (`_base.LookupBase`, a
  mixin) is replaced by its own public bases, and every base is written with
  the path a user imports it from (`keras.layers.Dense`,
  `keras_lookup.optimizers.LazyAdam`).
"""

import ast
import re

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


_SECTION = re.compile(r"^(\s*)([A-Z][\w ]*):\s*$")
_ENTRY = re.compile(r"^(\w+): (.*)$")
_TYPES = {
    "integer": "int",
    "integers": "int",
    "float": "float",
    "floats": "float",
    "number": "float",
    "boolean": "bool",
    "string": "str",
    "strings": "str",
    "none": "None",
    "callable": "Callable",
    "dict": "dict",
    "tuple": "tuple",
    "list": "list",
}


# Leads that name a Keras kind of object, which Keras accepts by name too.
_KERAS_KINDS = {
    "Initializer": "str | keras.initializers.Initializer",
    "Regularizer": "str | keras.regularizers.Regularizer | None",
    "Constraint": "str | keras.constraints.Constraint | None",
    "Activation": "str | Callable | None",
}


def type_of(description):
    """A Python type from an argument's lead ("Float or `None`." -> "float |
    None"), or None where the lead names none."""
    first = description.split(" ", 1)[0]
    if first in _KERAS_KINDS:
        return _KERAS_KINDS[first]
    lead = re.split(r"\.(?:\s|$)|, | >| in \[|\(", description, maxsplit=1)[0]
    kinds, optional = [], False
    for alternative in re.split(r"\s+or\s+", lead.strip()):
        words = alternative.split()
        while words and words[0].lower() in ("a", "an", "optional", "built"):
            optional = optional or words[0].lower() == "optional"
            words = words[1:]
        if len(words) == 1 and re.fullmatch(r"`[\w.]+`", words[0]):
            kinds.append(words[0].strip("`"))
        elif words and words[0].lower() in _TYPES and len(words) <= 2:
            kinds.append(_TYPES[words[0].lower()])
        else:
            return None
    if optional:
        kinds.append("None")
    return " | ".join(dict.fromkeys(kinds)) or None


def sections(text):
    """Rewrites `Call arguments:` entries as a list and types the `Args:`."""
    out, section, indent = [], None, ""
    for line in text.split("\n"):
        match = _SECTION.match(line)
        if match:
            section, indent = match[2], match[1]
            out.append(line)
            continue
        body = line[len(indent) + 4 :] if line.startswith(indent + "    ") else None
        if line.strip() and (body is None or not line.startswith(indent)):
            section = None
        entry = _ENTRY.match(body) if body is not None else None
        if section == "Call arguments" and entry:
            line = f"{indent}    - `{entry[1]}`: {entry[2]}"
        elif section == "Call arguments" and body and body.startswith("    "):
            line = f"{indent}      {body.strip()}"
        elif section in ("Args", "Arguments") and entry:
            kind = type_of(entry[2])
            if kind:
                line = f"{indent}    {entry[1]} ({kind}): {entry[2]}"
        out.append(line)
    return "\n".join(out)


def _public_path(pkg, path):
    """The path a user imports a keras_lookup class from, or None."""
    name = path.rsplit(".", 1)[-1]
    if name in pkg.exports:
        return f"{pkg.path}.{name}"
    for module in ("optimizers",):
        if name in pkg[module].exports:
            return f"{pkg.path}.{module}.{name}"
    return None


def public_bases(pkg, cls):
    bases = []
    for base in cls.bases:
        path = getattr(base, "canonical_path", str(base))
        if not path.startswith(pkg.path + "."):
            bases.append(path)  # keras.layers.Dense, keras.optimizers.Adam
            continue
        public = _public_path(pkg, path)
        if public:
            bases.append(public)
            continue
        try:
            private = pkg.modules_collection[path]
        except KeyError:
            continue
        bases.extend(public_bases(pkg, private))  # a mixin without bases: none
    return list(dict.fromkeys(bases))


class DoctestFences(griffe.Extension):
    def on_package(self, *, pkg, **kwargs):
        base_args = ast.literal_eval(str(pkg[BASE_ARGS].value))
        for obj in _objects(pkg):
            if obj.is_class:
                obj.bases = public_bases(pkg, obj)
            docstring = obj.docstring
            if docstring is None:
                continue
            text = docstring.value
            if PLACEHOLDER in text:
                text = fill_base_args(text, base_args)
            docstring.value = sections(fence_doctests(text))
