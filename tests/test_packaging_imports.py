"""Every third-party import under hdus_edge/ (and tests/) is declared in pyproject, for its extra.

A module may import what the base install declares, plus what the extras its role needs declare
(EXTRAS_OF below): torch code needs [train], the simulator and benchmarks [sim] (and [train], as
they train). Imports inside functions count too: a lazy import still fails on an install that
lacks the package. The base install is what a device runs, so a heavy import creeping into a
device module fails here, before it fails on a Pi.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from hdus_edge.errors import EXTRA_OF_IMPORT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]

# Import name -> distribution name, where they differ.
DISTRIBUTION_OF = {
    "PIL": "pillow",
    "google": "protobuf",
    "sklearn": "scikit-learn",
    "paho": "paho-mqtt",
    "yaml": "pyyaml",
    "cv2": "opencv-python",
    "onnxruntime": "onnxruntime",
}

# The extras a module may import from besides the base install, by its path under hdus_edge/.
# The most specific entry wins: "path.py::function", then "path.py", then the longest folder.
EXTRAS_OF: dict[str, tuple[str, ...]] = {
    "learning/": ("train",),
    "models/": ("train",),
    "onnx/export.py": ("train",),
    "sim/": ("sim", "train"),
    "bench/": ("sim", "train"),
    "reliability/": ("sim", "train"),
    "lab/": ("sim", "train"),
    "transport/broker.py": ("sim",),
    "data/loaders.py::load_digits": ("sim",),  # the digits dataset is scikit-learn's
}


@dataclass(frozen=True)
class Import:
    """One third-party import: where it is and the top-level name it imports."""

    path: str  # relative to the scanned package, e.g. "device/agent.py"
    function: str  # the enclosing function's qualified name, "" at module level
    line: int
    name: str


def _base_name(req: str) -> str:
    return re.match(r"\s*([A-Za-z0-9._-]+)", req).group(1).lower().replace("_", "-")


def declared(pyproject: dict) -> dict[str, set[str]]:
    """extra ("" for the base install) -> the distribution names it declares (self-references resolved)."""
    project = pyproject["project"]
    raw = {"": list(project.get("dependencies", [])), **project.get("optional-dependencies", {})}
    name = project["name"].lower()
    out: dict[str, set[str]] = {}

    def resolve(extra: str, seen: frozenset[str]) -> set[str]:
        names: set[str] = set()
        for req in raw[extra]:
            dist = _base_name(req)
            if dist == name:  # "hdus-edge[train,sim]"
                inner = re.search(r"\[([^\]]*)\]", req).group(1)
                for sub in (x.strip() for x in inner.split(",")):
                    if sub not in seen:
                        names |= resolve(sub, seen | {sub})
            else:
                names.add(dist)
        return names

    for extra in raw:
        out[extra] = resolve(extra, frozenset({extra}))
    return out


def third_party_imports(root: Path, first_party: set[str]) -> list[Import]:
    """Every import of a top-level name that is neither stdlib nor first-party, under ``root``."""
    found: list[Import] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(), filename=str(path))
        _walk(tree, [], rel, first_party, found)
    return found


def _walk(node: ast.AST, scope: list[str], rel: str, first_party: set[str], found: list[Import]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            _walk(child, [*scope, child.name], rel, first_party, found)
            continue
        names: list[str] = []
        if isinstance(child, ast.Import):
            names = [a.name for a in child.names]
        elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
            names = [child.module]
        for name in names:
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in first_party and top != "__future__":
                found.append(Import(rel, ".".join(scope), child.lineno, top))
        _walk(child, scope, rel, first_party, found)


def extras_of(imp: Import) -> tuple[str, ...]:
    """The extras the module (or function) of ``imp`` may import from, besides the base install."""
    keys = [f"{imp.path}::{imp.function.split('.')[0]}", f"{imp.path}::{imp.function}", imp.path]
    for key in keys:
        if key in EXTRAS_OF:
            return EXTRAS_OF[key]
    folders = [k for k in EXTRAS_OF if k.endswith("/") and imp.path.startswith(k)]
    return EXTRAS_OF[max(folders, key=len)] if folders else ()


def undeclared(imports: list[Import], decl: dict[str, set[str]]) -> list[str]:
    """One line per import that neither the base install nor the module's extras declare."""
    problems = []
    for imp in imports:
        dist = DISTRIBUTION_OF.get(imp.name, imp.name).lower().replace("_", "-")
        extras = extras_of(imp)
        allowed = set(decl[""]).union(*(decl[e] for e in extras))
        if dist not in allowed:
            where = f"{imp.path}:{imp.line}" + (f" ({imp.function})" if imp.function else "")
            need = " or ".join(f"[{e}]" for e in extras) or "the base dependencies"
            problems.append(f"{where}: imports {imp.name} (distribution {dist}), not declared in {need}")
    return problems


