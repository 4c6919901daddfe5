"""The house rules of the source tree (README, "Design"), checked on the code itself: no module over
500 lines, no import cycle among the modules of ``eebench/`` and ``methods/`` (imports inside
functions included), and the one-way layering: plugins reach only the plugin API, the report side
never reaches the run side. ``pytest tests/test_layout.py -q`` prints the cycle or the offending
import."""
from __future__ import annotations

import ast
import graphlib

import pytest

from conftest import ROOT

PACKAGES = ("eebench", "methods")
MAX_LINES = 500


def _modules() -> dict[str, ast.Module]:
    """Dotted name → parsed source of every module of :data:`PACKAGES`."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = ast.parse(path.read_text(), str(path))
    return out


MODULES = _modules()


def _imports(name: str, tree: ast.Module) -> set[str]:
    """The modules of :data:`MODULES` that ``name`` imports, anywhere in its body."""
    found = set()

    def add(target: str) -> None:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:            # relative import
                base = ".".join(name.split(".")[: len(name.split(".")) - node.level + 1] + [node.module])
            for a in node.names:      # "from pkg import mod" imports the submodule, else pkg itself
                add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return found


GRAPH = {name: _imports(name, tree) for name, tree in MODULES.items()}


def test_no_module_over_500_lines():
    long = {p.relative_to(ROOT).as_posix(): n for package in PACKAGES for p in (ROOT / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules by job: {long}"


def test_import_graph_has_no_cycle():
    try:
        order = list(graphlib.TopologicalSorter(GRAPH).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")
    assert len(order) == len(MODULES) >= 40


#: What plugin and report modules may import from this repository.
PLUGIN_API = {"eebench.method", "eebench.training", "eebench.exit_policy", "eebench.costs", "eebench.params",
              "eebench.errors", "eebench.features", "eebench.im_stage"}
DATASET_API = {"eebench.data", "eebench.derived", "eebench.params", "eebench.errors", "eebench.graphs",
               "eebench.paths", "eebench.datasets"}
BACKBONE_API = {"eebench.backbones", "eebench.backbones.base", "eebench.pipelines", "eebench.params", "eebench.errors",
                "eebench.data", "eebench.graphs", "eebench.registry"}
RUN_SIDE = {"eebench.runner", "eebench.features", "eebench.im_stage", "eebench.method", "eebench.training",
            "eebench.backbones", "eebench.weights", "eebench.backbone_training", "eebench.tasks",
            "eebench.launchers"}
REPORT_SIDE = ("eebench.table", "eebench.selection", "eebench.bootstrap", "eebench.report", "eebench.plots")


def _reaches(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for m in GRAPH[todo.pop()]:
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("methods.")))
def test_methods_import_only_the_plugin_api(module):
    """A method sees features and the plugin API: never data, backbones, the runner, records or metrics."""
    assert GRAPH[module] - PLUGIN_API - {m for m in MODULES if m.startswith("methods")} == set()


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("eebench.datasets.")))
def test_datasets_import_only_the_dataset_api(module):
    assert GRAPH[module] - DATASET_API == set()


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("eebench.backbones.")))
def test_backbones_import_only_the_backbone_api(module):
    """A backbone family: its model, exit adapter and input pipeline; never weights files, training or runs."""
    assert GRAPH[module] - BACKBONE_API - {m for m in MODULES if m.startswith("eebench.backbones.")} == set()


@pytest.mark.parametrize("module", REPORT_SIDE)
def test_report_side_never_reaches_the_run_side(module):
    """Tables, selection, bootstrap, leaderboards and figures read records and tables only."""
    assert _reaches(module) & RUN_SIDE == set()
