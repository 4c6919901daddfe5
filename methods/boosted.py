"""BoostedNet: boosted dynamic networks (``methods.md`` §2).

Yu et al., "Boosted Dynamic Neural Networks", AAAI 2023 (SHI-Labs/Boosted-Dynamic-Networks,
``models/dynamic_net.py``, ``train_cifar100.py``). Exit k answers with the ensemble

    E_k = z_k + γ·E_{k−1},  E_0 = 0,

and every IM is trained, all in one step per mini-batch, on the residual of the frozen,
down-weighted ensemble before it:

    L = Σ_{k<K} CE(z_k + sg(γ·E_{k−1}), y),  sg = stop-gradient.

Exit K is the backbone's frozen classifier: its term of L is a constant (z_K is frozen and
E_{K−1} is stopped), so it is left out of the sum. Its answer is the faithful ensemble
E_K = z_K + γ·E_{K−1} (``final_exit: ensemble``, the default); ``final_exit: backbone`` answers
with z_K alone, an ablation for a final head that was not trained as a booster. The original's
gradient rescaling only matters when the backbone trains; the backbone is frozen here, so it is
omitted. The IMs train from scratch with this loss for the shared IM stage's number of epochs and
recipe (:attr:`eebench.harness.method.ExitTask.im_schedule`) at the official batch of 64, the stage's learning
rate scaled linearly to it, kept at the epoch of the lowest summed val error of their ensembles
(``docs/decisions.md`` M7).
Exits are chosen by the MSDNet threshold search on softmax(E_k) on the policy split, one
operating point per budget level q (:class:`eebench.harness.exit_policy.ThresholdPolicy`); the gates cost
nothing.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eebench.method import (NON_NEGATIVE, POSITIVE, Q_GRID, ConfigError, Each, ExitMethod, ExitSteps, ExitTask, OneOf,
                            Range, SGDSchedule, SplitFeatures, ThresholdPolicy, all_exit_logits, eval_mode,
                            register_method, train_ims, unpack)

FINAL_EXITS = ("ensemble", "backbone")


def ensemble_logits(logits: torch.Tensor, gamma: float, final_exit: str = "ensemble") -> torch.Tensor:
    """BoostedNet's ensemble outputs E_k = z_k + γ·E_{k−1}, E_0 = 0 (Yu et al. 2023, eq. 2).

    Args:
        logits: ``[B, K, C]`` logits z_k of every exit, the frozen classifier last.
        gamma: γ, the weight of the previous ensemble.
        final_exit: "ensemble" — E_K = z_K + γ·E_{K−1}; "backbone" — E_K = z_K.

    Returns:
        ``[B, K, C]`` ensemble logits E_k (apply softmax for the answered probabilities).

    Raises:
        ConfigError: unknown ``final_exit``.
    """
    if final_exit not in FINAL_EXITS:
        raise ConfigError(f"method.final_exit={final_exit!r}: expected one of {', '.join(FINAL_EXITS)}")
    out, prev = [], torch.zeros_like(logits[:, 0])
    K = logits.shape[1]
    for k in range(K):
        if k == K - 1 and final_exit == "backbone":
            out.append(logits[:, k])
        else:
            prev = logits[:, k] + gamma * prev
            out.append(prev)
    return torch.stack(out, dim=1)


def boosted_losses(im_outputs: Sequence[torch.Tensor], labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-IM training losses CE(z_k + sg(γ·E_{k−1}), y), k = 1..K−1 (Yu et al. 2023, eq. 3).

    Each head sees the ensemble before it as a constant: no gradient from head k's loss reaches
    heads 1..k−1.

    Args:
        im_outputs: K−1 IM logits ``[B, C]``, exit order.
        labels: ``[B]`` int64.
        gamma: γ.

    Returns:
        ``[K−1]`` mean cross-entropies over the batch (their sum is the training loss).
    """
    losses, prev = [], torch.zeros_like(im_outputs[0])
    for z in im_outputs:
        ensemble = z + gamma * prev.detach()
        losses.append(F.cross_entropy(ensemble, labels))
        prev = ensemble
    return torch.stack(losses)


