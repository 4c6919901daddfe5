"""Sweep grids: a YAML file expanded into fully resolved run configurations.

A grid (``experiments/*.yaml``)::

    include: base.yaml              # optional: a grid (or a list of grids) this one inherits from
    name: smoke                     # default: the file's stem
    datasets: [digits]              # a name or a list
    backbones: [vit_digits]         # optional; absent or null: each dataset's default backbone
    weights: [auto]                 # optional: auto | published | trained (see eebench run --set weights=)
    seeds: [0, 1, 2]                # a list, or an int n meaning 0..n-1
    test_parameters: true           # start every method from its tiny ``test_parameters``
    method_grid: false              # true: also expand each method's declared ``grid``
    dataset_params: {split_seed: 0}
    im_params: {epochs: [10, 20]}   # the shared IM stage (eebench.harness.im_stage)
    recipe: {epochs: [10]}          # the training recipe of trained weights (eebench.backbones.training)
    methods:                        # method name -> parameters (a list of names: defaults)
      threshold: {q_grid: [[0.5, 1.0, 1.5], [0.25, 0.75, 1.25]]}
      jei: {im_loss: [weighted, uniform], lambdas: [[0.1, 1.0]]}
    latency: {batch_size: 256}      # optional: time each run after it (eebench latency; true: defaults)

Lists expand to products: datasets × backbones × weights × methods × parameter values (method,
dataset, IM stage and training recipe) × seeds. A parameter value that is a list is a list of
values to sweep, unless the parameter's default is itself a list (``lambdas``, ``q_grid``): then a
list of lists is swept and a plain list is one value. An included grid is read first and the
including file's keys are merged over it (mappings merge key by key, anything else is replaced;
``null`` removes an inherited entry, e.g. ``methods: {jei: null}``). Every run is built as a config
mapping and resolved by :func:`eebench.harness.config.from_dict`, so its run id is the one ``eebench run``
gives the same configuration, and an unknown method, dataset or backbone, or a value of the wrong
type or out of its range, stops the expansion with one line saying what to fix.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from eebench.harness.config import RunConfig, _did_you_mean, from_dict, parse_set, read_mapping
from eebench.errors import ConfigError

GRID_KEYS = ("include", "name", "datasets", "backbones", "weights", "seeds", "test_parameters", "method_grid",
             "dataset_params", "im_params", "recipe", "methods", "latency")


@dataclass
class Grid:
    """A loaded grid: its name, the file it came from, and its keys after ``include:`` merging."""

    name: str
    path: Path | None
    spec: dict[str, Any]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: mappings recursively, ``None`` deletes a key."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_grid_file(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """The keys of one grid file with its includes merged under it (recursively)."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise ConfigError(f"grid include cycle: {cycle}; remove one of these include: lines")
    data = read_mapping(path, GRID_KEYS, "grid", f" (included from {chain[-1]})" if chain else "")
    includes = data.pop("include", None) or []
    includes = [includes] if isinstance(includes, str) else includes
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"grid {path}: include: must be a file name or a list of file names")
    merged: dict[str, Any] = {}
    for inc in includes:
        merged = _merge(merged, _read_grid_file(path.parent / inc, (*chain, path)))
    merged.pop("name", None)        # a grid's name is its own, never inherited
    return _merge(merged, data)


def load_grid(path: str | Path, overrides: Sequence[str] = ()) -> Grid:
    """Read a grid file, merge its ``include:`` chain, apply ``--set`` overrides.

    Args:
        path: the grid's YAML file.
        overrides: ``KEY=VALUE`` with a dotted key into the grid and a YAML value
            (``seeds=[0]``, ``methods.jei.epochs=5``, ``datasets=mnist``; ``methods.jei=null`` removes).

    Raises:
        ConfigError: a missing or malformed file, an unknown key, an include cycle.
    """
    path = Path(path)
    spec = _read_grid_file(path, ())
    for option in overrides:
        key, value = parse_set(option)
        parts = key.split(".")
        if parts[0] not in GRID_KEYS or parts[0] == "include":
            raise ConfigError(f"--set {key}: not a grid key{_did_you_mean(parts[0], GRID_KEYS)}; "
                              f"a sweep's --set takes a dotted grid key, e.g. seeds=[0] or methods.jei.epochs=5")
        node = spec
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if value is None:               # like null in an including grid: remove the entry
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    name = str(spec.pop("name", None) or path.stem)
    return Grid(name=name, path=path, spec=spec)


