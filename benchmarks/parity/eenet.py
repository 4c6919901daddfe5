"""Parity of EENet: the official code (git-disl/EENet) against ``methods/eenet.py`` on the same
frozen-backbone features, IMs, splits and seed.

Written against https://github.com/git-disl/EENet at commit
a5e80c8216bfa72c9a888193717c394bd6836638 (the checkout given as ``--official-dir`` must be at it,
else the script exits 2 naming both commits). Run on demand (a benchmark, not a test)::

    git clone https://github.com/git-disl/EENet /work/official/eenet
    python benchmarks/parity/eenet.py --official-dir /work/official/eenet                         # digits
    python benchmarks/parity/eenet.py --official-dir /work/official/eenet --dataset cifar10 \\
        --backbone cifar_resnet56 --set weights=published --data-dir ../shared/data --weights-dir ../shared/weights

**Official side.** Imported at run time from the checkout, never copied: ``utils/predict_utils.py``
(``dynamic_evaluate``, which trains the scheduler through ``run_exit_assigner`` →
``utils/predict_helpers.py`` ``fit_exit_assigner`` / ``ExitAssigner`` / ``ScoreNormalizer``, scores
every sample with ``test_exit_assigner`` and evaluates with ``Tester.dynamic_eval_with_threshold``),
called once per budget with ``--conf_mode nn --edm nn --val_budget B`` as the README's EENet
commands do. It sees the softmax outputs of the project's IMs (the shared IM stage) and of the
frozen final classifier, written where ``dynamic_evaluate`` reads its cached logits
(``logits_single.pth``, predict_utils.py:18-20): its "val" is the policy half of val (the official
code trains its scheduler on validation predictions), its "test" the selection half of val and the
test split side by side (one scheduler answers both); ``flops.pth`` and ``seconds.csv`` hold the
project's normalised exit costs (with the official g_k's Mul-Adds, C + 1 + k), so budgets are in the
project's cost units. Each sample's exit is read off ``Tester.dynamic_eval_with_threshold``'s
``exited_samples`` (predict_utils.py:349-361); a sample it drops (it passes no threshold: T_K = 0 on
the raw score, predict_helpers.py:164) is answered at exit K for the project's metrics, and counted
in the notes beside the official's own accuracy (which counts it wrong and free). Two settings:

- *shipped*: ``config.py:152-160`` (CIFAR-10 ResNet-56): Adam lr 3e-5, weight decay 1e-2,
  α_ce 1e-3, α_cost 1e-2, 1,000 epochs at batch 512, ``hidden_dim_rate`` 0.5, ``period`` 10, β_ce 1;
- *project optimiser*: the method's ``scorer_lr``, ``scorer_weight_decay``, ``scorer_batch_size``,
  ⌈``scorer_steps`` / batches an epoch⌉ epochs, and every (α_ce, α_cost) of its candidates, chosen per
  budget on the selection half by the method's rule (``methods.eenet.choose_per_budget``).

The budgets are the method's (``method.budgets``, or ``num_budgets`` from the first exit's cost to 1).
``--official-trials 10`` runs the official selection among 10 trained schedulers per budget
(predict_utils.py:97-126: the most accurate on the data it trained on among those whose predicted
cost is within 10 % of B); the default, 1, trains one with ``run_exit_assigner`` and hands it to
``dynamic_evaluate`` as a stored scheduler (``ea_pkls/ea_B.pkl``, predict_utils.py:92-96, the
official path for its released schedulers). Both sides draw from the seed (numpy and torch).

**Project side.** ``methods/eenet.py`` fitted on the harness's ``ExitTask`` as ``eebench run`` fits
it, with ``scorer: paper`` (the default) and ``scorer: official`` (``methods/eenet_official.py``).

**Every side** is scored alike: for each budget B in 0.25 / 0.5 / 0.75, the point with the best
accuracy on the selection half of val among those with val cost ≤ B, reported by its test accuracy,
ECE (15 bins) and cost (``eebench.report.selection.select``, ``eebench.harness.metrics.evaluate``).

**What the adapter does where the official code cannot run as it is** (official file:line):

1. ``utils/predict_utils.py:13`` imports ``predict_helpers`` as a top-level module (``main.py:24-26``
   leaves the ``sys.path`` lines commented out): ``utils/`` is put on ``sys.path``.
2. ``utils/predict_helpers.py:23`` and ``:28`` add ``.unsqueeze(-1)`` to the second term of g_k:
   ``[N, 1] + [N, 1, 1]`` broadcasts to ``[N, N, 1]``, and exit 2's input concatenation
   (``predict_helpers.py:63``) crashes. ``ScoreNormalizer.forward`` / ``predict`` are replaced by the
   same two lines without it.
3. ``utils/predict_helpers.py:128`` returns the undefined name ``ce_loss`` (a NameError once 2 is
   fixed): the module gets a global ``ce_loss`` (a zero tensor); that tuple entry is only printed
   (``predict_helpers.py:213-216, 227``).
4. ``utils/predict_helpers.py:207-208`` call ``loss.backward(); optimizer.step()`` and never zero the
   gradients, so they accumulate over the whole run: ``predict_helpers.opt`` (``torch.optim``,
   line 6) is replaced by a namespace whose ``Adam`` sets the gradients to None after each step.
5. ``utils/predict_helpers.py:253-254`` take ``torch.log`` of the probabilities: a probability that
   underflowed to 0 gives NaN (0·−∞) and a NaN loss. The probabilities fed are floored at float32's
   smallest normal number (the count floored is printed; 0 changes nothing).
6. ``utils/predict_utils.py:17-30`` would run the model over data loaders and read ``flops.pth`` and
   ``seconds.csv`` from ``--save-path``: the cached logits and the costs are written there (above);
   ``use_gpu`` is False (``args.py:65``'s default), so ``predict_utils.py:32-38`` keep everything on
   the CPU; ``predict_utils.py:129-130`` write into ``ea_pkls/``, which is created.
7. ``utils/predict_utils.py:121`` compares with ``args.val_budget`` (a TypeError when it is None,
   the scan of lines 87-88): one budget is passed per call.

Departures of the project from this code, with their measured effect: ``docs/fidelity.md``.
"""
from __future__ import annotations

