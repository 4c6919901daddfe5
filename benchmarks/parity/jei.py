"""Parity of JEI-DNN: the official code (networkslab/dynn) against ``methods/jei.py`` on the same
frozen-backbone features, IMs, splits and seed.

Written against https://github.com/networkslab/dynn at commit
8dd598d48f50f61fbea584e951db17952f456964 (the checkout given as ``--official-dir`` must be at it,
else the script exits 2 naming both commits). Run on demand (a benchmark, not a test)::

    git clone https://github.com/networkslab/dynn /work/official/dynn     # model_weights/ need not be checked out
    python benchmarks/parity/jei.py --official-dir /work/official/dynn                           # digits
    python benchmarks/parity/jei.py --official-dir /work/official/dynn --dataset cifar10 \\
        --backbone cifar_resnet56 --set weights=published --data-dir ../shared/data --weights-dir ../shared/weights \\
        --set 'method.lambdas=[0.01,0.1,0.5,1.0,2.0,5.0,20.0]'

**Official side.** Imported at run time from the checkout, never copied: ``src/our_train_helper.py``
(``train_single_epoch``: the alternating gate and IM phases, ``bilevel_batch_count`` mini-batches
each, gate phase first in every epoch; ``evaluate`` on val; ``set_from_validation``: the positive
weight of gate g from the val samples whose best exit is g, capped at 5), ``src/learning_helper.py``
(``LearningHelper``, ``freeze_backbone``), ``src/models/classifier_training_helper.py`` (the IM
loss, and the exit rule: ``sample_exit_level_map``), ``src/models/gate_training_helper.py`` (the
gate targets and loss), ``src/models/custom_modules/learnable_uncertainty_gate.py`` (the gates) and
the ``T2T_ViT`` methods the helpers call (``src/models/t2t_vit.py``: ``set_learnable_gates``,
``get_gate_prediction``, ``set_cost_per_exit``, ``set_CE_IC_tradeoff``, the (un)freezing of IMs),
bound to an adapter module over the cached features. The epoch loop of ``src/train_dynn.py:178-205``
(a script that trains on import) is the only glue: per λ, SGD over all trainable parameters (lr
0.01, momentum 0.9, weight decay 5e-4: its defaults, lines 29, 34, 178-181), cosine per epoch to
2e-4 over ``epochs`` (lines 35, 182-184), then each epoch ``train_single_epoch`` →
``evaluate(mode='val')`` → ``set_from_validation`` → ``scheduler.step()``. Batch (64), epochs (15),
``bilevel_batch_count`` (200) and λ are the project's (``method.batch_size``, ``method.epochs``,
``method.alternate_every``, ``method.lambdas``; the official defaults of the first and third are the
same). The IMs start from the shared IM stage, as the project's do, in place of the official warm-up
(``our_train_helper.py:92-183``; ``docs/decisions.md`` M2); the joint epochs then run from epoch 0.
The gate phases draw mini-batches of the policy half of val, the IM phases those of train (the
project's protocol, ``docs/decisions.md`` P6): at batch i of an epoch the loader serves a policy
batch where ⌊i / bilevel_batch_count⌋ is even, the phase ``train_single_epoch`` is then in
(``our_train_helper.py:47-53``), and train batch i otherwise. ``evaluate`` and the positive weights
see the selection half of val. The exits of each sample on the selection half and on test are the
official rule's (``ClassifierTrainingHelper.get_loss``: ``sample_exit_level_map``), read after the
last epoch (the official script's "best" test results are never stored: ``train_dynn.py:198-201``
compares ``best_acc`` with itself).

**Project side.** ``methods/jei.py`` fitted on the harness's ``ExitTask`` as ``eebench run`` fits it;
a third column fits it with the gate settings of ``methods.md`` and nearer the official code's
(``gate_lr`` 0.01, ``pos_weight_cap`` 5, ``docs/decisions.md`` M3), to measure that departure.

**Both sides** are scored alike: for each budget B in 0.25 / 0.5 / 0.75, the point with the best
accuracy on the selection half of val among those with val cost ≤ B, reported by its test
accuracy, ECE (15 bins) and cost (``eebench.report.selection.select``, ``eebench.harness.metrics.evaluate``),
with the project's exit costs for both (gates: ``nn.Linear(4, 1)``).

**What the adapter does where the official code cannot run as it is** (official file:line):

1. ``src/log_helper.py:2``, ``src/our_train_helper.py:5``, ``src/threshold_helper.py:8`` import
   ``mlflow`` (not installed here): a ``sys.modules`` stand-in whose ``log_metrics`` keeps nothing;
   ``evaluate`` logs through it (``our_train_helper.py:233``), nothing else uses it.
2. ``src/utils.py:145`` reads the terminal width with ``stty size`` at import and fails without a
   terminal: ``os.popen`` answers "24 80" while the official modules load.
3. ``src/train_dynn.py:160-161`` wraps the net in ``DataParallel`` on CUDA only, while every helper
   reaches it through ``net.module`` (``our_train_helper.py:36-37``, ``learning_helper.py:59, 63``,
   ``models/classifier_training_helper.py:42``, ``models/gate_training_helper.py:51``): it is wrapped on the CPU too
   (``DataParallel`` without devices calls the module directly).
4. ``src/train_dynn.py:79-157`` builds a T2T-ViT on 224-px images, loads its checkpoints and counts
   its costs with ``models/op_counter.py``: the adapter module's ``forward_features`` returns the
   cached IM inputs of each exit and the frozen classifier's cached logits (``head`` is the identity),
   ``intermediate_heads`` are the project's IMs, ``blocks`` K identities (as T2T-ViT-7 has one block
   per exit), and ``set_cost_per_exit`` gets the project's exit Mul-Adds.
5. ``src/train_dynn.py:83-84`` (torchvision loaders): the project's cached features and splits, as
   above; ``mode='test'`` evaluation (``our_train_helper.py:190-191``, for its logs) is not run.

Not a fix, for speed: ``train_single_epoch`` computes metrics of every training mini-batch
(``our_train_helper.py:58-75``: ``process_things``, ``aggregate_metrics``,
``aggregate_metrics_mlflow``; 70 % of its time on digits) that only its logs read
(``train_dynn.py:196`` discards what it returns): they are skipped while it trains (the same
updates; ``--keep-train-metrics`` runs them). ``evaluate`` runs them as they are. And the gates'
entropies (``metrics_utils.py:19, 23``, ``scipy.stats.entropy(p, axis=1)``: 1.3 ms a call, 55 % of a
training step on CIFAR-10, spent in scipy's argument handling) are computed as scipy computes them
(p / Σp, ``scipy.special.entr``, summed), the first 50 calls of every run checked bit for bit
against ``scipy.stats.entropy`` (the script stops on a difference).

Departures of the project from this code, with their measured effect: ``docs/fidelity.md``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import sys
import types
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _official_eenet_jei import (Side, add_arguments, check_checkout, fail, official_imports,  # noqa: E402
                                 prepare, print_table, project_side, quiet)

REPO = "networkslab/dynn"
COMMIT = "8dd598d48f50f61fbea584e951db17952f456964"
#: train_dynn.py:29, 34, 35 (lr, wd, min-lr); our_train_helper.py:272 caps the positive weights at 5.
SHIPPED = {"lr": 0.01, "momentum": 0.9, "wd": 5e-4, "min_lr": 2e-4}
#: Split codes of the adapter's mini-batches: ``inputs`` ``[B, 2]`` = (split code, row).
SPLITS = ("train", "policy", "val", "test")
#: The ``T2T_ViT`` methods the official helpers call on ``net.module`` (src/models/t2t_vit.py:158-223).
T2T_METHODS = ("set_CE_IC_tradeoff", "freeze_intermediate_classifier", "unfreeze_intermediate_classifier",
               "unfreeze_all_intermediate_classifiers", "set_cost_per_exit", "are_all_classifiers_frozen",
               "is_classifier_frozen", "set_learnable_gates", "get_gate_prediction")


def load_official(folder: Path) -> types.SimpleNamespace:
    """The official modules, with fixes 1 and 2 of the docstring."""
    mlflow = types.ModuleType("mlflow")
    mlflow.log_metrics = lambda *args, **kwargs: None
    popen = os.popen
    os.popen = lambda *args, **kwargs: io.StringIO("24 80")                           # fix 2, src/utils.py:145
    try:
        with official_imports([folder / "src"], {"mlflow": mlflow}):
            import learning_helper
            import our_train_helper
            import utils
            from models.custom_modules.gate import GateType
            from models.gate_training_helper import GateObjective
            from models.classifier_training_helper import LossContributionMode
            from models.t2t_vit import T2T_ViT, TrainingPhase
            import metrics_utils
    finally:
        os.popen = popen
    metrics_utils.scipy = types.SimpleNamespace(stats=types.SimpleNamespace(entropy=checked_entropy(metrics_utils.scipy)))
    return types.SimpleNamespace(lh=learning_helper, oth=our_train_helper, utils=utils, GateType=GateType,
                                 GateObjective=GateObjective, LossContributionMode=LossContributionMode,
                                 T2T_ViT=T2T_ViT, TrainingPhase=TrainingPhase)


def checked_entropy(scipy: Any, checks: int = 50) -> Any:
    """``scipy.stats.entropy(pk, axis=...)`` as scipy computes it, without its per-call argument
    handling; the first ``checks`` calls are compared bit for bit with scipy's (exit 1 on a difference)."""
    import numpy as np

    calls = [0]

    def entropy(pk: Any, axis: int = 0) -> Any:
        pk = np.asarray(pk)
        out = np.sum(scipy.special.entr(pk / np.sum(pk, axis=axis, keepdims=True)), axis=axis)
        if calls[0] < checks:
            calls[0] += 1
            ref = scipy.stats.entropy(pk, axis=axis)
            if ref.dtype != out.dtype or not np.array_equal(ref, out, equal_nan=True):
                fail("the fast entropy of the gates differs from scipy.stats.entropy; run again with this check's "
                     "shim removed", 1)
        return out

    return entropy


