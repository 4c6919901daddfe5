"""Glue of the parity scripts of EENet and JEI-DNN (``eenet.py``, ``jei.py``): no official code
lives here; the scripts import it at run time from the checkout given as ``--official-dir``.

- ``check_checkout``, ``fail``, ``BUDGETS`` (from ``_checkout``, shared by every parity script): the
  checkout is at the commit a script was written against, or the script exits 2 with one line
  naming both commits (and, with no ``--official-dir``, what to fetch).
- :func:`official_imports`: the checkout's folders on ``sys.path``, stand-ins for what its modules
  need at import time and the functions called here do not (each script names them).
- :func:`quiet`: what the official code prints goes to stderr with ``--verbose``, nowhere without.
- :func:`prepare`, :func:`project_side`, :func:`score`, :func:`print_table`: the project's side
  through the harness (the run configuration, feature cache, shared IM stage and ``ExitTask`` of
  ``eebench run``), and every side scored alike with the project's metrics and val-selection rule.

The top of this module imports the standard library only, so that a wrong checkout is reported
before torch loads; torch and the harness are imported inside the functions that use them.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from _checkout import BUDGETS, add_common_arguments, check_checkout, fail  # noqa: F401 (re-exported)


#: The options of both scripts: those of every parity script.
add_arguments = add_common_arguments


@contextlib.contextmanager
def official_imports(paths: Sequence[Path], stubs: dict[str, Any] | None = None) -> Iterator[None]:
    """``paths`` first on ``sys.path`` and ``stubs`` (module name → stand-in) in ``sys.modules``
    while the official modules are imported inside the block.

    Raises:
        SystemExit: 2, with one line, when an import fails (a package missing here).
    """
    for name, stand_in in (stubs or {}).items():
        sys.modules.setdefault(name, stand_in)
    for p in reversed([str(p) for p in paths]):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # timm's deprecated import paths (JEI-DNN)
            yield
    except ImportError as e:
        fail(f"importing the official code from {paths[0]} failed: {e}; install the package it names in this "
             f"venv (.venv/bin/pip install ...) and run again")


@contextlib.contextmanager
def quiet(verbose: bool) -> Iterator[None]:
    """What the official code prints goes to stderr with ``verbose``, nowhere without; its warnings
    (``nn.KLDivLoss``'s reduction, scipy's) are silenced."""
    sink = sys.stderr if verbose else io.StringIO()
    with contextlib.redirect_stdout(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@dataclass
class Setting:
    """The project's run of ``method`` on the script's options: its config, features and task."""

    config: Any
    prep: Any
    task: Any
    test: Any                      # SplitFeatures of test (in memory)

    @property
    def num_exits(self) -> int:
        return self.prep.costs.num_exits

    @property
    def num_classes(self) -> int:
        return self.prep.splits.spec.num_classes


def prepare(args: argparse.Namespace, method: str) -> Setting:
    """Resolve the run configuration of ``method`` as ``eebench run`` would (``--dataset``,
    ``--backbone``, ``--seed``, ``--set``), load or build the feature cache, and carve the task
    (train; the policy and selection halves of val; the shared IM stage).

    Raises:
        SystemExit: 2 with the harness's one-line message on a bad option or unreachable data.
    """
    import torch

    from eebench.errors import EEBenchError
    from eebench.harness.config import resolve
    from eebench.harness.runner import RunOptions, exit_task, prepare_features
    from eebench.harness.threads import fit_threads
    from eebench.harness.training import no_progress

    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        config = resolve(method, args.dataset, args.backbone, args.seed, args.sets, data_dir=args.data_dir)
        options = RunOptions(args.data_dir, args.weights_dir, args.cache_dir)
        prep = prepare_features(config.dataset, config.backbone, config.dataset_params, options, None,
                                config.weights, config.recipe, config.backbone_params)
        torch.set_num_threads(fit_threads())
        task, _, _ = exit_task(prep, config, args.cache_dir, progress=no_progress)
    except EEBenchError as e:
        fail(str(e))
    return Setting(config, prep, task, prep.features["test"].in_memory())


@dataclass
class Side:
    """One column of the table: operating points on the selection half of val and on test (the same
    settings in the same order), and the gate Mul-Adds their costs count."""

    name: str
    val: list
    test: list
    gate_muladds: list[int]
    notes: list[str] = field(default_factory=list)


def project_side(setting: Setting, name: str, overrides: dict[str, Any] | None = None) -> Side:
    """The project's method fitted on ``setting.task`` as ``eebench run`` fits it (parameters of the
    run configuration, ``overrides`` over them), its points on the selection half and on test."""
    import torch

    from eebench.harness.config import check_params
    from eebench.harness.method import load_methods

    method = load_methods().get(setting.config.method)
    params = check_params("method", method.name, {**setting.config.method_params, **(overrides or {})},
                          method.parameters, method.constraints)
    torch.manual_seed(setting.config.seed)
    fitted = method.fit(setting.task, params, setting.config.seed)
    val, test = fitted.predict(setting.task.val), fitted.predict(setting.test)
    return Side(name, val, test, list(fitted.gate_muladds))


def score(setting: Setting, side: Side, budgets: Sequence[float] = BUDGETS) -> list[dict[str, Any] | None]:
    """For each budget B: the point with the best accuracy on the selection half of val among those
    with val cost ≤ B (``eebench.report.selection.select``), and its test accuracy, ECE (15 bins)
    and cost (``eebench.harness.metrics.evaluate``); None where no point has val cost ≤ B."""
    import numpy as np

    from eebench.harness.metrics import evaluate
    from eebench.report.selection import select

    costs = setting.prep.costs.exit_costs(side.gate_muladds)
    muladds = setting.prep.costs.exit_muladds(side.gate_muladds)
    v = [evaluate(p, setting.task.val.labels.numpy(), None, None, costs, muladds) for p in side.val]
    picks = select(np.array([m["cost"] for m in v]), np.array([m["accuracy"] for m in v]), budgets)
    out: list[dict[str, Any] | None] = []
    for i in picks:
        if i < 0:
            out.append(None)
            continue
        t = evaluate(side.test[i], setting.test.labels.numpy(), None, None, costs, muladds)
        out.append({"setting": side.test[i].setting, "accuracy": t["accuracy"], "ece": t["ece"], "cost": t["cost"],
                    "val_accuracy": v[i]["accuracy"], "val_cost": v[i]["cost"]})
    return out


def print_table(setting: Setting, sides: Sequence[Side], budgets: Sequence[float] = BUDGETS) -> None:
    """budget | per side: test acc % / ECE % / cost of the point chosen on val; then each side's
    points (val cost, val acc, test cost, test acc) and its notes."""
    cfg = setting.config
    print(f"\n{cfg.method} parity on {cfg.dataset} / {cfg.backbone}, seed {cfg.seed}: policy half {setting.task.policy.n}, "
          f"selection half {setting.task.val.n}, test {setting.test.n} samples, {setting.num_exits} exits; "
          f"test acc % / ECE % / cost of the point with the best val accuracy among val cost <= B")
    scores = [score(setting, s, budgets) for s in sides]
    width = 24
    print("| budget | " + " | ".join(f"{s.name:<{width}}" for s in sides) + " |")
    print("|---|" + "---|" * len(sides))
    for j, b in enumerate(budgets):
        cells = []
        for sc in scores:
            r = sc[j]
            cells.append(f"{'–':<{width}}" if r is None else
                         f"{100 * r['accuracy']:.2f} / {100 * r['ece']:.2f} / {r['cost']:.3f}".ljust(width))
        print(f"| {b:.2f} | " + " | ".join(cells) + " |")
    for s, sc in zip(sides, scores):
        chosen = [None if r is None else r["setting"] for r in sc]
        print(f"\n{s.name}: points (val cost, val acc %, test cost, test acc %); chosen at {', '.join(map(str, budgets))}: "
              f"{chosen}")
        costs = setting.prep.costs.exit_costs(s.gate_muladds)
        for pv, pt in zip(s.val, s.test):
            vacc = float((pv.answered_probs.argmax(1) == setting.task.val.labels).float().mean())
            tacc = float((pt.answered_probs.argmax(1) == setting.test.labels).float().mean())
            print(f"  {pt.setting}: {costs[pv.exit_index].mean():.3f} {100 * vacc:.2f} "
                  f"{costs[pt.exit_index].mean():.3f} {100 * tacc:.2f}")
        for note in s.notes:
            print(f"  note: {note}")
