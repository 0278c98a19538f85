"""The house rules, checked: layers import downward only, no import cycles, no big files, and
every function-local import says why it is not at the top.

The layer order is written once, here. A module belongs to the layer of the longest prefix
that names it; it may import its own layer and the layers below, never one above. Why the
order is what it is: docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jaxllm"

# Lowest first. Within a layer, modules may import each other (the cycle test still applies).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("jaxllm.errors", "jaxllm.host", "jaxllm.hlo", "jaxllm.parallel.axes")),
    ("config", ("jaxllm.config",)),
    ("model", ("jaxllm.model",)),
    ("parallel", ("jaxllm.parallel",)),
    ("data", ("jaxllm.data",)),
    ("train", ("jaxllm.train",)),
    ("generation", ("jaxllm.sampling", "jaxllm.generation", "jaxllm.chat_template", "jaxllm.chat")),
    ("posttrain", ("jaxllm.posttrain",)),
    ("apps", ("jaxllm.evaluate", "jaxllm.convert", "jaxllm.interactive", "jaxllm.viz", "jaxllm.plan",
              "jaxllm.quickstart")),
    ("cli", ("jaxllm.cli",)),
    ("facade", ("jaxllm",)),  # jaxllm/__init__.py: the public API re-exports; nothing imports it back
]

MAX_LINES = 400
# A function-local import must say why on its line or within the three lines before it (one
# comment may cover a block of imports): an optional dependency
# (torch, transformers, lm_eval, ...) or a slow import kept off the CLI's start-up path.
LOCAL_IMPORT_REASON = ("optional", "slow", "lazy", "start-up", "startup")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return best


def _imports(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported jaxllm module, line, is function-local) for every import outside TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    type_checking = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_checking.update(id(n) for n in ast.walk(node))
    local = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            local.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if id(node) in type_checking or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # `from jaxllm.x import y` imports jaxllm.x.y when y is a module, else a name of jaxllm.x
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for target in targets:
            if target.split(".")[0] == "jaxllm" or id(node) in local:
                found.append((target, node.lineno, id(node) in local))
    return found


def test_every_module_imports_only_its_layer_and_below():
    upward = []
    for name, path in MODULES.items():
        for target, line, _ in _imports(name, path):
            if target in MODULES and target != name and layer_of(target) > layer_of(name):
                upward.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line} ({LAYERS[layer_of(name)][0]}) imports "
                    f"{target} ({LAYERS[layer_of(target)][0]})"
                )
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = {
        name: {t for t, _, _ in _imports(name, path) if t in MODULES and t != name and t != "jaxllm"}
        for name, path in MODULES.items()
    }
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_file_is_under_the_line_limit(name):
    lines = MODULES[name].read_text().count("\n")
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines (limit {MAX_LINES}): split it along its seams"


def test_function_local_imports_say_why():
    unexplained = []
    for name, path in MODULES.items():
        source = path.read_text().splitlines()
        for target, line, is_local in _imports(name, path):
            if not is_local:
                continue
            context = " ".join(source[max(0, line - 4) : line]).lower()
            if not any(word in context for word in LOCAL_IMPORT_REASON):
                unexplained.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not unexplained, (
        "function-local imports without a reason (say 'optional dependency' or 'slow import' on the line, "
        "or move the import to the top):\n" + "\n".join(sorted(set(unexplained)))
    )
