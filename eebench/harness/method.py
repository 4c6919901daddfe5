"""The method plugin API.

A method is a file in ``methods/`` defining a subclass of :class:`ExitMethod` decorated with
:func:`register_method`. It declares its name, parameters with defaults, the grid a sweep
expands and a tiny test configuration, and implements :meth:`ExitMethod.fit`, which trains on
the cached features of ``train`` (and may select on ``val``) and returns a :class:`FittedMethod`.
The fitted method turns the features of any split into :class:`OperatingPoint` objects. Nothing
in a method reads files, parses arguments or computes metrics (``design.md``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from eebench.harness.costs import CostProfile
from eebench.harness.features import SplitFeatures
from eebench.params import Constraint
from eebench.registry import Registry
from eebench.harness.training import ProgressFactory, SGDSchedule, no_progress


@dataclass
class ExitTask:
    """Everything a method may use to fit: never the ``calib`` or ``test`` split.

    Attributes:
        train: features the IMs learn on, by mini-batches (``rows(idx)``, ``logits[idx]``,
            ``labels[idx]``): a large split stays on disk (:class:`~eebench.harness.features.ShardedRows`).
        policy: features the exit policy learns on (thresholds, gates, schedulers): the same rule
            for every method (``docs/decisions.md``, "Where exit policies learn").
        val: features every choice is made on (among a method's settings, early stopping).
        num_classes: C.
        costs: the backbone's cost profile (blocks and IMs, in Mul-Adds).
        im_factory: ``k -> nn.Module``, a fresh IM for exit k < K (the backbone's IM design).
        trained_ims: ``() -> nn.ModuleList``, a fresh copy of the shared IM stage's K−1 trained IMs
            (:mod:`eebench.harness.im_stage`), for methods that start from trained IMs.
        im_schedule: the shared stage's recipe; a method that trains IMs its own way trains them for
            ``im_schedule.epochs`` epochs (the same IM training budget).
        progress: ``(description, total) -> context manager`` with ``update(n)``: how a method
            reports progress (the harness draws the bars).
    """

    train: SplitFeatures
    policy: SplitFeatures
    val: SplitFeatures
    num_classes: int
    costs: CostProfile
    im_factory: Callable[[int], nn.Module]
    trained_ims: Callable[[], nn.ModuleList]
    im_schedule: SGDSchedule
    progress: ProgressFactory = no_progress

    @property
    def num_exits(self) -> int:
        """K (exit K is the backbone's own frozen classifier)."""
        return self.costs.num_exits

    def make_ims(self) -> nn.ModuleList:
        """Fresh IMs for exits 1..K−1, ``ModuleList`` of K−1 modules."""
        return nn.ModuleList(self.im_factory(k) for k in range(1, self.num_exits))


@dataclass
class OperatingPoint:
    """What a method answers for one setting of its trade-off knob, on one split.

    Attributes:
        setting: the knob, e.g. ``{"lambda": 0.5}`` or ``{"q": 0.75}``; the same keys and order
            across splits, so that points of ``calib`` and ``test`` pair up.
        exit_index: ``[N]`` int64, the exit (0-based, 0..K−1) each sample leaves at.
        exit_probs: ``[N, K, C]`` float32, the probability vector each exit would answer
            (the answered one is ``exit_probs[n, exit_index[n]]``); may be shared between points.
        gate_muladds: K−1 ints, Mul-Adds of the gate evaluated at each exit k < K.
    """

    setting: dict[str, Any]
    exit_index: np.ndarray
    exit_probs: torch.Tensor
    gate_muladds: list[int] = field(default_factory=list)

    @property
    def answered_probs(self) -> torch.Tensor:
        """``[N, C]``: the probability vector answered by each sample's exit."""
        idx = torch.as_tensor(self.exit_index, dtype=torch.long)
        return self.exit_probs[torch.arange(len(idx)), idx]


class ExitRule:
    """One operating point's decisions made exit by exit, on the samples still running: what
    :meth:`FittedMethod.predict` computes on cached features, in the order a deployed network
    computes it (:mod:`eebench.deploy.runtime`). The arithmetic is :meth:`~FittedMethod.predict`'s, so that
    both answer every sample alike.

    ``state`` is what a decision carries to the next exit (an ensemble, earlier scores): None or a
    tensor or tuple of tensors with the samples along dim 0; the runtime keeps the rows of the
    samples that go on.

    Attributes:
        modules: the IMs, gates and schedulers the rule runs (the runtime moves them to its device).
    """

    modules: list[nn.Module]

    def at_exit(self, k: int, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Exit ``k`` < K (1-based): the IM input ``[B, D_k]`` float32 → ``(exits, probs, state)``:
        ``[B]`` bool, True for the samples that leave here, and ``[B, C]`` the probabilities exit k answers."""
        raise NotImplementedError

    def at_last(self, logits: torch.Tensor, state: Any) -> torch.Tensor:
        """Exit K: the backbone's logits ``[B, C]`` → the probabilities it answers ``[B, C]``."""
        return logits.softmax(-1)


class FittedMethod:
    """A trained method: maps the features of any split to its operating points."""

    #: Mul-Adds of the gate at each exit k < K (zeros for a confidence threshold).
    gate_muladds: list[int]

    def predict(self, split: SplitFeatures) -> list[OperatingPoint]:
        """Operating points for every sample of ``split``, one per knob setting."""
        raise NotImplementedError

    def exit_rules(self) -> list[ExitRule]:
        """The sequential form of each operating point, in :meth:`predict`'s order."""
        raise NotImplementedError

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """What :meth:`ExitMethod.restore` rebuilds this fitted method from, without refitting:
        ``(tensors, settings)``: the parameters of its IMs, gates and schedulers and its thresholds
        (:func:`pack`), and JSON-able settings (the knob values, the shapes to rebuild)."""
        raise NotImplementedError


def pack(**parts: nn.Module | torch.Tensor) -> dict[str, torch.Tensor]:
    """Tensors to save: a module's state as ``<name>.<key>``, a tensor as ``<name>`` (CPU, contiguous copies)."""
    out = {}
    for name, part in parts.items():
        items = part.state_dict().items() if isinstance(part, nn.Module) else [(None, part)]
        for key, t in items:
            out[name if key is None else f"{name}.{key}"] = t.detach().cpu().contiguous().clone()
    return out


def unpack(tensors: dict[str, torch.Tensor], name: str, module: nn.Module) -> nn.Module:
    """Load the ``<name>.*`` tensors of :func:`pack` into ``module`` (strictly) and return it, in eval mode.

    Raises:
        RuntimeError: missing or unexpected keys, or shapes that differ (a module built unlike the saved one).
    """
    prefix = f"{name}."
    module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return module.eval()


class ExitMethod:
    """Base class of a method plugin.

    Class attributes:
        name: CLI name (``--method``).
        paper: the source, e.g. "Regol et al., ICLR 2024".
        parameters: every parameter with its default; ``--set method.KEY=VALUE`` overrides.
        constraints: beside them, what each parameter allows (:mod:`eebench.params`), checked with
            the whole configuration before anything runs.
        grid: parameters a sweep expands, name → list of values.
        test_parameters: overrides for a tiny configuration (CI, smoke grids).
    """

    name: ClassVar[str]
    paper: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    parameters: ClassVar[dict[str, Any]] = {}
    constraints: ClassVar[dict[str, Constraint]] = {}
    grid: ClassVar[dict[str, list[Any]]] = {}
    test_parameters: ClassVar[dict[str, Any]] = {}

    def fit(self, task: ExitTask, params: dict[str, Any], seed: int) -> FittedMethod:
        """Train on ``task.train`` (select on ``task.val``) and return the fitted method.

        Raises:
            NonFiniteLossError: a loss became NaN or infinite.
        """
        raise NotImplementedError

    def restore(self, tensors: dict[str, torch.Tensor], settings: dict[str, Any],
                make_ims: Callable[[], nn.ModuleList]) -> FittedMethod:
        """The fitted method :meth:`FittedMethod.state` described, rebuilt without training.

        Args:
            make_ims: ``() -> nn.ModuleList`` of K−1 fresh IMs (the backbone's IM design).

        Raises:
            RuntimeError, KeyError: ``tensors`` or ``settings`` do not fit this method and IM design.
        """
        raise NotImplementedError


METHODS: Registry[ExitMethod] = Registry("method", package="methods")


def register_method(cls: type[ExitMethod]) -> type[ExitMethod]:
    """Class decorator: register an instance of ``cls`` under ``cls.name``."""
    METHODS.register(cls.name, cls(), tuple(cls.aliases))
    return cls


def load_methods() -> Registry[ExitMethod]:
    """The method registry, every plugin module of the ``methods`` package imported."""
    return METHODS.discover()
