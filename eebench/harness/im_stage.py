"""The shared IM stage: the IMs every method that starts from trained IMs starts from.

The K−1 IMs are trained on the plain sum of per-exit cross-entropies Σ_k ℓ_k (``methods.md`` §1)
with SGD (momentum, weight decay, cosine schedule) on ``train``; each IM is kept at the epoch of
its lowest error on ``val`` (ties: lower cross-entropy), and training stops once no IM has
improved for ``patience`` epochs (:func:`eebench.harness.training.train_ims`). The result is cached on disk per (feature cache
entry, IM design, number of classes, seed, recipe), so the threshold baseline, EENet, JEI-DNN and
differentiable branching of one seed start from the same IMs, trained once. BoostedNet and
L2W-DEN train their IMs with their own losses for the same number of epochs
(:attr:`eebench.harness.method.ExitTask.im_schedule`). Decisions behind the recipe: ``docs/decisions.md``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch
from filelock import FileLock
from safetensors import SafetensorError
from torch import nn

from eebench.errors import CorruptCacheError
from eebench.harness.features import SplitFeatures
from eebench.integrity import load_verified, save_hashed
from eebench.params import AT_LEAST_ONE, Constraint
from eebench.harness.training import SGD_CONSTRAINTS, ProgressFactory, SGDSchedule, no_progress, train_ims

log = logging.getLogger(__name__)

IM_STAGE_VERSION = 2   # 2: tensors carry content hashes

#: The recipe of the shared IM stage (``--set im.KEY=VALUE``): JEI-DNN's SGD (``methods.md`` §6)
#: at batch 256 with the learning rate scaled linearly from its 0.01 at batch 64.
IM_PARAMETERS: dict[str, Any] = {
    "lr": 0.04,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "lr_min": 2e-4,
    "batch_size": 256,
    "epochs": 20,       # at most; also the IM epochs of methods that train their own IMs
    "patience": 5,      # stop once no IM's val error has improved for this many epochs
}
IM_CONSTRAINTS: dict[str, Constraint] = {**SGD_CONSTRAINTS, "patience": AT_LEAST_ONE}


def im_schedule(params: dict[str, Any]) -> SGDSchedule:
    """The stage's :class:`SGDSchedule` from resolved ``im`` parameters."""
    return SGDSchedule.from_params(params)


class IMStage:
    """The shared IM stage of one run, trained on first use and cached under ``root/ims/``.

    Args:
        root: the cache root (``--cache-dir``).
        feature_key: the feature cache entry the IMs train on.
        make_ims: ``() -> nn.ModuleList`` of K−1 fresh IMs (the backbone's IM design).
        train, val: features the IMs train on and are selected on.
        params: resolved ``im`` parameters (:data:`IM_PARAMETERS`).
        seed: the run's seed (initialisation and mini-batch order).
        progress: a progress factory for the training epochs.
    """

    def __init__(self, root: Path, feature_key: str, make_ims: Callable[[], nn.ModuleList], train: SplitFeatures,
                 val: SplitFeatures, params: dict[str, Any], seed: int, progress: ProgressFactory = no_progress):
        self.folder = Path(root) / "ims"
        self.make_ims, self.train, self.val = make_ims, train, val
        self.params, self.seed, self.progress = dict(params), int(seed), progress
        design = repr(make_ims())
        blob = json.dumps({"features": feature_key, "design": design, "params": self.params, "seed": self.seed,
                           "version": IM_STAGE_VERSION}, sort_keys=True)
        self.key = hashlib.sha256(blob.encode()).hexdigest()[:20]
        self._ims: nn.ModuleList | None = None
        self.info: dict[str, Any] | None = None

    @property
    def path(self) -> Path:
        return self.folder / f"{self.key}.safetensors"

    def __call__(self) -> nn.ModuleList:
        """A fresh copy of the stage's trained IMs (trained, or read from the cache, on the first call).

        Raises:
            CorruptCacheError: the cached file cannot be read.
            NonFiniteLossError: training diverged.
        """
        if self._ims is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.folder / f".{self.key}.lock")):
                if self.path.exists():
                    self._ims = self._load()
                    log.info("IM stage: reusing %s", self.path)
                else:
                    self._ims = self._train()
            self.info = {"key": self.key, "reused": self._reused, **self._meta}
        return copy.deepcopy(self._ims)

    def _train(self) -> nn.ModuleList:
        torch.manual_seed(self.seed)
        ims = self.make_ims()
        schedule = im_schedule(self.params)
        with self.progress("IM stage", schedule.epochs) as bar:
            meta = train_ims(ims, self.train, schedule, torch.Generator().manual_seed(self.seed), "IM stage",
                             progress=bar, select_on=self.val, patience=int(self.params["patience"]))
        save_hashed(ims.state_dict(), self.path, metadata={"eebench_im_stage": json.dumps(meta)})
        self._meta, self._reused = meta, False
        log.info("IM stage: trained %d epochs (best per IM %s), cached %s", meta["epochs"], meta["best_epochs"],
                 self.path)
        return ims

    def _load(self) -> nn.ModuleList:
        try:
            tensors, metadata = load_verified(self.path)
            meta = json.loads(metadata["eebench_im_stage"])
            ims = self.make_ims()
            ims.load_state_dict(tensors)
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
            raise CorruptCacheError(f"IM stage cache {self.path} is unreadable ({type(e).__name__}); delete it "
                                    f"(rm {self.path}) and run again") from e
        self._meta, self._reused = meta, True
        return ims
