"""A finished run, replayed without refitting: its fitted exits (``exits.safetensors``, written
beside the record by :func:`eebench.harness.runner.save_exits`) rebuilt on the run's backbone and features."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from eebench.harness.config import from_dict
from eebench.errors import CorruptCacheError, UsageError
from eebench.integrity import load_verified
from eebench.harness.method import FittedMethod, OperatingPoint, load_methods
from eebench.harness.runner import EXITS_FILE, Prepared, RunOptions, prepare_features


@dataclass
class Replayed:
    """A run's record, its backbone and features (:class:`~eebench.harness.runner.Prepared`) and its fitted method."""

    record: dict[str, Any]
    prep: Prepared
    fitted: FittedMethod

    def predict(self, split: str = "test") -> list[OperatingPoint]:
        """The fitted method's operating points on ``split`` (val, calib or test), as the run made them."""
        return self.fitted.predict(self.prep.features[split].in_memory())


def read_record(run_dir: Path) -> dict[str, Any]:
    """The run's ``record.json``.

    Raises:
        UsageError: no record there (not a run directory, or a run that did not finish).
    """
    path = Path(run_dir) / "record.json"
    if not path.exists():
        raise UsageError(f"{run_dir}: no record.json; pass the directory of a finished run (runs/<run id>)")
    return json.loads(path.read_text())


def exits_path(run_dir: Path) -> Path:
    """The run's ``exits.safetensors``.

    Raises:
        UsageError: the run has none (it predates saved exits): rerun it.
    """
    path = Path(run_dir) / EXITS_FILE
    if not path.exists():
        raise UsageError(f"{run_dir} has no {EXITS_FILE} (a run from before fitted exits were saved); rerun it "
                         f"with `eebench run` (same options) and use the new run directory")
    return path


def load_fitted(run_dir: Path, method: str, make_ims: Any) -> FittedMethod:
    """The run's fitted method, rebuilt from ``exits.safetensors``.

    Args:
        method: the run's method (its record's ``config.method``).
        make_ims: ``() -> nn.ModuleList`` of K−1 fresh IMs of the run's IM design.

    Raises:
        UsageError: the run has no saved exits (it predates them): rerun it.
        CorruptCacheError: the file fails its content hashes or does not fit the method.
    """
    path = exits_path(run_dir)
    try:
        tensors, metadata = load_verified(path)
        info = json.loads(metadata["eebench_exits"])
        if info["method"] != method:
            raise ValueError(f"it holds the exits of {info['method']}, the record says {method}")
        return load_methods().get(method).restore(tensors, info["settings"], make_ims)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        raise CorruptCacheError(f"{path} cannot be replayed ({type(e).__name__}: {str(e)[:160]}); rerun the run "
                                f"to write it again") from e


def replay(run_dir: Path, options: RunOptions) -> Replayed:
    """The run of ``run_dir`` with its backbone, features (from the cache, or built) and fitted exits.

    Args:
        options: where the data, weights and cache are (``--data-dir``, ``--weights-dir``, as for the run).

    Raises:
        UsageError, CorruptCacheError: see :func:`read_record`, :func:`load_fitted`;
        DataUnavailableError: the run's data cannot be read.
    """
    record = read_record(run_dir)
    config = from_dict(record["config"], options.data_dir)
    exits_path(run_dir)          # the input alone decides: before the data and the backbone load
    prep = prepare_features(config.dataset, config.backbone, config.dataset_params, options, None, config.weights,
                            config.recipe, config.backbone_params)
    return Replayed(record, prep, load_fitted(run_dir, config.method, prep.make_ims))
