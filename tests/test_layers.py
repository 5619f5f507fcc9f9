"""The package's folders are its layers, and imports only go down them.

Standard library only: it reads every module's imports (``TYPE_CHECKING`` imports and
imports inside functions included) from the source, so it holds however modules import.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tart_trio"
#: Top to bottom. A module may import modules of a lower layer and of its own package;
#: packages on one layer are independent of each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__main__",),
    ("_main",),
    ("_rpc",),
    ("_driver",),
    ("_task",),
    ("_images",),
    ("_guest", "_tart"),
    ("_host", "_config"),
    ("_model", "_errors", "_bridge", "_groups", "_version", "__init__"),
)
#: Generated protobuf code: imported by the rpc layer only.
PROTO = "_proto"
#: Helper processes run without the rest of the package: standard library and each other.
STANDALONE = {
    "_host.helpers",
    "_host.supervisor",
    "_host.runas",
    "_host.fifo",
    "_host.safefs",
    "_host.ports",
    "_host.forward",
}


def modules() -> Iterator[tuple[str, Path]]:
    """``(dotted name inside tart_trio, file)`` of every hand-written module."""
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        if rel.parts[0] == PROTO:
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" and len(rel.parts) > 1 else rel.parts
        yield ".".join(parts), path


def imports(path: Path, name: str) -> set[str]:
    """The ``tart_trio`` modules (or packages) a file imports, as names inside tart_trio."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: relative import (the package imports absolutely)"
            module = node.module or ""
            # ``from pkg import mod`` imports a module; ``from mod import name`` its module.
            targets = [
                f"{module}.{alias.name}"
                if (PACKAGE.parent / module.replace(".", "/") / f"{alias.name}.py").exists()
                or (PACKAGE.parent / module.replace(".", "/") / alias.name).is_dir()
                else module
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if target == "tart_trio":
                found.add("__init__")
            elif target.startswith("tart_trio."):
                found.add(target.removeprefix("tart_trio."))
    return found


def layer(name: str) -> int:
    top = name.split(".", maxsplit=1)[0]
    for rank, packages in enumerate(LAYERS):
        if top in packages:
            return rank
    raise AssertionError(f"tart_trio.{name} is on no layer: add its package to LAYERS")


def test_every_import_points_down_a_layer() -> None:
    upward = []
    for name, path in modules():
        for target in imports(path, name):
            top, target_top = name.split(".")[0], target.split(".")[0]
            if target_top == PROTO:
                if top != "_rpc":
                    upward.append(f"{name} -> {target} (generated code is the rpc layer's)")
                continue
            if top == target_top and top != "__init__":
                continue  # inside one package: checked for circles below
            if layer(target) <= layer(name) and not (name == "__init__" and target == "_version"):
                upward.append(f"{name} -> {target}")
    assert not upward, "imports that do not point down a layer:\n" + "\n".join(upward)


def test_no_import_circle_inside_a_package() -> None:
    graph = {
        name: {t for t in imports(path, name) if t.split(".")[0] == name.split(".")[0]}
        for name, path in modules()
    }
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt not in graph:
                continue
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_helper_processes_import_only_the_standard_library_and_each_other() -> None:
    stdlib = sys.stdlib_module_names
    for name, path in modules():
        if name not in STANDALONE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                roots = [node.module or ""]
            else:
                continue
            for root in roots:
                if root == "__future__" or root.split(".")[0] in stdlib:
                    continue
                own = root.removeprefix("tart_trio.")
                targets = {own} if own != "_host" else {f"_host.{a.name}" for a in node.names}
                assert targets <= STANDALONE, f"{name} imports {root}"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The check itself: a module that imports a layer above it is caught."""
    sample = tmp_path / "probe.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from tart_trio._task.runner import TaskRunner\n"
        "def late():\n"
        "    from tart_trio._driver import names\n"
    )
    found = imports(sample, "_guest.probe")
    assert found == {"_task.runner", "_driver.names"}
    assert all(layer(t) <= layer("_guest.probe") for t in found)


def test_the_architecture_doc_names_every_module_and_layer() -> None:
    """docs/architecture.md's module table stays true: every module and package is in it."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == PROTO or (len(rel.parts) == 1 and rel.name.startswith("__")):
            continue
        shown = (
            f"`{rel.parent.as_posix()}/`" if rel.name == "__init__.py" else f"`{rel.as_posix()}`"
        )
        if shown not in text:
            missing.append(shown)
    for packages in LAYERS:
        missing += [p for p in packages if not p.startswith("__") and p not in text]
    assert not missing, f"docs/architecture.md does not mention: {', '.join(missing)}"