@pytest.fixture(scope="module")
def decl() -> dict[str, set[str]]:
    return declared(tomllib.loads((REPO / "pyproject.toml").read_text()))


def test_every_package_import_is_declared_for_its_extra(decl: dict[str, set[str]]) -> None:
    # Prepare
    imports = third_party_imports(REPO / "hdus_edge", {"hdus_edge"})
    # Execute / Assert
    assert len({i.name for i in imports}) >= 10  # the scan sees numpy, onnx, torch, ...
    assert undeclared(imports, decl) == []


def test_every_test_import_is_declared(decl: dict[str, set[str]]) -> None:
    # The tests run on the full install plus [test].
    local = {p.stem for p in (REPO / "tests").glob("*.py")} | {"hdus_edge"}
    imports = third_party_imports(REPO / "tests", local)
    full = decl["all"] | decl["test"]
    missing = sorted({f"{i.path}:{i.line}: {i.name}" for i in imports
                      if DISTRIBUTION_OF.get(i.name, i.name).lower() not in decl[""] | full})
    assert missing == []


def test_base_install_is_a_devices(decl: dict[str, set[str]]) -> None:
    # The base declares what a device runs, none of the heavy parts; [all] is [train] + [sim].
    assert decl[""].isdisjoint({"torch", "scikit-learn", "matplotlib", "amqtt", "psutil"})
    assert {"numpy", "onnx", "onnxruntime", "paho-mqtt", "typer", "click", "cryptography", "rich"} <= decl[""]
    assert decl["train"] == {"torch"}
    assert decl["all"] == decl["train"] | decl["sim"]
    assert {"pytest", "hypothesis", "pytest-timeout"} <= decl["test"]


def test_cli_extra_hints_match_pyproject(decl: dict[str, set[str]]) -> None:
    # errors.EXTRA_OF_IMPORT names the extra in "install 'hdus-edge[...]'": it must be the one
    # that declares the package, and cover every package of [train] and [sim].
    declared_by = {imp: extra for extra in ("train", "sim") for imp in _imports_of(decl[extra])}
    assert EXTRA_OF_IMPORT == declared_by


def _imports_of(dists: set[str]) -> set[str]:
    by_dist = {d: i for i, d in DISTRIBUTION_OF.items()}
    return {by_dist.get(d, d) for d in dists}


def _plant(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_an_undeclared_import_fails(tmp_path: Path, decl: dict[str, set[str]]) -> None:
    # Prepare: a package tree with one allowed import and four that break the rule
    root = _plant(tmp_path / "pkg", {
        "device/agent.py": "import numpy\nimport onnxruntime as ort\n\ndef run():\n    import torch\n",
        "learning/train.py": "import torch\nfrom torch import nn\n",
        "sim/report.py": "import matplotlib\nimport yaml\n",
        "data/loaders.py": "def load_digits():\n    import sklearn\n\ndef load_other():\n    import sklearn.datasets\n",
        "transport/mqtt.py": "class Client:\n    def start(self):\n        import amqtt.broker\n",
    })
    # Execute
    problems = undeclared(third_party_imports(root, {"pkg"}), decl)
    # Assert: exactly the four planted violations, each named with its place and the extra it lacks
    assert problems == [
        "data/loaders.py:5 (load_other): imports sklearn (distribution scikit-learn), not declared in the base dependencies",
        "device/agent.py:5 (run): imports torch (distribution torch), not declared in the base dependencies",
        "sim/report.py:2: imports yaml (distribution pyyaml), not declared in [sim] or [train]",
        "transport/mqtt.py:3 (Client.start): imports amqtt (distribution amqtt), not declared in the base dependencies",
    ]


def test_an_undeclared_import_in_the_real_package_fails(decl: dict[str, set[str]]) -> None:
    # Prepare: the real scan, with pyproject no longer declaring click for the base install
    imports = third_party_imports(REPO / "hdus_edge", {"hdus_edge"})
    without_click = {**decl, "": decl[""] - {"click"}}
    # Execute / Assert
    assert [p for p in undeclared(imports, without_click) if "click" in p] == [
        next(f"cli/app.py:{i.line}: imports click (distribution click), not declared in the base dependencies"
             for i in imports if i.name == "click")
    ]
