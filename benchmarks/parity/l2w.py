"""Parity of L2W-DEN: the official code (LeapLabTHU/L2W-DEN) against ``methods/l2w.py`` on the
same frozen-backbone features, splits and seed.

Written against https://github.com/LeapLabTHU/L2W-DEN at commit
c49d5753afaaf8b22f1adcfcae526b13396e6778 (the checkout given as ``--official-dir`` must be at it,
else the script exits 2 naming both commits). Run on demand (a benchmark, not a test)::

    git clone https://github.com/LeapLabTHU/L2W-DEN /work/official/l2w
    python benchmarks/parity/l2w.py --official-dir /work/official/l2w                             # digits
    python benchmarks/parity/l2w.py --official-dir /work/official/l2w --dataset cifar10 \\
        --backbone cifar_resnet56 --set weights=published --data-dir ../shared/data --weights-dir ../shared/weights
    ... --official-schedule      # the README's lr 0.8 and the final epoch
    ... --weight-decay 5e-4      # the project's weight decay on the official side
    ... --official-only          # the official side alone (to measure a variant of it)
    ... --fused-sgd              # the official side's SGD in torch's fused kernel, as the project's

**Official side.** Imported at run time from the checkout, never copied:
``tools/main_cifar_DDP.train`` (one epoch: per mini-batch, for each half, the meta step of the
weight prediction network through ``tools/meta.MetaSGD`` and the IMs' weighted step, with the
official per-batch cosine schedules ``tools/utils.adjust_learning_rate`` /
``adjust_meta_learning_rate``), ``models.MLP_tanh`` (the WPN), ``tools/utils.calc_target_probs``
(the meta objective's exit shares) and ``tools/adaptive_inference.Tester`` (``calc_logit``,
``dynamic_eval_find_threshold``, ``dynamic_eval_with_threshold``). The flags are the README's CIFAR
ones (``--batch-size 1024 --meta_interval 1 --meta_lr 1e-4 --meta_weight_decay 1e-4
--meta_net_hidden_size 500 --meta_net_num_layers 1 --epsilon 0.8 --target_p_index 15
--meta_net_input_type loss --constraint_dimension col --lr-type cosine``; the weight decay is
``tools/args_msdnet.py``'s default 1e-4), except the learning rate: the IM stage's 0.04
(``docs/decisions.md`` M1) in place of 0.8, and the epochs: the stage's 20 in place of 300.
ε, q, the batch, the WPN's learning rate, weight decay, width and meta interval are the project's
``method.*`` values (the same defaults), so ``--set method.epsilon=...`` moves both sides. The IMs
are the project's (``adapter.make_im``) and the WPN ``MLP_tanh(K, 500, 1, K)``, initialised with the
seed in the project's order (IMs, then WPN): both sides start from the same weights and draw the
same mini-batches (the project's seeded generator).

**Project side.** ``methods/l2w.py`` fitted on the harness's ``ExitTask`` as ``eebench run`` fits it.

**Both sides** are scored alike: for each budget B in 0.25 / 0.5 / 0.75, the point with the best
accuracy on the selection half of val among those with val cost ≤ B, reported by its test
accuracy, ECE (15 bins) and cost (``eebench.report.selection.select``, ``eebench.harness.metrics.evaluate``).

**Checkpoint.** Default: the project's rule (the epoch of the lowest summed IM val error, 1e-3 ×
cross-entropy breaking ties). ``--official-schedule`` (lr 0.8) and ``--checkpoint official``: the
final epoch, which the official script evaluates (``tools/main_cifar_DDP.py:279-282``).

**What the adapter does where the official code cannot run as it is** (official file:line):

1. ``tools/args_msdnet.py:125`` parses ``sys.argv`` at import (``tools/main_cifar_DDP.py:20``):
   ``sys.argv`` is set to the flags above (with ``--nBlocks K``, ``--arch`` the adapter's network,
   ``--data cifar10`` or ``cifar100``) while the module loads; ``num_classes`` (lines 136-141) is
   set to the dataset's C afterwards.
2. ``tools/main_cifar_DDP.py:42-91`` (``main``: FLOP count, output folders, ``mp.spawn`` over the
   GPUs) and ``:94-284`` (``main_worker``: NCCL process group, DDP, CIFAR loaders, checkpoints)
   cannot run on a CPU and are not called: what they set up is reproduced as glue — the fields
   ``train`` reads (``args.num_exits`` :81, ``args.print_custom`` :75, ``args.gpu`` :99,
   ``args.world_size`` :110), the model and WPN (:114-127), SGD and Adam (:139-142), the meta
   objective's shares (:194-195) and the epoch loop (:224-228).
3. DDP (:135-136): the model is wrapped in a single-process stand-in whose ``.module`` is the
   network (``train`` reads ``model.module.state_dict()``, :326, :473); the WPN is used unwrapped
   (``train`` calls it and its optimiser only).
4. ``.cuda()`` on tensors and modules (:304-305, :325, :472, ``tools/adaptive_inference.py:37,46``):
   a no-op while official code runs; everything runs on the CPU.
5. ``getattr(models, args.arch)(args)`` builds the look-ahead network at every meta step (:325,
   :472): the adapter's network is registered in the official ``models`` package under the name
   passed as ``--arch``: the project's IMs with identity ``blocks`` and ``classifier`` = IM 1..K−1
   and the frozen final classifier (its cached logits, no parameters), so ``tools/meta.py:30``'s
   pairing of every parameter with a gradient lines up (an IM with frozen parameters is refused).
6. ``load_cifar_data`` (:713-767): the project's cached features and splits instead; a last
   mini-batch of a single row is skipped, since ``train`` halves every batch (:315), as the
   project does.
7. ``dynamic_evaluate(model, test_loader, train_loader)`` (:282, ``tools/adaptive_inference.py:12-30``:
   thresholds searched on the *train* loader; reads ``flops.pth``, writes a text file) is not
   called: the shares are computed as its lines 22-24, the thresholds by
   ``Tester.dynamic_eval_find_threshold`` on the policy half of val (the project's rule,
   ``docs/decisions.md`` P6) with the project's normalised exit costs as ``flops``, and each
   sample's exit by the rule of ``Tester.dynamic_eval_with_threshold`` (vectorised; the official
   function is run on the deployed test points and must agree to the last digit).
8. ``validate`` (:644-710) all-reduces over the process group and is only logged: not called.

The project's departures from this code, with their measured effect: ``docs/fidelity.md``.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time

import _official_boosted_l2w as glue

REPO = "LeapLabTHU/L2W-DEN"
COMMIT = "c49d5753afaaf8b22f1adcfcae526b13396e6778"
#: The name the adapter's network is registered under in the official ``models`` package.
ARCH = "eebench_frozen_backbone_exits"


class _SingleProcess:
    """What ``train`` uses of a one-process DDP wrapper: calls go to the network, ``.module`` is it."""

    def __init__(self, module):
        self.module = module

    def __call__(self, *a, **k):
        return self.module(*a, **k)

    def train(self, mode: bool = True):
        self.module.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def parameters(self):
        return self.module.parameters()


def official_side(setting: glue.Setting, folder, args: argparse.Namespace
                  ) -> tuple[glue.OfficialPoints, list[str], float]:
    """Train and evaluate with the official functions on the project's features (see the module docstring).

    Returns:
        ``(the official side's points, notes on the schedule and the checks, fit seconds)``.
    """
    import torch
    from torch import nn
    from eebench.method import im_val_error

    config, task = setting.config, setting.task
    K, C = setting.num_exits, setting.num_classes
    params, stage = config.method_params, task.im_schedule
    q_index = round(float(params["q"]) * 20)
    if abs(q_index / 20 - float(params["q"])) > 1e-9 or not 1 <= q_index <= 39:
        glue.fail(f"method.q={params['q']}: the official --target_p_index takes q = i/20, i = 1..39")
    epochs = int(stage.epochs)
    lr, rule = (0.8, "official") if args.official_schedule else (stage.lr, "project")
    lr = args.lr if args.lr is not None else lr
    wd = args.weight_decay if args.weight_decay is not None else 1e-4            # tools/args_msdnet.py:89
    rule = args.checkpoint or rule
    argv = ["main_cifar_DDP.py", "--data", "cifar100" if C == 100 else "cifar10", "--workers", "1",
            "--seed", str(config.seed), "--arch", ARCH, "--nBlocks", str(K), "--stepmode", "lin_grow", "--step", "1",
            "--base", "1", "--nChannels", "16", "--meta_net_hidden_size", str(params["wpn_hidden"]),
            "--meta_net_num_layers", "1", "--meta_interval", str(params["meta_interval"]),
            "--meta_lr", repr(float(params["meta_lr"])), "--meta_weight_decay", repr(float(params["meta_weight_decay"])),
            "--epsilon", repr(float(params["epsilon"])), "--target_p_index", str(q_index),
            "--meta_net_input_type", "loss", "--constraint_dimension", "col", "--epochs", str(epochs),
            "--batch-size", str(params["batch_size"]), "--lr", repr(lr), "--weight-decay", repr(wd),
            "--lr-type", "cosine", "--print-freq", "10"]
    mc = glue.import_official(folder, "main_cifar_DDP", argv, extra_paths=["tools"])
    models, utils, ai = sys.modules["models"], sys.modules["utils"], sys.modules["adaptive_inference"]
    oargs = mc.args
    oargs.num_classes, oargs.num_exits = C, K                                   # args_msdnet.py:136-141, :81
    oargs.gpu, oargs.world_size = 0, 1                                          # :99, :110
    oargs.print_custom = (lambda s, *a, **k: print(s, file=sys.stderr)) if args.verbose else (lambda *a, **k: None)
    setattr(models, ARCH, lambda a: glue.frozen_backbone_net(task.make_ims(), task.train.dims, C))

    torch.manual_seed(config.seed)                                              # as the project's fit
    gen = torch.Generator().manual_seed(config.seed)
    net = getattr(models, ARCH)(oargs)                                          # :114
    meta_net = models.MLP_tanh(input_size=oargs.num_exits, hidden_size=oargs.meta_net_hidden_size,
                               num_layers=oargs.meta_net_num_layers, output_size=oargs.num_exits)  # :118-121
    model = _SingleProcess(net)                                                 # :135
    criterion = nn.CrossEntropyLoss()                                           # :138
    optimizer = torch.optim.SGD(model.parameters(), oargs.lr, momentum=oargs.momentum,
                                weight_decay=oargs.weight_decay, fused=True if args.fused_sgd else None)  # :139-141
    meta_optimizer = torch.optim.Adam(meta_net.parameters(), lr=oargs.meta_lr,
                                      weight_decay=oargs.meta_weight_decay)     # :142
    target_probs = utils.calc_target_probs(oargs)[oargs.target_p_index - 1]     # :194-195
    loader = glue.FeatureLoader(task.train, oargs.batch_size, gen, min_batch=2)
    best, best_state, kept = None, None, epochs
    t0 = time.perf_counter()
    for epoch in range(oargs.epochs):                                           # :224-228
        with glue.cuda_on_host(args.verbose):
            mc.train(loader, model, meta_net, criterion, optimizer, meta_optimizer, epoch, target_probs, oargs)
        if rule == "project":   # lowest summed IM val error (+1e-3 CE); ties: the earlier epoch
            value = float(im_val_error(net.ims, task.val).sum())
            if best is None or value < best:
                best, best_state, kept = value, copy.deepcopy(net.state_dict()), epoch + 1
    if best_state is not None:
        net.load_state_dict(best_state)
    seconds = time.perf_counter() - t0

    tester = ai.Tester(model, oargs)
    probs = {}
    for name, split in (("policy", task.policy), ("val", task.val), ("test", setting.test)):
        with glue.cuda_on_host(args.verbose):
            probs[name] = tester.calc_logit(glue.FeatureLoader(split, 4096))
    points = glue.official_points(tester, probs, params["q_grid"], setting.exit_costs, args.verbose)
    rule_doc = ("the project's: lowest summed IM val error" if rule == "project"
                else "official: the final epoch, tools/main_cifar_DDP.py:279-282")
    n = len(params["q_grid"])
    notes = [f"official schedule: SGD{' (fused)' if args.fused_sgd else ''} lr {lr:g} cosine per batch to 0, momentum {oargs.momentum:g}, weight decay "
             f"{wd:g}, batch {oargs.batch_size}, {epochs} epochs; WPN Adam lr {oargs.meta_lr:g}, weight decay "
             f"{oargs.meta_weight_decay:g}; epoch kept: {kept} ({rule_doc})",
             f"official threshold search vs its own test rule on the policy half: {len(points.policy_mismatch)} "
             f"of {n} q disagree",
             f"project's msdnet_thresholds on the official probabilities exits some policy sample elsewhere "
             f"for {len(points.project_search_diff)} of {n} q"
             + (f" ({', '.join(map(str, points.project_search_diff))})" if points.project_search_diff else "")]
    return points, notes, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    glue.add_arguments(ap)
    args = ap.parse_args()
    folder = glue.check_checkout(args.official_dir, REPO, COMMIT)

    glue.compare("l2w", args, folder, official_side,
                 lambda c: (f"L2W-DEN parity: {c.dataset} / {c.backbone}, seed {c.seed}, "
                            f"epsilon {c.method_params['epsilon']}, q {c.method_params['q']}"),
                 f"official: {REPO}@{COMMIT[:7]} (tools/main_cifar_DDP.train, MLP_tanh, "
                 f"Tester.dynamic_eval_find_threshold)")


if __name__ == "__main__":
    main()
