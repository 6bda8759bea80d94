"""Layering, read from the source: every import between ckd's modules (function-level and
``TYPE_CHECKING`` imports included) points down a layer or stays in its folder, and no
modules import each other in a circle. The old flat paths (shims) are imported by no module of ckd."""

from __future__ import annotations

import ast
from pathlib import Path

import ckd

PACKAGE = Path(ckd.__file__).parent

# Folder (module prefix) -> layer; a module may import its own folder or a strictly lower layer.
# The longest matching prefix decides (the parts sit above the distillation core they compose with).
LAYERS = {
    "ckd.common": 0,
    "ckd.distillation": 1,
    "ckd.data": 1,
    "ckd.reports": 1,
    "ckd.distillation.parts": 2,
    "ckd.engines": 3,
    "ckd.benchmarking": 4,
    "ckd.cli": 5,
    "ckd.__main__": 6,
}
# The package face (``import ckd``: __version__ and lazy re-exports) and the shims' helper sit outside the layers.
OUTSIDE = {"ckd", "ckd._moved"}


def module_sources(root: Path = PACKAGE) -> dict[str, str]:
    """``{module name: source}`` of every module under ``root`` (the ckd package)."""
    sources = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        sources[name] = path.read_text()
    return sources


def is_shim(source: str) -> bool:
    return "warn_moved(" in source and "from ckd._moved import warn_moved" in source


def imports(name: str, source: str, modules: set[str]) -> set[str]:
    """The ckd modules ``name`` imports anywhere in its source (``from ckd.x import y`` counts
    ``ckd.x.y`` when that is a module, else ``ckd.x``)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "ckd"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "ckd":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
    return found - {name}


def layer(name: str) -> tuple[str, int] | None:
    prefixes = [p for p in LAYERS if name == p or name.startswith(p + ".")]
    if not prefixes:
        return None
    prefix = max(prefixes, key=len)
    return prefix, LAYERS[prefix]


def graph(sources: dict[str, str]) -> dict[str, set[str]]:
    modules = set(sources)
    return {name: imports(name, source, modules) for name, source in sources.items()}


def violations(sources: dict[str, str]) -> list[str]:
    """One line per import that leaves its layer upward or sideways, reaches a shim or has no layer."""
    shims = {name for name, source in sources.items() if is_shim(source)}
    out = []
    for name, targets in graph(sources).items():
        if name in shims or name in OUTSIDE:
            continue
        mine = layer(name)
        if mine is None:
            out.append(f"{name} belongs to no layer: add its folder to LAYERS")
            continue
        for target in sorted(targets - OUTSIDE):
            if target in shims:
                out.append(f"{name} imports the deprecated path {target}")
                continue
            theirs = layer(target)
            if theirs is None:
                out.append(f"{name} imports {target}, which belongs to no layer")
            elif theirs[0] != mine[0] and theirs[1] >= mine[1]:
                out.append(f"{name} (layer {mine[1]}, {mine[0]}) imports {target} (layer {theirs[1]}, {theirs[0]})")
    return out


def circles(sources: dict[str, str]) -> list[list[str]]:
    """The groups of two or more modules that import each other in a loop (Tarjan's strongly connected components)."""
    edges = {n: {t for t in ts if t in sources} for n, ts in graph(sources).items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_import_points_down_a_layer_or_stays_in_its_folder():
    assert violations(module_sources()) == []


def test_no_modules_import_each_other_in_a_circle():
    assert circles(module_sources()) == []


def test_the_shims_are_imported_by_no_module_of_ckd():
    sources = module_sources()
    assert sum(is_shim(s) for s in sources.values()) >= 30  # the probe finds them
    assert not [v for v in violations(sources) if "deprecated path" in v]


def test_the_probes_see_an_upward_import_a_sideways_one_a_shim_and_a_circle():
    sources = {
        "ckd.common.files": "import os\n",
        "ckd.distillation.losses": "def f():\n    from ckd.benchmarking.runner import run\n",  # function-level
        "ckd.distillation.buffer": "from ckd.data import streams\n",
        "ckd.data.streams": "from ckd.common.files import md5sum\n",
        "ckd.benchmarking.runner": "from ckd.distillation import losses\nfrom ckd import streams\n",
        "ckd.streams": "from ckd._moved import warn_moved\nwarn_moved(__name__, 'ckd.data.streams')\n",
        "ckd.reports.a": "import ckd.reports.b\n",
        "ckd.reports.b": "from ckd.reports.a import x\n",
    }
    assert sorted(violations(sources)) == sorted([
        "ckd.distillation.buffer (layer 1, ckd.distillation) imports ckd.data.streams (layer 1, ckd.data)",
        "ckd.distillation.losses (layer 1, ckd.distillation) imports ckd.benchmarking.runner (layer 4, ckd.benchmarking)",
        "ckd.benchmarking.runner imports the deprecated path ckd.streams",
    ])
    assert circles(sources) == [["ckd.benchmarking.runner", "ckd.distillation.losses"], ["ckd.reports.a", "ckd.reports.b"]]


def test_no_module_is_over_500_lines():
    long = {name: n for name, source in module_sources().items() if (n := len(source.splitlines())) > 500}
    assert long == {}


def test_the_folders_init_files_only_describe_their_folder():
    for path in PACKAGE.rglob("__init__.py"):
        if path.parent == PACKAGE:
            continue  # the package face: lazy re-exports (tests/test_public.py)
        body = ast.parse(path.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), path
