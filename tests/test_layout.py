"""The house rules of the source tree (README, "Design"), checked on the code itself: sub-packages by
layer, each saying in its ``__init__`` what it holds and may import; at most eight modules at the top;
no module over 500 lines; no import cycle among the modules of ``eebench/`` and ``methods/``
(imports inside functions included); no import from a lower layer to a higher one; plugins reach
only their API (a method file only ``eebench.method``); the report side never reaches the run side;
and a 7th method is one new file. ``pytest tests/test_layout.py -q`` names the cycle or the offending
import."""
from __future__ import annotations

import ast
import graphlib
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGES = ("eebench", "methods")
MAX_LINES = 500
MAX_TOP_LEVEL = 8


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


def _imports(name: str, tree: ast.Module) -> dict[str, int]:
    """The modules of :data:`MODULES` that ``name`` imports, anywhere in its body, with a line of each."""
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.setdefault(target, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name, node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:            # relative import
                base = ".".join(name.split(".")[: len(name.split(".")) - node.level + 1] + [node.module])
            for a in node.names:      # "from pkg import mod" imports the submodule, else pkg itself
                add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base, node.lineno)
    return found


EDGES = {name: _imports(name, tree) for name, tree in MODULES.items()}
GRAPH = {name: set(edges) for name, edges in EDGES.items()}

#: The layers, lowest first: a module may import its own layer and the layers below it.
CORE = {"eebench", "eebench.errors", "eebench.params", "eebench.registry", "eebench.paths", "eebench.integrity",
        "eebench.records"}
LAYERS: list[tuple[str, str | set[str]]] = [
    ("core", CORE), ("data", "eebench.data"), ("datasets", "eebench.datasets"), ("backbones", "eebench.backbones"),
    ("harness", "eebench.harness"), ("plugin API", {"eebench.method"}), ("methods", "methods"),
    ("deploy", "eebench.deploy"), ("sweep", "eebench.sweep"), ("report", "eebench.report"), ("cli", "eebench.cli"),
]


def layer_of(module: str) -> int:
    for i, (_, members) in enumerate(LAYERS):
        if module in members if isinstance(members, set) else (module == members or module.startswith(members + ".")):
            return i
    raise AssertionError(f"{module} belongs to no layer: add it to a sub-package (tests/test_layout.py LAYERS)")


def _where(module: str, target: str) -> str:
    path = ROOT / (module.replace(".", "/") + (".py" if (ROOT / (module.replace(".", "/") + ".py")).exists()
                                                else "/__init__.py"))
    return f"{path.relative_to(ROOT)}:{EDGES[module][target]} imports {target}"


def test_top_level_holds_the_core_and_sub_packages():
    top = sorted(p.stem for p in (ROOT / "eebench").glob("*.py") if p.stem != "__init__")
    assert len(top) <= MAX_TOP_LEVEL, f"{len(top)} modules at the top of eebench/: {top}; move some into a layer"
    assert set(top) == {m.removeprefix("eebench.") for m in CORE | {"eebench.method"}} - {"eebench"}


@pytest.mark.parametrize("package", sorted(p.name for p in (ROOT / "eebench").iterdir()
                                           if (p / "__init__.py").exists()))
def test_every_sub_package_says_what_it_holds_and_may_import(package):
    doc = ast.get_docstring(MODULES[f"eebench.{package}"])
    assert doc and len(doc) > 150 and "import" in doc, f"eebench/{package}/__init__.py needs its paragraph"