def train_boosted_ims(ims: nn.ModuleList, train: SplitFeatures, val: SplitFeatures, gamma: float,
                      schedule: SGDSchedule, generator: torch.Generator, where: str, progress: Any = None
                      ) -> dict[str, Any]:
    """Train the IMs with Σ_k CE(z_k + sg(γ·E_{k−1}), y), all heads in one SGD step per mini-batch,
    kept at the epoch of the lowest summed error of the exits' ensembles E_1..E_{K−1} on ``val``
    (:func:`eebench.harness.training.train_ims`).

    Raises:
        NonFiniteLossError: the loss became NaN or infinite.
    """
    def val_error(ims: nn.ModuleList, split: SplitFeatures) -> torch.Tensor:
        probs = boosted_probs(ims, split, gamma, "ensemble")[:, :-1]                    # [N, K−1, C]
        return (probs.argmax(-1) != split.labels[:, None]).float().mean(0)

    return train_ims(ims, train, schedule, generator, where, progress,
                     batch_loss=lambda logits, y: boosted_losses(logits, y, gamma).sum(), select_on=val,
                     criterion=val_error)


@torch.no_grad()
def boosted_probs(ims: nn.ModuleList, split: SplitFeatures, gamma: float, final_exit: str) -> torch.Tensor:
    """softmax(E_k) of every exit on a whole split, ``[N, K, C]`` (IMs in eval mode)."""
    with eval_mode(ims):
        return ensemble_logits(all_exit_logits(ims, split), gamma, final_exit).softmax(-1)


class BoostedSteps(ExitSteps):
    """softmax(E_k) exit by exit (:func:`ensemble_logits`); the state is E_{k−1}, ``[B, C]``."""

    def __init__(self, ims: nn.ModuleList, gamma: float, final_exit: str):
        self.ims, self.gamma, self.final_exit, self.modules = ims, gamma, final_exit, [ims]

    def at_exit(self, k: int, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        z = self.ims[k - 1](x)
        ensemble = z + self.gamma * (torch.zeros_like(z) if state is None else state)
        return ensemble.softmax(-1), ensemble

    def at_last(self, logits: torch.Tensor, state: Any) -> torch.Tensor:
        return (logits if self.final_exit == "backbone" else logits + self.gamma * state).softmax(-1)


@register_method
class Boosted(ExitMethod):
    name = "boosted"
    aliases = ("boostednet", "boosted-net")
    paper = "Yu et al., AAAI 2023 (Boosted Dynamic Neural Networks)"
    parameters: dict[str, Any] = {
        "gamma": 0.5,
        "final_exit": "ensemble",
        "batch_size": 64,          # the official recipe's; the IM stage's lr scaled linearly to it (decisions M7)
        "q_grid": Q_GRID,
    }
    constraints = {"gamma": NON_NEGATIVE, "final_exit": OneOf(FINAL_EXITS), "batch_size": Range(1),
                   "q_grid": Each(POSITIVE)}
    grid = {"gamma": [0.25, 0.5, 0.75, 1.0]}
    test_parameters: dict[str, Any] = {}

    def fit(self, task: ExitTask, params: dict[str, Any], seed: int) -> ThresholdPolicy:
        gamma, final_exit = float(params["gamma"]), params["final_exit"]
        torch.manual_seed(seed)
        ims = task.make_ims()
        stage, batch = task.im_schedule, int(params["batch_size"])
        schedule = dataclasses.replace(stage, batch_size=batch, lr=stage.lr * batch / stage.batch_size)
        with task.progress("boosted", schedule.epochs) as bar:
            train_boosted_ims(ims, task.train, task.val, gamma, schedule, torch.Generator().manual_seed(seed),
                              where=f"boosted (gamma={gamma}): IM training", progress=bar)
        return ThresholdPolicy(lambda split: boosted_probs(ims, split, gamma, final_exit), task.policy,
                               params["q_grid"], {"ims": ims}, {"gamma": gamma, "final_exit": final_exit},
                               steps=BoostedSteps(ims, gamma, final_exit))

    def restore(self, tensors: dict[str, torch.Tensor], settings: dict[str, Any],
                make_ims: Callable[[], nn.ModuleList]) -> ThresholdPolicy:
        ims, gamma, final_exit = unpack(tensors, "ims", make_ims()), settings["gamma"], settings["final_exit"]
        return ThresholdPolicy(lambda split: boosted_probs(ims, split, gamma, final_exit), None, settings["q_grid"],
                               {"ims": ims}, dict(settings), tensors["thresholds"], BoostedSteps(ims, gamma, final_exit))
