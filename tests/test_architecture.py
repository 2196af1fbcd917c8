"""The tree keeps the shape ARCHITECTURE.md draws: no import cycles, a pure protocol/,
small modules, and a wheel that ships no test-only code.

Imports are read with ``ast`` from the source, so an import under ``TYPE_CHECKING`` or
inside a function counts as much as one at the top of a module.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("peer", "protocol")
MAX_LINES = 600
# What protocol/ must never import: the runtime, RPC, event loops, sockets, wall clocks.
NOT_IN_PROTOCOL = ("peer", "hearsay", "grpc", "grpc_health", "grpc_reflection", "asyncio", "uvloop", "aiomqtt",
                   "socket", "socketserver", "ssl", "selectors", "time", "datetime")
# Modules that exist only for tests and benchmarks: they live under tests/, never in the wheel.
TEST_ONLY = ("netns", "stalling_peer", "trainers")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}


def imported_names(path: Path) -> set[str]:
    """Every module ``path`` names in an import statement, anywhere in the file.

    ``from a.b import c`` names ``a.b.c`` when that is a module (a submodule imported by
    name), and ``a.b`` otherwise (a name taken from it).
    """
    modules = source_modules()
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = source_modules()
    return {name: {m for m in imported_names(path) if m in modules and m != name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_checker_reads_type_checking_and_function_imports(tmp_path: Path) -> None:
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from peer.runtime.node import Node\n"
              "def f():\n    import peer.runtime.gossip\n")
    path = ROOT / "peer" / "_architecture_probe.py"
    path.write_text(source)
    try:
        assert {"peer.runtime.node", "peer.runtime.gossip"} <= imported_names(path)
    finally:
        path.unlink()


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert cycles(import_graph()) == []


def test_protocol_imports_no_runtime_rpc_loop_socket_or_clock() -> None:
    bad = {}
    for name, path in source_modules().items():
        if name.split(".")[0] != "protocol":
            continue
        hits = sorted(m for m in imported_names(path) if m.split(".")[0] in NOT_IN_PROTOCOL)
        if hits:
            bad[name] = hits
    assert bad == {}


def test_no_module_is_longer_than_the_limit() -> None:
    long = {name: n for name, path in source_modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_test_only_modules_live_under_tests() -> None:
    shipped = {name.rpartition(".")[2] for name in source_modules()}
    assert shipped.isdisjoint(TEST_ONLY)
    assert all((ROOT / "tests" / f"{name}.py").is_file() for name in TEST_ONLY)


def test_the_operations_view_is_what_the_node_offers() -> None:
    from peer.ops.view import NodeView
    from peer.runtime.node import Node

    wanted = {n for n in vars(NodeView) if not n.startswith("_")}
    node_attrs = set(dir(Node))
    # Instance attributes are set in __init__: read them from its source.
    init = ast.parse(Path(sys.modules[Node.__module__].__file__).read_text())
    for node in ast.walk(init):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            targets = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
            node_attrs.update(t.attr for t in targets if isinstance(t, ast.Attribute)
                              and isinstance(t.value, ast.Name) and t.value.id == "self")
    assert wanted - node_attrs == set()
    assert {"trainer", "engine", "set_knob", "leave"} <= wanted


def test_the_cli_docstring_names_every_command() -> None:
    from peer.tools import cli

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    commands = set(sub.choices)
    assert len(commands) >= 11
    missing = {c for c in commands if f"``{c}``" not in (cli.__doc__ or "")}
    assert missing == set()


def _packages_on_disk() -> set[str]:
    found = {module_name(p.parent) for pkg in PACKAGES for p in (ROOT / pkg).rglob("__init__.py")}
    found |= {"hearsay", "hearsay.v1"}
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                    str(ROOT)], check=True, timeout=600)
    (built,) = out.glob("hearsay-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_ships_every_package_and_no_test_code(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    modules = {n[:-3].replace("/", ".").removesuffix(".__init__") for n in names if n.endswith(".py")}
    packages = {n[: -len("/__init__.py")].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert packages == _packages_on_disk()
    assert not [n for n in names if n.split("/")[0] in ("tests", "bench")]
    assert not [m for m in modules if m.rpartition(".")[2] in TEST_ONLY]
    # Every source module of peer/ and protocol/ is in it, so an installed peer runs.
    assert set(source_modules()) <= modules


def test_both_memberships_offer_the_view_the_engine_uses() -> None:
    """The gossip engine, admin and metrics see a ``MembershipView``; Swim and the static
    view must both offer every method of it, with the same parameters."""
    import inspect

    from protocol.membership import MembershipView, StaticMembership, Swim

    wanted = {n: inspect.signature(f) for n, f in vars(MembershipView).items()
              if callable(f) and not n.startswith("_")}
    assert {"members", "live", "note_contact", "note_failure", "incarnation_of"} <= set(wanted)
    for cls in (Swim, StaticMembership):
        for name, sig in wanted.items():
            assert list(inspect.signature(getattr(cls, name)).parameters) == list(sig.parameters), (cls, name)
    engine_source = (ROOT / "peer" / "runtime" / "gossip.py").read_text()
    assert "membership: MembershipView" in engine_source
