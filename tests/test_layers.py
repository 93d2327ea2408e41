"""The layers: every engine module imports, the domain imports nothing outside itself, the
engine knows neither its readers (projections/) nor its interfaces (commands/), projections do
not know the interfaces, no two modules anywhere import each other (directly or round a longer
loop), and module names are unique across engine/, projections/ and commands/.

Imports are read with ``ast``: every ``import`` and ``from ... import`` of the repository's own
modules, at the top of a module or inside a function, counts; those under ``if TYPE_CHECKING:``
do not (a name used in annotations only: nothing is imported when the code runs).
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "aftersales"
TOPS = ("engine", "projections", "commands")
LAYERS = ("domain", "application", "storage", "integrity", "access")

# What the domain may import besides itself: the standard library (less what reads or writes
# the world or the clock's time), pydantic, and the library's aggregate base and topics.
DOMAIN_MAY = ("pydantic", "eventsourcing.domain", "eventsourcing.utils")
DOMAIN_MAY_NOT = frozenset(
    {"io", "os", "pathlib", "socket", "sqlite3", "subprocess", "threading", "time", "tomllib"}
)
# Which layers each layer may import (its own always). Storage keeps the domain's events and
# aggregates; the application runs them over the store; integrity reads the store and the
# domain; access checks commands (the application's) against principals (in the store).
MAY_IMPORT: dict[str, frozenset[str]] = {
    "domain": frozenset(),
    "storage": frozenset({"domain"}),
    "application": frozenset({"domain", "storage"}),
    "integrity": frozenset({"domain", "storage"}),
    "access": frozenset({"domain", "storage", "application"}),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def _files(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (ROOT / top).rglob("*.py"))


ENGINE_FILES = _files("engine")
ENGINE = {_module_name(p): p for p in ENGINE_FILES}
EVERY = {_module_name(p): p for p in _files(*TOPS)}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> set[str]:
    """Every module this file imports when it runs (``from m import n``: ``m``, or ``m.n``
    when that is a module of its own)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.add(child.module)
                for a in child.names:
                    if f"{child.module}.{a.name}" in EVERY:
                        found.add(f"{child.module}.{a.name}")
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "engine" else None


@pytest.mark.parametrize("module", sorted(ENGINE))
def test_every_engine_module_imports(module: str) -> None:
    importlib.import_module(module)


def test_engine_modules_all_live_in_a_layer() -> None:
    loose = [m for m in ENGINE if m != f"{PACKAGE}.engine" and _layer(m) not in LAYERS]
    assert loose == []


def test_the_domain_imports_nothing_outside_itself() -> None:
    stdlib = sys.stdlib_module_names
    wrong: list[str] = []
    for module, path in ENGINE.items():
        if _layer(module) != "domain":
            continue
        for imported in _imports(path):
            top = imported.split(".")[0]
            if imported.startswith(f"{PACKAGE}.engine.domain") or imported == "__future__":
                continue
            if top in stdlib and top not in DOMAIN_MAY_NOT:
                continue
            if any(imported == m or imported.startswith(f"{m}.") for m in DOMAIN_MAY):
                continue
            wrong.append(f"{module} imports {imported}")
    assert wrong == []


def test_layers_import_only_the_layers_below() -> None:
    wrong: list[str] = []
    for module, path in ENGINE.items():
        layer = _layer(module)
        if layer is None:
            continue
        for imported in _imports(path):
            other = _layer(imported)
            if other is not None and other != layer and other not in MAY_IMPORT[layer]:
                wrong.append(f"{module} ({layer}) imports {imported} ({other})")
    assert wrong == []


def test_the_engine_knows_neither_projections_nor_interfaces() -> None:
    """The write side is read by projections and driven by the interfaces, never the reverse;
    projections are read by the interfaces."""
    above = {"engine": ("projections", "commands"), "projections": ("commands",)}
    wrong = [
        f"{module} imports {imported}"
        for module, path in EVERY.items()
        for imported in _imports(path)
        for top in above.get(module.split(".")[1], ())
        if imported == f"{PACKAGE}.{top}" or imported.startswith(f"{PACKAGE}.{top}.")
    ]
    assert wrong == []


def test_no_import_cycles_among_modules() -> None:
    graph = {m: {i for i in _imports(p) if i in EVERY and i != m} for m, p in EVERY.items()}
    # A package's __init__ is imported with each of its modules: not an edge of a cycle.
    graph = {m: {i for i in deps if EVERY[i].name != "__init__.py"} for m, deps in graph.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == 1:
                cycles.append([*path[path.index(imported) :], imported])
            elif imported not in state:
                walk(imported)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)
    assert cycles == []


def test_module_names_are_unique_across_engine_projections_and_commands() -> None:
    """No module shares its name with another of engine/, projections/ or commands/ (a
    package's __init__ and a program's main are named by their place)."""
    names = Counter(p.stem for p in _files(*TOPS) if p.stem not in ("__init__", "__main__", "main"))
    assert sorted(n for n, count in names.items() if count > 1) == []


def test_moved_classes_keep_the_topics_they_were_stored_under() -> None:
    """A stored topic is part of its event's hash: the case's and the order's events and
    aggregates keep ``engine.case:`` and ``engine.order:`` wherever their code lives, and each
    such topic resolves to its class (tests/test_recorded_store.py reads a store written
    before the move)."""
    from eventsourcing.utils import get_topic, resolve_topic

    from aftersales.engine.domain import case, case_events, order, order_events
    from aftersales.engine.domain.events import Aggregate, Event

    for module, start in (
        (case_events, "engine.case:"),
        (case, "engine.case:"),
        (order_events, "engine.order:"),
        (order, "engine.order:"),
    ):
        classes = [
            c
            for c in vars(module).values()
            if isinstance(c, type)
            and issubclass(c, (Event, Aggregate))
            and c.__module__ == module.__name__
        ]
        assert classes, module.__name__
        for cls in classes:
            assert get_topic(cls) == f"{start}{cls.__qualname__}"
            assert resolve_topic(get_topic(cls)) is cls