def _as_list(value: Any, what: str, grid: Grid) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return value
    raise ConfigError(f"grid {grid.name}: {what} must be a name or a list, got {type(value).__name__}")


def _values(value: Any, default: Any) -> list[Any]:
    """The values a grid entry sweeps (see the module doc: a list sweeps unless the default is a list)."""
    if isinstance(default, list):
        if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            return value
        return [value]
    return value if isinstance(value, list) else [value]


def _product(params: dict[str, Any], defaults: dict[str, Any]) -> list[dict[str, Any]]:
    keys = list(params)
    axes = [_values(params[k], defaults.get(k)) for k in keys]
    for k, axis in zip(keys, axes):
        if not axis:
            raise ConfigError(f"parameter {k}: an empty list sweeps nothing; give at least one value")
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def expand(grid: Grid, data_dir: Path | None = None) -> list[RunConfig]:
    """Every run of the grid, fully resolved, in grid order, one per run id (``data_dir``: where a
    recipe that depends on the data reads it, :func:`eebench.harness.config.resolve_recipe`).

    Returns:
        the configs; two grid entries that resolve to the same configuration give one run.

    Raises:
        UnknownNameError: an unknown method, dataset or backbone (with the valid names).
        ConfigError: an unknown parameter, a value of the wrong type, a malformed grid entry.
    """
    from eebench.backbones.training import RECIPE_DEFAULTS
    from eebench.data.spec import DATASETS
    from eebench.harness.im_stage import IM_PARAMETERS
    from eebench.harness.method import load_methods

    spec = grid.spec
    datasets = _as_list(spec.get("datasets"), "datasets", grid) or ["digits"]
    backbones = _as_list(spec.get("backbones"), "backbones", grid) or [None]
    weights_list = _as_list(spec.get("weights"), "weights", grid) or [None]
    seeds_spec = spec.get("seeds", [0])
    if isinstance(seeds_spec, int) and not isinstance(seeds_spec, bool):
        seeds = list(range(seeds_spec))
    else:
        seeds = _as_list(seeds_spec, "seeds", grid)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"grid {grid.name}: seeds must be a list of ints or a count, got {seeds_spec!r}")
    methods_spec = spec.get("methods")
    if isinstance(methods_spec, (str, list)):
        methods_spec = {m: {} for m in _as_list(methods_spec, "methods", grid)}
    if not isinstance(methods_spec, dict) or not methods_spec:
        raise ConfigError(f"grid {grid.name}: methods: must list at least one method, "
                          f"e.g. methods: {{threshold: {{}}}}")
    sections = {key: spec.get(key) or {} for key in ("dataset_params", "im_params", "recipe")}
    for key, value in sections.items():
        if not isinstance(value, dict):
            raise ConfigError(f"grid {grid.name}: {key} must be a mapping")
    im_combos = _product(sections["im_params"], IM_PARAMETERS)
    recipe_combos = _product(sections["recipe"], RECIPE_DEFAULTS)
    registry = load_methods()
    configs: dict[str, RunConfig] = {}
    for method_name, params in methods_spec.items():
        method = registry.get(str(method_name))
        params = params or {}
        if not isinstance(params, dict):
            raise ConfigError(f"grid {grid.name}: methods.{method_name} must be a mapping of parameters, "
                              f"got {type(params).__name__}")
        base: dict[str, Any] = dict(method.test_parameters) if spec.get("test_parameters") else {}
        declared = {k: list(v) for k, v in method.grid.items()} if spec.get("method_grid") else {}
        user_combos = _product(params, method.parameters)
        grid_combos = [dict(zip(declared, c)) for c in itertools.product(*declared.values())] if declared else [{}]
        for dataset in datasets:
            dspec = DATASETS.get(str(dataset))
            for dparams in _product(sections["dataset_params"], dspec.default_parameters()):
                for backbone, weights in itertools.product(backbones, weights_list):
                    for combo_grid, combo, im_combo, recipe in itertools.product(grid_combos, user_combos, im_combos,
                                                                                 recipe_combos):
                        for seed in seeds:
                            cfg = from_dict({"method": str(method_name), "dataset": str(dataset), "backbone": backbone,
                                             "seed": seed, "weights": weights,
                                             "method_params": {**base, **combo_grid, **combo},
                                             "dataset_params": dparams, "im_params": im_combo, "recipe": recipe},
                                            data_dir)
                            configs.setdefault(cfg.run_id, cfg)
    return list(configs.values())