def adapter_net(official: types.SimpleNamespace, splits: dict[str, Any], ims: Any, num_classes: int) -> Any:
    """The adapter module (fix 4): the ``T2T_ViT`` methods of ``T2T_METHODS``, ``forward_features``
    over the cached features of ``splits`` (``inputs`` ``[B, 2]``: split code, row), the IMs ``ims``."""
    import torch
    from torch import nn

    def __init__(self: Any) -> None:
        nn.Module.__init__(self)
        self.num_classes = num_classes
        self.intermediate_heads = ims
        self.intermediate_head_positions = list(range(len(ims)))
        self.blocks = nn.ModuleList(nn.Identity() for _ in range(len(ims) + 1))
        self.head = nn.Identity()

    def forward_features(self: Any, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        split = splits[SPLITS[int(inputs[0, 0])]]
        idx = inputs[:, 1]
        return split.logits[idx].float(), [x.float() for x in split.rows(idx)]

    body = {name: getattr(official.T2T_ViT, name) for name in T2T_METHODS}
    cls = type("CachedFeatureDynn", (nn.Module,), {**body, "__init__": __init__, "forward_features": forward_features})
    return cls()


class Batches:
    """Mini-batches ``(inputs [B, 2], targets [B])`` as the official loops iterate a ``DataLoader``.

    ``phased``: one epoch of train in shuffled mini-batches, batch i replaced by the next mini-batch
    of the policy half where ⌊i / every⌋ is even (the official gate phase at batch i); otherwise the
    split ``name`` in order.
    """

    def __init__(self, splits: dict[str, Any], name: str, batch_size: int, generator: Any = None, every: int = 0):
        from eebench.method import cycle_minibatches

        self.splits, self.name, self.batch_size, self.generator, self.every = splits, name, batch_size, generator, every
        self.policy = cycle_minibatches(splits["policy"].n, batch_size, generator) if every else None

    def __len__(self) -> int:
        return -(-self.splits[self.name].n // self.batch_size)

    def _batch(self, name: str, idx: Any) -> tuple[Any, Any]:
        import torch

        code = torch.full_like(idx, SPLITS.index(name))
        return torch.stack([code, idx], 1), self.splits[name].labels[idx]

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        import torch

        from eebench.method import minibatches

        if not self.every:
            for idx in torch.arange(self.splits[self.name].n).split(self.batch_size):
                yield self._batch(self.name, idx)
            return
        for i, idx in enumerate(minibatches(self.splits["train"].n, self.batch_size, self.generator)):
            yield self._batch("policy", next(self.policy)) if (i // self.every) % 2 == 0 else self._batch("train", idx)


@contextlib.contextmanager
def without_train_metrics(official: types.SimpleNamespace, skip: bool) -> Iterator[None]:
    """While ``train_single_epoch`` runs: its per-batch metrics (``our_train_helper.py:58-75``, read
    by its logs only) not computed, when ``skip``."""
    oth = official.oth
    saved = oth.process_things, oth.aggregate_metrics, oth.aggregate_metrics_mlflow
    if skip:
        oth.process_things = lambda *args, **kwargs: {}
        oth.aggregate_metrics = lambda batch, metrics, **kwargs: metrics
        oth.aggregate_metrics_mlflow = lambda **kwargs: {}
    try:
        yield
    finally:
        oth.process_things, oth.aggregate_metrics, oth.aggregate_metrics_mlflow = saved


def official_side(setting: Any, official: types.SimpleNamespace, verbose: bool, train_metrics: bool = False) -> Side:
    """One official run per λ of ``method.lambdas``; its points on the selection half and on test."""
    from eebench.method import OperatingPoint
    from methods.jei import JEIGates

    task, params, seed = setting.task, setting.config.method_params, setting.config.seed
    K, C = setting.num_exits, setting.num_classes
    gate_muladds = JEIGates(K).muladds()
    muladds = [float(m) for m in setting.prep.costs.exit_muladds(gate_muladds)]
    splits = {"train": task.train, "policy": task.policy, "val": task.val, "test": setting.test}
    start = task.trained_ims()
    args = types.SimpleNamespace(classifier_loss=official.LossContributionMode.BOOSTED, early_exit_warmup=True,
                                 G=K - 1, gate_objective=official.GateObjective.CrossEntropy, use_mlflow=False,
                                 barely_train=False, bilevel_batch_count=int(params["alternate_every"]),
                                 num_epoch=int(params["epochs"]), batch=int(params["batch_size"]),
                                 dataset=setting.config.dataset, arch=setting.config.backbone, **SHIPPED)
    val_points, test_points, notes = [], [], []
    for lam in params["lambdas"]:
        args.ce_ic_tradeoff = float(lam)
        with quiet(verbose):
            official.utils.fix_the_seed(seed)
            helper = train_lambda(official, args, splits, copy.deepcopy(start), C, muladds, seed, train_metrics)
            answers = {s: official_answers(helper, Batches(splits, s, args.batch)) for s in ("val", "test")}
        setting_ = {"lambda": float(lam)}
        val_points.append(OperatingPoint(setting_, *answers["val"], gate_muladds))
        test_points.append(OperatingPoint(setting_, *answers["test"], gate_muladds))
        pos = [round(float(w), 3) for w in helper.gate_training_helper.pos_weights]
        notes.append(f"λ={lam}: positive weights of the last epoch {pos}")
        print(f"official λ={lam}: done", file=sys.stderr, flush=True)
    return Side("official", val_points, test_points, gate_muladds, notes)


def train_lambda(official: types.SimpleNamespace, args: Any, splits: dict[str, Any], ims: Any, num_classes: int,
                 muladds: list[float], seed: int, train_metrics: bool = False) -> Any:
    """``train_dynn.py:150-205`` for one λ on the adapter module: the official ``LearningHelper`` after
    its last epoch."""
    import torch

    module = adapter_net(official, splits, ims, num_classes)
    module.set_CE_IC_tradeoff(args.ce_ic_tradeoff)
    module.set_learnable_gates(module.intermediate_head_positions, direct_exit_prob_param=True,
                               gate_type=official.GateType.UNCERTAINTY)
    module.set_cost_per_exit(muladds)
    net = torch.nn.DataParallel(module)                                          # fix 3
    official.lh.freeze_backbone(net, ["intermediate_heads", "gates"])
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.wd)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, eta_min=args.min_lr, T_max=args.num_epoch)
    helper = official.lh.LearningHelper(net, optimizer, args, "cpu")
    net.module.unfreeze_all_intermediate_classifiers()
    generator = torch.Generator().manual_seed(seed)
    train = Batches(splits, "train", args.batch, generator, args.bilevel_batch_count)
    val = Batches(splits, "val", args.batch)
    for epoch in range(args.num_epoch):
        with without_train_metrics(official, not train_metrics):
            official.oth.train_single_epoch(args, helper, "cpu", train, epoch=epoch,
                                            training_phase=official.TrainingPhase.CLASSIFIER,
                                            bilevel_batch_count=args.bilevel_batch_count)
        val_metrics, _, _ = official.oth.evaluate(0, args, helper, "cpu", val, epoch, mode="val",
                                                  experiment_name="parity")
        official.oth.set_from_validation(helper, val_metrics)
        scheduler.step()
    return helper


def official_answers(helper: Any, batches: Batches) -> tuple[Any, Any]:
    """The official exit rule on a split (``get_surrogate_loss`` in eval mode →
    ``ClassifierTrainingHelper.get_loss``): ``([N] exits, [N, K, C] probabilities)``."""
    import numpy as np
    import torch

    helper.net.eval()
    exits, probs = [], []
    for inputs, targets in batches:
        _, toi = helper.get_surrogate_loss(inputs, targets)
        p = torch.stack([*toi["intermediate_logits"], toi["final_logits"]], 1).softmax(-1)
        e = toi["sample_exit_level_map"]
        assert torch.equal(p[torch.arange(len(e)), e].argmax(1), toi["gated_y_logits"].argmax(1))
        exits.append(e.numpy())
        probs.append(p)
    return np.concatenate(exits).astype(np.int64), torch.cat(probs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=f"Parity of JEI-DNN: the official code ({REPO} at commit {COMMIT}) against methods/jei.py "
                    f"on the same features, IMs, splits and seed.",
        epilog=f"Written against https://github.com/{REPO} at commit {COMMIT}. See the module docstring for the "
               f"fixes the adapter applies, with official file:line.")
    add_arguments(parser)
    parser.add_argument("--keep-train-metrics", action="store_true",
                        help="compute the official per-batch training metrics (logs only; slower, the same updates)")
    args = parser.parse_args()
    folder = check_checkout(args.official_dir, REPO, COMMIT)
    setting = prepare(args, "jei")
    official = load_official(folder)
    sides = [official_side(setting, official, args.verbose, args.keep_train_metrics), project_side(setting, "project"),
             project_side(setting, "project, gate_lr .01, cap 5", {"gate_lr": 0.01, "pos_weight_cap": 5.0})]
    print(f"official: {REPO} at {COMMIT}; SGD {SHIPPED}, positive weights capped at 5; "
          f"shared: {', '.join(f'{k}={setting.config.method_params[k]}' for k in ('batch_size', 'epochs', 'alternate_every', 'lambdas'))}")
    print_table(setting, sides)


if __name__ == "__main__":
    main()
