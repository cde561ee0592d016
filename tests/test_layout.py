"""The layout is the architecture: packages by role, imports that run one way, a torch-free runtime.

Static checks over the source (imports inside functions count), each one also run on a small planted
tree to show it can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hdus_edge"

# Modules that may sit at the root of hdus_edge: the shared bottom layer.
ROOT_MODULES = {"__init__", "__main__", "errors", "files", "config", "topology", "arch_names", "state"}

# What each package must never import (its __init__ docstring says the same).
ABOVE_RUNTIME = {"lab", "sim", "bench", "reliability", "cli"}
FORBIDDEN = {
    "files": {"*"},
    "errors": {"*"},
    "protocol": {"transport", "device", "learning", "admin", "unlearn", "ensemble", "onnx", "state"} | ABOVE_RUNTIME,
    "transport": {"protocol", "device", "learning", "admin", "unlearn", "ensemble", "onnx", "state", "data"} | ABOVE_RUNTIME,
    "data": {"protocol", "transport", "device", "learning", "admin", "unlearn", "ensemble", "onnx", "models"} | ABOVE_RUNTIME,
    "models": {"data", "protocol", "transport", "device", "learning", "admin", "unlearn", "ensemble", "onnx"} | ABOVE_RUNTIME,
    "onnx": {"ensemble", "device", "learning", "admin", "unlearn", "transport", "protocol"} | ABOVE_RUNTIME,
    "ensemble": {"transport", "device", "learning", "admin", "unlearn", "protocol"} | ABOVE_RUNTIME,
    "device": {"learning", "admin", "unlearn"} | ABOVE_RUNTIME,
    "learning": {"device", "admin", "unlearn", "transport"} | ABOVE_RUNTIME,
    "admin": {"learning", "device", "unlearn"} | ABOVE_RUNTIME,
    "unlearn": {"learning", "admin"} | ABOVE_RUNTIME,
    "dashboard": {"learning"} | ABOVE_RUNTIME,
    "lab": {"sim", "bench", "reliability", "cli"},
    "sim": {"bench", "reliability", "cli"},
    "bench": {"sim", "reliability", "cli"},
    "reliability": {"sim", "bench", "cli"},
}
# Packages that a device's base install runs: no heavy learning library, even inside a function,
# and nothing they import (transitively, within hdus_edge) may import one either.
TORCH_FREE = ("device", "ensemble", "protocol", "transport", "dashboard")
HEAVY = {"torch", "torchvision", "sklearn", "matplotlib"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def scan(root: Path) -> dict[str, tuple[set[str], set[str]]]:
    """module -> (hdus_edge modules it imports, third-party top-level names it imports), anywhere in it."""
    out: dict[str, tuple[set[str], set[str]]] = {}
    top = root.name
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        internal: set[str] = set()
        external: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
                if node.module == top:
                    names = [f"{top}.{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                (internal if n.split(".")[0] == top else external).add(n if n.split(".")[0] == top else n.split(".")[0])
        out[name] = (internal, external)
    return out


def group(module: str) -> str:
    """The package (or root module) a module belongs to: ``hdus_edge.device.agent`` -> ``device``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def resolve(name: str, modules: dict[str, tuple[set[str], set[str]]]) -> str | None:
    """The scanned module an import names (``from pkg.mod import f`` names ``pkg.mod``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def group_edges(modules: dict[str, tuple[set[str], set[str]]]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for mod, (internal, _) in modules.items():
        for target in internal:
            dst = resolve(target, modules)
            if dst is not None and group(dst) != group(mod) and group(dst) != "__init__":
                edges.setdefault(group(mod), set()).add(group(dst))
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def forbidden_imports(modules: dict[str, tuple[set[str], set[str]]]) -> list[str]:
    bad = []
    for src, dsts in sorted(group_edges(modules).items()):
        rule = FORBIDDEN.get(src, set())
        for dst in sorted(dsts):
            if "*" in rule or dst in rule:
                bad.append(f"{src} -> {dst}")
    return bad


def heavy_reach(modules: dict[str, tuple[set[str], set[str]]], packages: tuple[str, ...]) -> list[str]:
    """Chains from a module of ``packages`` to a module importing a HEAVY library."""
    bad = []
    for start in sorted(m for m in modules if group(m) in packages):
        seen = {start}
        todo = [(start, [start])]
        while todo:
            mod, chain = todo.pop()
            heavy = modules[mod][1] & HEAVY
            if heavy:
                bad.append(" -> ".join(chain) + f" imports {sorted(heavy)}")
                continue
            for target in sorted(modules[mod][0]):
                dst = resolve(target, modules)
                if dst is not None and dst not in seen:
                    seen.add(dst)
                    todo.append((dst, chain + [dst]))
    return bad


@pytest.fixture(scope="module")
def modules() -> dict[str, tuple[set[str], set[str]]]:
    return scan(PACKAGE)


def test_root_holds_only_the_shared_bottom_layer() -> None:
    stray = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ROOT_MODULES)
    assert stray == [], f"modules at the root of hdus_edge/ belong in a package by role: {stray}"


def test_every_package_says_what_it_is_for_and_what_it_never_imports() -> None:
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc) > 80, f"{init.parent.name}/__init__.py needs a docstring saying what it is for"
        assert "never" in doc.lower() or init.parent.name == "cli" and "nothing imports" in doc.lower(), init


def test_packages_import_each_other_one_way(modules) -> None:
    assert cycles(group_edges(modules)) == []


def test_no_package_imports_one_above_it(modules) -> None:
    assert forbidden_imports(modules) == []


def test_device_runtime_never_reaches_torch(modules) -> None:
    assert heavy_reach(modules, TORCH_FREE) == []


def test_the_checks_catch_a_planted_cycle_an_upward_import_and_torch(tmp_path: Path) -> None:
    root = tmp_path / "hdus_edge"
    for pkg in ("device", "ensemble", "sim", "onnx"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "device" / "agent.py").write_text("from hdus_edge.ensemble.runtime import run\n")
    # torch two hops away, inside a function: still reached
    (root / "ensemble" / "runtime.py").write_text("def run():\n    from hdus_edge.onnx.export import export\n")
    (root / "onnx" / "export.py").write_text("def export():\n    import torch\n")
    (root / "onnx" / "fuse.py").write_text("from hdus_edge.ensemble import runtime\n")  # onnx <-> ensemble
    (root / "ensemble" / "combine.py").write_text("import hdus_edge.sim.report\n")  # upward
    (root / "sim" / "report.py").write_text("")
    planted = scan(root)
    assert cycles(group_edges(planted)) == [["ensemble", "onnx"]]
    assert "ensemble -> sim" in forbidden_imports(planted)
    assert "onnx -> ensemble" in forbidden_imports(planted)
    chains = heavy_reach(planted, TORCH_FREE)
    assert any(c.startswith("hdus_edge.device.agent -> hdus_edge.ensemble.runtime -> hdus_edge.onnx.export") for c in chains)
