"""Run configuration: method, dataset, backbone, seed and their parameters, fully resolved.

Sources, later ones winning: the registered defaults; a YAML file (``--config``); the CLI flags
(``--method``, ``--dataset``, ``--backbone``, ``--seed``); ``--set key=value`` options. Keys of
``--set`` are ``method.<param>``, ``dataset.<param>``, ``im.<param>`` (the shared IM stage), or one of ``method``, ``dataset``,
``backbone``, ``weights``, ``seed``; values are parsed as YAML (``--set method.lambdas=[0.1,1]``).
``weights`` (``auto``, ``published``, ``trained``) says which backbone weights a run uses; ``auto``
resolves to ``published`` where the backbone's published checkpoint fits the dataset.

A YAML config has the same shape as the ``config`` of a run record::

    method: jei
    dataset: cifar10
    backbone: cifar_resnet56
    seed: 0
    method_params: {im_loss: uniform}
    dataset_params: {split_seed: 0}
    im_params: {epochs: 20}

The run id is a hash of the resolved config, stable across machines and sessions.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from eebench.errors import ConfigError
from eebench.params import Constraint

TOP_KEYS = ("method", "dataset", "backbone", "weights", "seed", "method_params", "dataset_params", "im_params",
            "recipe", "backbone_params")
PARAM_SECTIONS = ("method_params", "dataset_params", "im_params", "recipe", "backbone_params")
#: Backbone parameters (``--set backbone.KEY=VALUE``) that are not model keywords: where the exits
#: sit (``timm:NAME`` backbones). Other ``backbone.KEY`` go to the recipe's ``model_kwargs``.
BACKBONE_PARAMETERS: dict[str, Any] = {"exits": None}
#: Dataset parameters added after run ids existed: left out of the id at these values, which keep
#: the data as it was.
NEUTRAL_DATASET_PARAMS: dict[str, Any] = {"train_fraction": 1.0}


@dataclass
class RunConfig:
    """A fully resolved run configuration (what the run id is computed from)."""

    method: str
    dataset: str
    backbone: str
    seed: int = 0
    weights: str = "published"  # published | trained (see eebench.backbones.weights.load_backbone)
    method_params: dict[str, Any] = field(default_factory=dict)
    dataset_params: dict[str, Any] = field(default_factory=dict)
    im_params: dict[str, Any] = field(default_factory=dict)  # the shared IM stage (eebench.harness.im_stage)
    recipe: dict[str, Any] = field(default_factory=dict)     # of trained weights ({} for published ones)
    backbone_params: dict[str, Any] = field(default_factory=dict)  # where the exits sit (timm:NAME)

    def to_dict(self) -> dict[str, Any]:
        """The config as a dict; ``recipe`` only for trained weights, ``backbone_params`` only where
        set, and :data:`NEUTRAL_DATASET_PARAMS` only where not neutral (older runs keep their ids)."""
        out = copy.deepcopy(asdict(self))
        for key in ("recipe", "backbone_params"):
            if not out[key]:
                del out[key]
        for key, neutral in NEUTRAL_DATASET_PARAMS.items():
            if out["dataset_params"].get(key, neutral) == neutral:
                out["dataset_params"].pop(key, None)
        return out

    @property
    def run_id(self) -> str:
        """``<method>-<dataset>-<backbone>-s<seed>-<hash10>`` (names as file-name components,
        :func:`eebench.paths.slug`), the hash over the resolved config."""
        from eebench.paths import slug

        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
        return f"{self.method}-{slug(self.dataset)}-{slug(self.backbone)}-s{self.seed}-{digest}"


def parse_value(text: str, key: str) -> Any:
    """A ``--set`` value parsed as YAML (``0.5`` → float, ``[1,2]`` → list, ``uniform`` → str).

    Raises:
        ConfigError: the value is not valid YAML.
    """
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"--set {key}={text}: the value is not valid YAML ({problem})") from None


def parse_set(option: str) -> tuple[str, Any]:
    """``"method.lr=0.1"`` → ``("method.lr", 0.1)``.

    Raises:
        ConfigError: no ``=``, or an empty key.
    """
    key, sep, value = option.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"malformed --set '{option}': expected KEY=VALUE, e.g. --set method.lr=0.05")
    return key, parse_value(value, key)


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)``.

    Raises:
        ConfigError: not valid YAML: "malformed YAML in WHERE: line L, column C: problem".
    """
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"malformed YAML in {where}: {at}{problem}") from None


