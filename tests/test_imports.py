"""The package's modules import each other without cycles.

Checked on the source, function-level imports included: a cycle hidden in a
function body still ties two modules together (0.1's `bench` and
`calibration` did, through `calibrate()`).
"""

import ast
import pathlib

import keras_lookup

ROOT = pathlib.Path(keras_lookup.__file__).parent


def _module_name(path):
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path, modules):
    """The package's modules that `path` names in an import statement."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module in modules:
            # `from keras_lookup import _lookup` names a submodule;
            # `from keras_lookup.dense import Dense` names the module itself.
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found


def import_graph():
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: _imports(path, paths) - {name} for name, path in paths.items()}


def find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_graph_sees_function_level_imports():
    graph = import_graph()
    assert "keras_lookup._timing" in graph["keras_lookup.calibration"]
    assert "keras_lookup._cost_model" in graph["keras_lookup.dimension_reducer"]


def test_find_cycle_finds_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
