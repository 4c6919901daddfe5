"""Parity of BoostedNet: the official code (SHI-Labs/Boosted-Dynamic-Networks) against
``methods/boosted.py`` on the same frozen-backbone features, splits and seed.

Written against https://github.com/SHI-Labs/Boosted-Dynamic-Networks at commit
17995bbfaed78594d8c360e7da852aa72d8a7525 (the checkout given as ``--official-dir`` must be at it,
else the script exits 2 naming both commits). Run on demand (a benchmark, not a test)::

    git clone https://github.com/SHI-Labs/Boosted-Dynamic-Networks /work/official/boosted
    python benchmarks/parity/boosted.py --official-dir /work/official/boosted                      # digits
    python benchmarks/parity/boosted.py --official-dir /work/official/boosted --dataset cifar10 \\
        --backbone cifar_resnet56 --set weights=published --data-dir ../shared/data --weights-dir ../shared/weights
    ... --official-schedule      # the official lr_f 0.1, weight decay 1e-4, steps at 50 % / 75 %, model_best
    ... --official-only          # the official side alone (to measure a variant of it)
    ... --fused-sgd              # the official side's SGD in torch's fused kernel, as the project's

**Official side.** Imported at run time from the checkout, never copied: ``train_cifar100.train``
(one epoch of the boosting loss, all stages in one step per mini-batch), ``train_cifar100.test``
(per-exit accuracy of the ensembles, for the checkpoint), ``models.dynamic_net.DynamicNet``
(``forward``: the ensembles E_k = z_k + γ·E_{k−1}; ``forward_all``: the training ensembles) and
``adaptive_inference.Tester`` (``calc_logit``, ``dynamic_eval_find_threshold``,
``dynamic_eval_with_threshold``). The IMs are the project's (``adapter.make_im``), initialised
with the seed before the project's fit initialises its own, so that both sides start from the same
weights and draw the same mini-batches (the project's seeded generator).

**Project side.** ``methods/boosted.py`` fitted on the harness's ``ExitTask`` as ``eebench run`` fits it.

**Both sides** are scored alike: for each budget B in 0.25 / 0.5 / 0.75, the point with the best
accuracy on the selection half of val among those with val cost ≤ B, reported by its test
accuracy, ECE (15 bins) and cost (``eebench.report.selection.select``, ``eebench.harness.metrics.evaluate``).

**Schedules of the official side.** Default: the project's recipe (SGD, momentum 0.9, weight
decay = the IM stage's 5e-4, lr = the stage's 0.04 scaled to the batch of 64 → 0.01, cosine per step
to 2e-4, the stage's 20 epochs; the epoch of the lowest summed val error of E_1..E_{K−1}), so
that the two sides differ only in the code that trains and evaluates. ``--official-schedule``:
the official CIFAR recipe (``msdnet_scripts/train_cifar100_batch.sh``: ``--lr_f 0.1``,
``--weight-decay 1e-4``, MultiStepLR ×0.1 at epochs 150 and 225 of 300, here at 50 % and 75 % of
the stage's epochs; ``model_best.pth``: the epoch of the best val accuracy of the last ensemble,
``train_cifar100.py:150-152``). ``--lr``, ``--weight-decay`` and ``--checkpoint`` override either.

**What the adapter does where the official code cannot run as it is** (official file:line):

1. ``args.py:82`` parses ``sys.argv`` at import (``train_cifar100.py:15``): ``sys.argv`` is set to
   the batch-mode script's flags (``msdnet_scripts/train_cifar100_batch.sh``: ``--arch msdnet_ge
   --ensemble_reweight 0.5 --batch-size 64 --use-valid``, ``--nBlocks K``, the schedule's
   ``--lr_f``, ``--lr_milestones``, ``--epochs``, ``--weight-decay``; γ and the batch are the
   project's ``method.gamma`` and ``method.batch_size``) while the module loads.
2. ``args.py:97-102`` derives ``num_classes`` from ``--dataset`` (cifar10 / cifar100 / imagenet):
   set to the dataset's C afterwards.
3. ``train_cifar100.py:9`` imports ``torch.utils.tensorboard`` (tensorboard is not installed
   here): a ``sys.modules`` stand-in whose ``SummaryWriter`` is never built; only ``main()``
   (``train_cifar100.py:75``) builds one, and ``train()`` logs through the writer it is given, a
   writer that keeps nothing.
4. ``.cuda()`` on tensors and modules (``train_cifar100.py:25,42,46,55``,
   ``adaptive_inference.py:53,61``): a no-op while official code runs; everything runs on the CPU.
5. ``train_cifar100.py:47`` / ``models/dynamic_net.py:76-96`` expect an MSDNet on images: the
   model is the project's IMs with identity ``blocks`` (the backbone is frozen, its block outputs
   cached) and ``classifier`` = IM 1..K−1 and the frozen final classifier (its cached logits, no
   parameters), with ``forward(x, stage)``'s contract of ``models/msdnet_ge.py:372-382``, without
   its ``gradient_rescale`` (lines 376, 378: it rescales gradients into the shared backbone; there
   is none). Stage K's boosting loss (``train_cifar100.py:60``) is then a constant, as in the project.
6. ``train_cifar100.py:100`` (``get_dataloaders``: torchvision CIFAR folders, augmentation): the
   project's cached features and splits instead — train, shuffled by the project's seeded
   generator; thresholds searched on the policy half of val (the official ``--use-valid``
   validation split); checkpoints chosen on the selection half; test.
7. ``train_cifar100.py:70-152`` (``main``: builds an MSDNet, counts FLOPs, writes checkpoints and
   logs) is not called: its optimiser (lines 102-115: one parameter group per block, weight decay
   ``linspace(wd[0], wd[-1], K)``, SGD with momentum) and epoch loop (lines 126-152: ``train``,
   ``scheduler.step()``, ``test`` on the val loader, ``model_best`` on the last exit) are
   reproduced as glue, the schedule as above.
8. ``adaptive_inference.py:13-46`` (``dynamic_evaluate``: reads ``flops.pth``, writes a text file)
   is not called: the shares are computed as its lines 32-35, the thresholds by
   ``Tester.dynamic_eval_find_threshold`` with the project's normalised exit costs as ``flops``, and
   each sample's exit by the rule of ``Tester.dynamic_eval_with_threshold`` (vectorised; the
   official function is run on the deployed test points and must agree to the last digit).

The project's departures from this code, with their measured effect: ``docs/fidelity.md``.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time

import _official_boosted_l2w as glue

REPO = "SHI-Labs/Boosted-Dynamic-Networks"
COMMIT = "17995bbfaed78594d8c360e7da852aa72d8a7525"


def official_side(setting: glue.Setting, folder, args: argparse.Namespace
                  ) -> tuple[glue.OfficialPoints, list[str], float]:
    """Train and evaluate with the official functions on the project's features (see the module docstring).

    Returns:
        ``(the official side's points, notes on the schedule and the checks, fit seconds)``.
    """
    import numpy as np
    import torch

    config, task = setting.config, setting.task
    K, C = setting.num_exits, setting.num_classes
    params, stage = config.method_params, task.im_schedule
    if params["final_exit"] != "ensemble":
        glue.fail(f"method.final_exit={params['final_exit']}: the official code answers with the ensemble at "
                  f"every exit; run the parity with final_exit=ensemble")
    gamma, batch, epochs = float(params["gamma"]), int(params["batch_size"]), int(stage.epochs)
    if args.official_schedule:
        lr, wd, steps, rule = 0.1, 1e-4, glue.milestones(epochs), "official"
    else:
        lr, wd, steps, rule = stage.lr * batch / stage.batch_size, stage.weight_decay, None, "project"
    lr = args.lr if args.lr is not None else lr
    wd = args.weight_decay if args.weight_decay is not None else wd
    rule = args.checkpoint or rule
    argv = ["train_cifar100.py", "--dataset", "cifar100" if C == 100 else "cifar10", "--use-valid",
            "--arch", "msdnet_ge", "--ensemble_reweight", repr(gamma), "--batch-size", str(batch),
            "--nBlocks", str(K), "--lr_f", repr(lr), "--weight-decay", repr(wd), "--epochs", str(epochs),
            "--lr_milestones", ",".join(map(str, steps or glue.milestones(epochs)))]
    stub = {} if glue.findable("tensorboard") else {"torch.utils.tensorboard": _tensorboard_stand_in()}
    tc = glue.import_official(folder, "train_cifar100", argv, stubs=stub)
    ai = glue.import_official(folder, "adaptive_inference", argv)
    oargs = tc.args
    oargs.num_classes = C                                                   # args.py:97-102

    torch.manual_seed(config.seed)                                          # as the project's fit
    net = glue.frozen_backbone_net(task.make_ims(), task.train.dims, C)
    model = sys.modules["models"].dynamic_net(net, oargs)                   # train_cifar100.py:99
    decays = np.linspace(float(oargs.weight_decay.split(",")[0]), float(oargs.weight_decay.split(",")[-1]), K)
    groups = [{"params": model.parameters_m(i, separate=False), "weight_decay": float(decays[i])} for i in range(K)]
    opt = torch.optim.SGD(groups, oargs.lr_f, momentum=oargs.momentum,     # train_cifar100.py:102-114
                          fused=True if args.fused_sgd else None)
    loader = glue.FeatureLoader(task.train, batch, torch.Generator().manual_seed(config.seed))
    if steps is None:                                                       # the project's cosine, per step
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * len(loader)),
                                                           eta_min=stage.lr_min)
        step_opt = _StepScheduled(opt, sched)
    else:                                                                   # train_cifar100.py:115, 130
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, oargs.lr_milestones, gamma=0.1)
        step_opt = opt
    val_loader = glue.FeatureLoader(task.val, 4096)
    best, best_state, kept = None, None, epochs
    t0 = time.perf_counter()
    for epoch in range(epochs):
        with glue.cuda_on_host(args.verbose):
            tc.train(model, loader, step_opt, epoch, glue.NullWriter())
            if steps is not None:
                sched.step()
            accs = tc.test(model, val_loader)                               # % per exit, ensembles
        if rule == "project":       # lowest summed val error of E_1..E_{K-1}; ties: the earlier epoch
            value = sum(100.0 - a for a in accs[:-1]) / 100.0
            better = best is None or value < best
        else:                       # model_best.pth: best val accuracy of the last ensemble; ties: the later
            value = accs[-1]
            better = best is None or value >= best
        if better:
            best, best_state, kept = value, copy.deepcopy(net.state_dict()), epoch + 1
    net.load_state_dict(best_state)
    seconds = time.perf_counter() - t0

    tester = ai.Tester(model, oargs)
    probs = {}
    for name, split in (("policy", task.policy), ("val", task.val), ("test", setting.test)):
        with glue.cuda_on_host(args.verbose):
            probs[name] = tester.calc_logit(glue.FeatureLoader(split, 4096))
    points = glue.official_points(tester, probs, params["q_grid"], setting.exit_costs, args.verbose)
    sched_doc = (f"SGD{' (fused)' if args.fused_sgd else ''} lr {lr:g}, momentum {oargs.momentum:g}, weight decay {wd:g}, "
                 + (f"cosine per step to {stage.lr_min:g}" if steps is None else f"x0.1 at epochs {steps}")
                 + f", batch {batch}, {epochs} epochs")
    rule_doc = ("the project's: lowest summed val error of E_1..E_{K-1}" if rule == "project"
                else "official model_best: best val accuracy of E_K, train_cifar100.py:150-152")
    notes = [f"official schedule: {sched_doc}; epoch kept: {kept} ({rule_doc})",
             f"official threshold search vs its own test rule on the policy half: "
             f"{len(points.policy_mismatch)} of {len(params['q_grid'])} q disagree",
             f"project's msdnet_thresholds on the official probabilities exits some policy sample elsewhere "
             f"for {len(points.project_search_diff)} of {len(params['q_grid'])} q"
             + (f" ({', '.join(map(str, points.project_search_diff))})" if points.project_search_diff else "")]
    return points, notes, seconds


class _StepScheduled:
    """The optimiser ``train_cifar100.train`` steps, with the project's per-step cosine schedule
    stepped after each ``step()`` (the official loop steps only the optimiser, lines 65-67)."""

    def __init__(self, opt, sched):
        self.opt, self.sched = opt, sched

    def zero_grad(self, *a, **k):
        return self.opt.zero_grad(*a, **k)

    def step(self, *a, **k):
        out = self.opt.step(*a, **k)
        self.sched.step()
        return out


def _tensorboard_stand_in():
    import types

    class SummaryWriter:
        def __init__(self, *a, **k):
            raise RuntimeError("tensorboard is not installed; the parity script never calls train_cifar100.main()")

    mod = types.ModuleType("torch.utils.tensorboard")
    mod.SummaryWriter = SummaryWriter
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    glue.add_arguments(ap)
    args = ap.parse_args()
    folder = glue.check_checkout(args.official_dir, REPO, COMMIT)

    glue.compare("boosted", args, folder, official_side,
                 lambda c: (f"BoostedNet parity: {c.dataset} / {c.backbone}, seed {c.seed}, "
                            f"gamma {c.method_params['gamma']}"),
                 f"official: {REPO}@{COMMIT[:7]} (train_cifar100.train, DynamicNet.forward, "
                 f"Tester.dynamic_eval_find_threshold)")


if __name__ == "__main__":
    main()