import argparse
import math
import pickle
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _official_eenet_jei import (Side, add_arguments, check_checkout, official_imports, prepare,  # noqa: E402
                                 print_table, project_side, quiet)

REPO = "git-disl/EENet"
COMMIT = "a5e80c8216bfa72c9a888193717c394bd6836638"
#: config.py:152-160, ``inference_params['cifar10']['resnet56_3']``.
SHIPPED = {"weight_decay": 1e-2, "beta_ce": 1, "alpha_ce": 1e-3, "alpha_cost": 1e-2, "num_epoch": 1000, "bs": 512,
           "lr": 3e-5, "hidden_dim_rate": 0.5, "period": 10}


def load_official(folder: Path) -> types.SimpleNamespace:
    """``predict_utils`` and ``predict_helpers`` of the checkout, with fixes 1-4 of the docstring."""
    import torch

    with official_imports([folder / "utils"]):
        import predict_helpers as ph
        import predict_utils as pu

    def forward(self: Any, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:      # predict_helpers.py:22-25
        q_hat = self.q_layer_1(X[:, :self.c]) * self.alpha_adj + self.q_layer_2(X[:, self.c:])
        return q_hat, self.prob_out(X)

    def predict(self: Any, X: torch.Tensor) -> torch.Tensor:                          # predict_helpers.py:27-29
        return self.q_layer_1(X[:, :self.c]) * self.alpha_adj + self.q_layer_2(X[:, self.c:])

    class ZeroingAdam(torch.optim.Adam):
        """Adam whose gradients are set to None after every step (fix 4)."""

        def step(self, *args: Any, **kwargs: Any) -> Any:
            out = super().step(*args, **kwargs)
            self.zero_grad(set_to_none=True)
            return out

    ph.ScoreNormalizer.forward, ph.ScoreNormalizer.predict = forward, predict
    ph.ce_loss = torch.zeros(1)
    ph.opt = types.SimpleNamespace(Adam=ZeroingAdam)
    return types.SimpleNamespace(ph=ph, pu=pu)


def official_side(setting: Any, official: types.SimpleNamespace, name: str, hyper: dict[str, Any],
                  alphas: list[tuple[float, float]], trials: int, verbose: bool) -> Side:
    """The official scheduler trained per (budget, α) on the policy half, its points on the
    selection half and on test (see the docstring)."""
    import numpy as np
    import torch

    from eebench.method import OperatingPoint, exit_probs
    from methods.eenet import auto_budgets, choose_per_budget, feasible_budgets
    from methods.eenet_official import OfficialScheduler

    task, params = setting.task, setting.config.method_params
    K, C, seed = setting.num_exits, setting.num_classes, setting.config.seed
    gate_muladds = OfficialScheduler(K, C).gate_muladds()
    costs = setting.prep.costs.exit_costs(gate_muladds)
    budgets = feasible_budgets(params["budgets"] or auto_budgets(float(costs[0]), int(params["num_budgets"])), costs)
    ims = task.trained_ims()
    probs = {s: exit_probs(ims, f) for s, f in (("policy", task.policy), ("val", task.val), ("test", setting.test))}
    tiny = torch.finfo(torch.float32).tiny
    floored = sum(int((p < tiny).sum()) for p in probs.values())
    official_p = {s: p.clamp_min(tiny).permute(1, 0, 2).contiguous() for s, p in probs.items()}   # [K, N, C] (fix 5)
    labels = {"policy": task.policy.labels, "val": task.val.labels, "test": setting.test.labels}
    n_val = task.val.n
    settings = [(B, a_ce, a_cost) for B in budgets for a_ce, a_cost in alphas]
    runs = []
    for B, a_ce, a_cost in settings:
        inference = {**hyper, "alpha_ce": a_ce, "alpha_cost": a_cost}
        runs.append(run_official(official, official_p, labels, costs, float(B), inference, trials, seed, verbose))
    val_correct = (probs["val"].argmax(-1) == labels["val"][:, None]).numpy()
    chosen = choose_per_budget(settings, budgets, lambda m: (runs[m]["exits"][:n_val], runs[m]["T"]), costs,
                               val_correct, params["budget_tolerance"])
    val_points, test_points, notes = [], [], [f"{floored} probabilities floored at {tiny:.3g} (fix 5)"]
    for s, m, _ in chosen:
        r = runs[m]
        val_points.append(OperatingPoint(s, r["exits"][:n_val], probs["val"], gate_muladds))
        test_points.append(OperatingPoint(s, r["exits"][n_val:], probs["test"], gate_muladds))
        notes.append(f"B={s['budget']} α=({s['alpha_ce']}, {s['alpha_cost']}): the official evaluator drops "
                     f"{r['dropped_val']} of {n_val} val and {r['dropped_test']} of {setting.test.n} test samples; "
                     f"its own test accuracy (dropped = wrong) {r['official_acc']:.2f} %, mean r̂ cost "
                     f"{r['predicted_cost']:.3f}, T = {np.round(r['T'], 3).tolist()}")
    return Side(name, val_points, test_points, gate_muladds, notes)


def run_official(official: types.SimpleNamespace, p: dict[str, Any], labels: dict[str, Any], costs: Any, budget: float,
                 inference: dict[str, Any], trials: int, seed: int, verbose: bool) -> dict[str, Any]:
    """One call of ``predict_utils.dynamic_evaluate`` at budget ``budget``.

    Args:
        p: ``[K, N, C]`` probabilities of the policy half, the selection half and test.

    Returns:
        ``exits`` (``[N_val + N_test]``, 0-based; dropped samples at K−1), ``T``, the counts dropped,
        the official accuracy on test and the mean r̂ cost.
    """
    import numpy as np
    import torch

    pu = official.pu
    K = p["policy"].shape[0]
    seconds = [float(c) for c in costs]
    evaluated = torch.cat([p["val"], p["test"]], 1)
    target = {s: labels[s].float() for s in labels}
    with tempfile.TemporaryDirectory() as tmp:
        save = Path(tmp)
        (save / "ea_pkls").mkdir()
        torch.save((p["policy"], target["policy"], evaluated, torch.cat([target["val"], target["test"]])),
                   save / "logits_single.pth")
        torch.save(seconds, save / "flops.pth")
        (save / "seconds.csv").write_text("".join(f"{c!r}\n" for c in seconds))
        args = types.SimpleNamespace(save_path=str(save), use_gpu=False, exit_distribution_method="nn", conf_mode="nn",
                                     inference_save_filename="dynamic", val_budget=budget, num_exits=K,
                                     inference_params=dict(inference), print_freq=10)
        captured: dict[str, Any] = {}
        original = pu.handle_eval_outputs

        def capture(tester: Any, test_pred: Any, test_target: Any, test_nn_array: Any, probs: Any, *rest: Any) -> Any:
            captured.update(tester=tester, nn=test_nn_array, probs=probs, T=rest[2])
            return original(tester, test_pred, test_target, test_nn_array, probs, *rest)

        np.random.seed(seed)
        torch.manual_seed(seed)
        pu.handle_eval_outputs = capture
        try:
            with quiet(verbose):
                if trials == 1:           # one scheduler, stored where dynamic_evaluate looks first
                    key = np.linspace(budget, budget + 1, 1)[0]
                    _, probs, ea = pu.run_exit_assigner(args, p["policy"], target["policy"], torch.tensor(seconds), key)
                    pickle.dump(ea, open(save / "ea_pkls" / f"ea_{key}.pkl", "wb"))
                    pickle.dump(probs, open(save / "ea_pkls" / f"probs_{key}.pkl", "wb"))
                pu.dynamic_evaluate(None, None, None, args)
                out = {}
                n_val = p["val"].shape[1]
                exits = np.full(evaluated.shape[1], K - 1)
                for part, lo, hi in (("val", 0, n_val), ("test", n_val, evaluated.shape[1])):
                    acc, _, _, _, exited, _ = captured["tester"].dynamic_eval_with_threshold(
                        evaluated[:, lo:hi], target[part], seconds, seconds, captured["T"], conf_mode="nn",
                        nn_array=captured["nn"][:, lo:hi])
                    for k, rows in enumerate(exited):
                        exits[lo + np.asarray(rows, dtype=int)] = k
                    out[f"dropped_{part}"] = hi - lo - sum(len(r) for r in exited)
                    out["official_acc"] = float(acc)
        finally:
            pu.handle_eval_outputs = original
    predicted = sum(float(a) * c for a, c in zip(captured["probs"], seconds))
    return {**out, "exits": exits, "T": np.asarray(captured["T"], dtype=np.float64), "predicted_cost": predicted}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=f"Parity of EENet: the official code ({REPO} at commit {COMMIT}) against methods/eenet.py "
                    f"(scorer paper and official) on the same features, IMs, splits and seed.",
        epilog=f"Written against https://github.com/{REPO} at commit {COMMIT}. See the module docstring for the "
               f"fixes the adapter applies, with official file:line.")
    add_arguments(parser)
    parser.add_argument("--official-trials", type=int, choices=(1, 10), default=1,
                        help="schedulers the official side trains per budget and α (10: the official best-of-10 "
                             "selection, predict_utils.py:97-126; default 1)")
    args = parser.parse_args()
    folder = check_checkout(args.official_dir, REPO, COMMIT)
    setting = prepare(args, "eenet")
    official = load_official(folder)
    params = setting.config.method_params
    steps_per_epoch = math.ceil(setting.task.policy.n / int(params["scorer_batch_size"]))
    project_hyper = {**SHIPPED, "lr": params["scorer_lr"], "weight_decay": params["scorer_weight_decay"],
                     "bs": int(params["scorer_batch_size"]),
                     "num_epoch": math.ceil(int(params["scorer_steps"]) / steps_per_epoch)}
    project_alphas = [(float(a), float(b)) for a in params["alpha_ce"] for b in params["alpha_cost"]]
    sides = [
        official_side(setting, official, "official, shipped", SHIPPED,
                      [(SHIPPED["alpha_ce"], SHIPPED["alpha_cost"])], args.official_trials, args.verbose),
        official_side(setting, official, "official, project optimiser", project_hyper, project_alphas,
                      args.official_trials, args.verbose),
        project_side(setting, "project (scorer paper)", {"scorer": "paper"}),
        project_side(setting, "project scorer=official", {"scorer": "official"}),
    ]
    print(f"official: {REPO} at {COMMIT}, {args.official_trials} trial(s) per budget; shipped = {SHIPPED}; "
          f"project optimiser = {project_hyper} with α ∈ {project_alphas}")
    print_table(setting, sides)


if __name__ == "__main__":
    main()
