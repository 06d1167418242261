"""Every module imports only its own layer or the layers below it, and never looks the project up by name.

Why a test: the layers of ../shared/DESIGN.md (model/config/errors at the
bottom, then criu/inventory/remap, agent, feasibility, migrate, lab, and the
two faces on top) keep each part changeable without the ones below it; an
arrow pointing up (the engine asking the lab, feasibility importing the
migration channel) is how the old tangle started. And an ``importlib`` string
or ``getattr(module, "name")`` is an import neither mypy nor a reader can
follow, so those are refused outright for the project's own modules.

The check parses the source (``ast``), so it sees imports inside functions
and under ``TYPE_CHECKING`` too: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "ctconsole"

#: lowest first; a module may import its own layer and any layer before it
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__", "model", "config", "errors", "proto", "protogen", "process"),
    ("criu", "inventory", "remap"),
    ("agent",),
    ("feasibility",),
    ("migrate",),
    ("lab",),
    ("commands", "ui", "cli", "__main__"),
)
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _sources() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if not p.name.endswith("_pb2.py") and "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _component(module: str) -> str:
    """``ctconsole.migrate.engine`` -> ``migrate``; ``ctconsole`` itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split("."))
    return (PKG.parent / rel).with_suffix(".py").is_file() or (PKG.parent / rel / "__init__.py").is_file()


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, imported ctconsole module) for every import statement, wherever it sits."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "ctconsole"]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(node, module, is_package)
            if target.split(".")[0] != "ctconsole":
                continue
            for a in node.names:  # `from ctconsole import migrate` imports the package migrate
                sub = f"{target}.{a.name}"
                out.append((node.lineno, sub if _is_module(sub) else target))
    return out


def _module_aliases(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Local names bound to one of the project's modules (``import ctconsole.x as y``, ``from ctconsole import x``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "ctconsole":
                    names.add(a.asname or a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(node, module, is_package)
            if target.split(".")[0] == "ctconsole":
                names.update(a.asname or a.name for a in node.names if _is_module(f"{target}.{a.name}"))
    return names


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(t, ast.Name) and t.id in ("ImportError", "ModuleNotFoundError") for t in types)


def _names_ctconsole(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == "ctconsole" for a in node.names)
    return bool(node.level) or (node.module or "").split(".")[0] == "ctconsole"


def _lookups(tree: ast.AST, aliases: set[str]) -> list[tuple[int, str]]:
    """importlib, __import__, getattr/hasattr on a module of the project, and ``except ImportError``
    around one of its imports: lookups (or fallbacks) instead of imports."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "importlib" for a in node.names):
            out.append((node.lineno, "import importlib"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "importlib":
            out.append((node.lineno, "from importlib import ..."))
        elif isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers) and any(
                isinstance(n, ast.Import | ast.ImportFrom) and _names_ctconsole(n)
                for stmt in node.body for n in ast.walk(stmt)):
            out.append((node.lineno, "except ImportError around an import of ctconsole"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            fn = node.func.id
            if fn == "__import__":
                out.append((node.lineno, "__import__(...)"))
            elif fn in ("getattr", "hasattr") and node.args and isinstance(node.args[0], ast.Name) \
                    and node.args[0].id in aliases:
                out.append((node.lineno, f"{fn}({node.args[0].id}, ...) on a ctconsole module"))
    return out


def _parsed() -> list[tuple[Path, str, ast.AST, bool]]:
    out = []
    for path in _sources():
        module = _module_name(path)
        out.append((path, module, ast.parse(path.read_text(), str(path)), path.name == "__init__.py"))
    return out


def test_every_component_has_a_layer() -> None:
    unknown = sorted({_component(m) for _, m, _, _ in _parsed()} - set(LAYER_OF))
    assert not unknown, f"put these in LAYERS (tests/unit/test_layers.py and DESIGN.md): {unknown}"


def test_imports_point_down() -> None:
    bad: list[str] = []
    for path, module, tree, is_pkg in _parsed():
        here = LAYER_OF.get(_component(module), -1)
        for line, target in _imports(tree, module, is_pkg):
            there = LAYER_OF.get(_component(target), -1)
            if there > here:
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {module} ({LAYERS[here][0]} layer) imports "
                           f"{target} ({LAYERS[there][0]} layer, above it)")
    assert not bad, "imports pointing up a layer:\n" + "\n".join(bad)


def test_no_lookups_of_own_modules() -> None:
    bad: list[str] = []
    for path, module, tree, is_pkg in _parsed():
        for line, what in _lookups(tree, _module_aliases(tree, module, is_pkg)):
            bad.append(f"{path.relative_to(PKG.parent)}:{line}: {what}")
    assert not bad, "look-ups instead of imports:\n" + "\n".join(bad)


# -- the checker itself must catch what it is for ---------------------------------------------------------
@pytest.mark.parametrize(
    ("module", "source", "found"),
    [
        ("ctconsole.migrate.engine", "from ctconsole.lab import hosts\n", ["ctconsole.lab.hosts"]),
        ("ctconsole.migrate.engine", "def f():\n    from ctconsole import lab\n", ["ctconsole.lab"]),
        ("ctconsole.feasibility.remote", "from ..migrate.destination import X\n", ["ctconsole.migrate.destination"]),
        ("ctconsole.criu.probe", "import os\n", []),
    ],
)
def test_import_finder(module: str, source: str, found: list[str]) -> None:
    got = [t for _, t in _imports(ast.parse(source), module, False)]
    assert got == found


def test_upward_import_is_reported() -> None:
    engine = LAYER_OF[_component("ctconsole.migrate.engine")]
    assert LAYER_OF[_component("ctconsole.lab.hosts")] > engine
    assert LAYER_OF[_component("ctconsole.feasibility")] < engine


@pytest.mark.parametrize(
    ("source", "n"),
    [
        ("import importlib\nimportlib.import_module('ctconsole.x')\n", 1),
        ("from ctconsole import feasibility\nc = getattr(feasibility, 'check', None)\n", 1),
        ("from ctconsole import feasibility\nok = hasattr(feasibility, 'check')\n", 1),
        ("m = __import__('ctconsole.model')\n", 1),
        ("from ctconsole.model import Container\nx = getattr(Container, 'id', None)\n", 0),
        ("getattr(obj, 'x', None)\n", 0),
        ("try:\n    from ctconsole import inventory\nexcept ImportError:\n    inventory = None\n", 1),
        ("try:\n    import yaml\nexcept ImportError:\n    yaml = None\n", 0),
    ],
)
def test_lookup_finder(source: str, n: int) -> None:
    tree = ast.parse(source)
    assert len(_lookups(tree, _module_aliases(tree, "ctconsole.criu.probe", False))) == n