def read_mapping(path: Path, keys: Sequence[str], what: str, where: str = "") -> dict[str, Any]:
    """The YAML mapping in file ``path`` (empty for an empty file), whose keys must be among ``keys``.

    Args:
        what: "config", "grid": the kind of file, named in the messages.
        where: appended to the message when the file cannot be read, e.g. " (included from X)".

    Raises:
        ConfigError: the file cannot be read, is not valid YAML (the message gives line and column),
            is not a mapping, or has an unknown key (with a "did you mean").
    """
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}{where}: {e.strerror}") from None
    data = parse_yaml(text, f"{what} {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of {', '.join(keys)}; got {type(data).__name__}")
    for key in data:
        if key not in keys:
            raise ConfigError(f"{what} {path}: unknown key '{key}'{_did_you_mean(str(key), keys)}; "
                              f"valid: {', '.join(keys)}")
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML run config.

    Raises:
        ConfigError: see :func:`read_mapping`; a ``*_params`` or ``recipe`` key that is not a mapping.
    """
    path = Path(path)
    data = read_mapping(path, TOP_KEYS, "config")
    for key in PARAM_SECTIONS:
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ConfigError(f"config {path}: '{key}' must be a mapping, got {type(data[key]).__name__}")
    return data


def _did_you_mean(key: str, valid: Any) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce_number(value: Any, default: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string; read it as the number the default's type asks for."""
    if isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            return int(value) if isinstance(default, int) else float(value)
        except ValueError:
            return value
    if isinstance(value, list) and isinstance(default, list) and default and isinstance(default[0], float):
        return [_coerce_number(v, default[0]) for v in value]
    return value


def check_params(kind: str, owner: str, given: dict[str, Any], defaults: dict[str, Any],
                 constraints: dict[str, Constraint] | None = None) -> dict[str, Any]:
    """Merge ``given`` over ``defaults``, checking names, types and constraints.

    A value must have the default's type (an int is accepted for a float, a list for a list) and
    satisfy the parameter's declared constraint (:mod:`eebench.params`).

    Raises:
        ConfigError: an unknown name (with a "did you mean"), a value of the wrong type, or one the
            constraint rejects ("kind.key=value: must be in (0, inf)").
    """
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        if key not in defaults:
            raise ConfigError(f"{kind}.{key}: unknown parameter for {kind} '{owner}'{_did_you_mean(key, defaults)}; "
                              f"valid: {', '.join(sorted(defaults))}")
        default = defaults[key]
        value = _coerce_number(value, default)
        ok = (default is None or value is None or isinstance(value, type(default))
              or (isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)))
        if isinstance(default, (int, float)) and isinstance(value, bool) and not isinstance(default, bool):
            ok = False
        if not ok:
            raise ConfigError(f"{kind}.{key}={value!r}: expected {type(default).__name__} like the default "
                              f"{default!r}, got {type(value).__name__}")
        value = float(value) if isinstance(default, float) and isinstance(value, int) else value
        rule = (constraints or {}).get(key)
        if rule is not None and not rule.ok(value):
            raise ConfigError(f"{kind}.{key}={value!r}: must be {rule.describe()}")
        out[key] = value
    return out


def resolve(method: str | None = None, dataset: str | None = None, backbone: str | None = None,
            seed: int | None = None, sets: list[str] | None = None, config_file: str | Path | None = None,
            data_dir: Path | None = None) -> RunConfig:
    """Resolve a run configuration from a YAML file, CLI flags and ``--set`` options.

    ``--set`` keys: ``method.P``, ``dataset.P``, ``im.P``, ``recipe.K`` (or a bare recipe key, e.g.
    ``epochs``), ``backbone.exits`` and other ``backbone.K`` (model keywords of a ``timm:NAME``
    backbone, into the recipe's ``model_kwargs``), and ``method``, ``dataset``, ``backbone``,
    ``weights``, ``seed``. ``data_dir`` is where a recipe that depends on the data reads it.

    Raises:
        UnknownNameError: an unknown method, dataset or backbone (exit status 2).
        ConfigError: a malformed option or file, an unknown parameter, a value of the wrong type.
    """
    data = load_yaml(config_file) if config_file else {}
    data = {**{k: {} for k in PARAM_SECTIONS}, **{k: v for k, v in data.items() if v is not None}}
    for key, value in (("method", method), ("dataset", dataset), ("backbone", backbone), ("seed", seed)):
        if value is not None:
            data[key] = value
    for option in sets or []:
        key, value = parse_set(option)
        place_set(data, key, value, top=("method", "dataset", "backbone", "weights", "seed"))
    return from_dict(data, data_dir)