def test_no_module_over_500_lines():
    long = {p.relative_to(ROOT).as_posix(): n for package in PACKAGES for p in (ROOT / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules by job: {long}"


def test_import_graph_has_no_cycle():
    try:
        order = list(graphlib.TopologicalSorter(GRAPH).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")
    assert len(order) == len(MODULES) >= 50


def test_no_import_from_a_lower_layer_to_a_higher_one():
    upward = [f"{_where(m, t)} ({LAYERS[layer_of(m)][0]} -> {LAYERS[layer_of(t)][0]})"
              for m in MODULES for t in GRAPH[m] if layer_of(t) > layer_of(m)]
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


#: What dataset and backbone plugin modules may import from this repository.
DATASET_API = CORE | {m for m in MODULES if m.startswith(("eebench.data", "eebench.datasets"))}
BACKBONE_INFRA = {"eebench.backbones.weights", "eebench.backbones.training"}
BACKBONE_API = CORE | {m for m in MODULES if m.startswith("eebench.data")} | {"eebench.backbones",
                                                                             "eebench.backbones.base"}
RUN_SIDE = {m for m in MODULES if m.startswith(("eebench.harness", "eebench.backbones", "eebench.sweep",
                                                "eebench.deploy", "eebench.method", "methods"))}
REPORT_SIDE = ("eebench.report.table", "eebench.report.selection", "eebench.report.bootstrap",
               "eebench.report.leaderboard", "eebench.report.plots", "eebench.report.html", "eebench.report.diagnostics",
               "eebench.report.diagnostic_plots", "eebench.report.figure_style")


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
    """A method sees ``eebench.method`` only: never data, backbones, the runner, records or metrics."""
    other = [_where(module, t) for t in GRAPH[module] if t != "eebench.method" and not t.startswith("methods")]
    assert not other, "a method imports only from eebench.method:\n" + "\n".join(other)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("eebench.datasets.")))
def test_datasets_import_only_the_dataset_api(module):
    assert not [_where(module, t) for t in GRAPH[module] - DATASET_API]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("eebench.backbones.")
                                          and m not in BACKBONE_INFRA))
def test_backbones_import_only_the_backbone_api(module):
    """A backbone family: its model, exit adapter and input pipeline; never weights files, training or runs."""
    families = {m for m in MODULES if m.startswith("eebench.backbones.")} - BACKBONE_INFRA
    assert not [_where(module, t) for t in GRAPH[module] - BACKBONE_API - families]


@pytest.mark.parametrize("module", REPORT_SIDE)
def test_report_side_never_reaches_the_run_side(module):
    """Tables, selection, bootstrap, leaderboards and figures read records and tables only."""
    assert _reaches(module) & RUN_SIDE == set()


TOY = '''"""A 7th method in one file: every sample leaves at one fixed exit (a test of the plugin layout)."""
import numpy as np

from eebench.method import AT_LEAST_ONE, Each, ExitMethod, FittedMethod, OperatingPoint, exit_probs, pack, register_method


class Fixed(FittedMethod):
    def __init__(self, ims, exits):
        self.ims, self.exits, self.gate_muladds = ims, exits, [0] * len(ims)

    def predict(self, split):
        probs = exit_probs(self.ims, split)
        return [OperatingPoint({"exit": e}, np.full(split.n, e - 1), probs, self.gate_muladds) for e in self.exits]

    def state(self):
        return pack(ims=self.ims), {"exits": self.exits}


@register_method
class Toy(ExitMethod):
    name = "toy"
    paper = "none"
    parameters = {"exits": [1, 2, 6]}
    constraints = {"exits": Each(AT_LEAST_ONE)}

    def fit(self, task, params, seed):
        return Fixed(task.trained_ims(), params["exits"])
'''


def test_a_7th_method_is_one_new_file(tmp_path):
    """A copy of ``methods/`` with one more file: listed, run end to end on digits, one eebench import line."""
    shutil.copytree(ROOT / "methods", tmp_path / "methods", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "methods" / "toy.py").write_text(TOY)
    assert [ln for ln in TOY.splitlines() if "eebench" in ln and "import" in ln] == \
        ["from eebench.method import AT_LEAST_ONE, Each, ExitMethod, FittedMethod, OperatingPoint, exit_probs, pack, "
         "register_method"]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "TQDM_DISABLE": "1"}
    run = [sys.executable, "-m", "eebench.cli"]
    listed = subprocess.run(run + ["list", "methods"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert listed.returncode == 0 and "  toy " in listed.stdout, listed.stderr
    out = subprocess.run(run + ["run", "--method", "toy", "--set", "im.epochs=2", "--out", str(tmp_path / "runs")],
                         env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "record:" in out.stdout and len(list((tmp_path / "runs").glob("toy-digits-*/record.json"))) == 1