def place_set(data: dict[str, Any], key: str, value: Any, top: Sequence[str],
              sections: Sequence[str] = ("method", "dataset", "im")) -> None:
    """Put one ``--set key=value`` into a config mapping (see :func:`resolve` for the keys).

    Raises:
        ConfigError: a key that is none of those.
    """
    from eebench.backbones.training import RECIPE_DEFAULTS

    head, _, rest = key.partition(".")
    if head in sections and rest:
        data[f"{head}_params"][rest] = value
    elif head == "recipe" and rest:
        data["recipe"][rest] = value
    elif head == "backbone" and rest:
        if rest in BACKBONE_PARAMETERS:
            data["backbone_params"][rest] = value
        else:
            data["recipe"].setdefault("model_kwargs", {})[rest] = value
    elif key in top:
        data[key] = value
    elif key in RECIPE_DEFAULTS:
        data["recipe"][key] = value
    else:
        raise ConfigError(f"--set {key}: unknown key{_did_you_mean(key, [*top, *RECIPE_DEFAULTS])}; use "
                          f"{', '.join(s + '.<param>' for s in sections)}, recipe.<key> (or a recipe key: "
                          f"{', '.join(RECIPE_DEFAULTS)}), backbone.<key>, or {', '.join(top)}")


def from_dict(data: dict[str, Any], data_dir: Path | None = None) -> RunConfig:
    """Resolve a run configuration from a mapping with the keys of a run record's ``config``
    (:data:`TOP_KEYS`; missing ones take their defaults): names made canonical, parameters merged
    over their defaults and checked against their types and constraints.

    Raises:
        UnknownNameError: an unknown method, dataset or backbone (exit status 2).
        ConfigError: an unknown key or parameter, a value of the wrong type or out of its range.
    """
    from eebench.backbones import BACKBONES
    from eebench.data.spec import DATASETS
    from eebench.harness.im_stage import IM_CONSTRAINTS, IM_PARAMETERS
    from eebench.harness.method import load_methods

    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise ConfigError(f"unknown config key '{unknown[0]}'{_did_you_mean(str(unknown[0]), TOP_KEYS)}; "
                          f"valid: {', '.join(TOP_KEYS)}")
    data = {**{k: {} for k in PARAM_SECTIONS}, **{k: v for k, v in data.items() if v is not None}}
    for key in PARAM_SECTIONS:
        if not isinstance(data[key], dict):
            raise ConfigError(f"config '{key}' must be a mapping, got {type(data[key]).__name__}")
    if not data.get("method"):
        raise ConfigError("no method given: pass --method (see `eebench list methods`)")
    if not isinstance(data.get("seed", 0), int) or isinstance(data.get("seed", 0), bool) or data.get("seed", 0) < 0:
        raise ConfigError(f"seed={data['seed']!r}: expected an integer >= 0")
    methods = load_methods()
    method_name = methods.canonical(str(data["method"]))
    dataset_name = DATASETS.canonical(str(data.get("dataset") or "digits"))
    spec = DATASETS.get(dataset_name)
    backbone_name = BACKBONES.canonical(str(data.get("backbone") or spec.default_backbone))
    m = methods.get(method_name)
    dataset_params = check_params("dataset", dataset_name, data["dataset_params"], spec.default_parameters(),
                                  spec.constraints())
    if dataset_params.get("holdout") == "auto":
        dataset_params["holdout"] = resolve_holdout(backbone_name, dataset_name)
    weights = str(data.get("weights") or "auto")
    if weights not in ("auto", "published", "trained"):
        raise ConfigError(f"weights={weights!r}: must be auto, published or trained")
    if weights == "auto":
        from eebench.backbones import default_weights

        weights = default_weights(backbone_name, dataset_name)
    bspec = BACKBONES.get(backbone_name)
    backbone_params = check_params("backbone", backbone_name, data["backbone_params"], BACKBONE_PARAMETERS)
    if backbone_params["exits"] is not None and not bspec.generic:
        raise ConfigError(f"backbone.exits applies to timm:NAME backbones; {backbone_name} has its exits fixed "
                          f"(eebench list backbones)")
    backbone_params = {k: v for k, v in backbone_params.items() if v is not None}
    recipe = resolve_recipe(backbone_name, dataset_name, weights, data["recipe"], dataset_params, data_dir)
    check_weights_unseen(backbone_name, dataset_name, weights, recipe)
    if bspec.generic and "exits" in backbone_params:
        from eebench.backbones.timm_generic import check_exits

        check_exits(bspec.timm_name, backbone_params["exits"], recipe.get("model_kwargs"))
    return RunConfig(
        method=method_name, dataset=dataset_name, backbone=backbone_name, seed=int(data.get("seed", 0)),
        weights=weights,
        method_params=check_params("method", method_name, data["method_params"], m.parameters, m.constraints),
        dataset_params=dataset_params,
        im_params=check_params("im", "stage", data["im_params"], IM_PARAMETERS, IM_CONSTRAINTS),
        recipe=recipe, backbone_params=backbone_params)


def resolve_recipe(backbone: str, dataset: str, weights: str, given: dict[str, Any], dataset_params: dict[str, Any],
                   data_dir: Path | None = None) -> dict[str, Any]:
    """The full training recipe of trained weights ({} for published ones): the backbone's default
    for the dataset (read from the data, loaded from ``data_dir``, where the backbone's recipe
    depends on it), ``given`` over it, checked; ``model_kwargs`` merged key by key.

    Raises:
        ConfigError: a recipe for published weights, an unknown key, a value of the wrong type or out of
            range, model keywords for a backbone that takes none.
    """
    from eebench.backbones.training import OPTIONAL_RECIPE_KEYS, RECIPE_CONSTRAINTS, default_recipe, full_recipe
    from eebench.backbones import BACKBONES

    if weights != "trained":
        if given:
            extra = " (backbone.KEY model options are recipe keys)" if "model_kwargs" in given else ""
            raise ConfigError(f"recipe.* applies to trained weights only (weights={weights}){extra}: drop it or add "
                              f"--set weights=trained")
        return {}
    spec = BACKBONES.get(backbone)
    info = None
    if spec.recipe_for is not None:
        from eebench.data.splits import load_splits
        from eebench.data.splits import image_info
        from eebench.paths import data_dir as default_data_dir

        info = image_info(load_splits(dataset, dataset_params, default_data_dir(data_dir)))
    default = default_recipe(backbone, dataset, info)
    given = dict(given)
    model_kwargs = given.pop("model_kwargs", None)
    if model_kwargs is not None and "model_kwargs" not in default:
        raise ConfigError(f"backbone.{next(iter(model_kwargs), 'KEY')}: model options apply to timm:NAME backbones; "
                          f"{backbone} takes none")
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise ConfigError(f"recipe.model_kwargs must be a mapping, got {type(model_kwargs).__name__}")
    recipe = full_recipe(check_params("recipe", backbone, given, {k: v for k, v in default.items()
                                                                 if k not in OPTIONAL_RECIPE_KEYS}, RECIPE_CONSTRAINTS))
    for key in OPTIONAL_RECIPE_KEYS:
        if key in default:
            recipe[key] = {**default[key], **(model_kwargs or {})}
    return recipe


def check_weights_unseen(backbone: str, dataset: str, weights: str, recipe: dict[str, Any]) -> None:
    """Refuse weights that saw more than ``dataset``'s train split: for a dataset cut from another's
    train split (a long tail, ``DatasetSpec.train_subset_of``), the backbone's published checkpoint of
    that dataset, used as it is or as the start of a fine-tune.

    Raises:
        ConfigError: such weights (one line naming them and what to use instead).
    """
    from eebench.backbones import BACKBONES
    from eebench.data.spec import DATASETS

    base = DATASETS.get(dataset).train_subset_of
    spec = BACKBONES.get(backbone)
    if base is None or spec.pretrained_on != base:
        return
    if weights == "published" or recipe.get("init") == "pretrained":
        raise ConfigError(f"{spec.name}'s published weights saw all of {base}'s balanced train split, of which "
                          f"{dataset}'s train split is a part: train a backbone from scratch on {dataset} "
                          f"(--backbone {DATASETS.get(dataset).default_backbone}, or --set recipe.init=scratch)")


def resolve_holdout(backbone: str, dataset: str) -> str:
    """``holdout: auto`` → "test" when the backbone's published weights were trained on the whole
    train split of ``dataset`` (val/calib must be images it has not fitted), else "train"."""
    from eebench.backbones import BACKBONES

    return "test" if BACKBONES.get(backbone).pretrained_on == dataset else "train"
