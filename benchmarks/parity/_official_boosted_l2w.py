"""Glue of the parity scripts of BoostedNet and L2W-DEN (``boosted.py``, ``l2w.py``): no official
code lives here; the scripts import it at run time from the checkout given as ``--official-dir``.

- ``check_checkout``, ``fail``, ``BUDGETS`` (from ``_checkout``, shared by every parity script): the
  checkout is at the commit a script was written against, or the script exits 2 with one line
  naming both commits (and, with no ``--official-dir``, what to fetch).
- :func:`import_official`: the checkout on ``sys.path`` and ``sys.argv`` set to the official flags
  while its modules are imported (both repositories parse ``sys.argv`` at import time).
- :func:`cuda_on_host`: ``.cuda()`` of tensors and modules made a no-op while official functions
  run, so that they run on the CPU, on the project's tensors.
- :func:`frozen_backbone_net`: the project's IMs and the frozen final classifier as the ``model``
  the official loops call (``blocks``, ``classifier``, ``forward(x, stage)`` → K logits).
- :class:`FeatureLoader`: mini-batches of the project's cached features as the official loops
  read a ``DataLoader``: ``x`` ``[B, ΣD_k + C]`` (the K−1 IM inputs side by side, then the frozen
  classifier's logits), ``y`` ``[B]``.
- :func:`official_points`: the official ``Tester``'s threshold search on the policy half of val,
  as the project's operating points on any split.
- :func:`prepare`, :func:`project_points`, :func:`score`, :func:`print_report`: the project's
  side through the harness, and both sides scored with the project's metrics and val-selection rule.

The top of this module imports the standard library only, so that a wrong checkout is reported
before torch loads; torch and the harness are imported inside the functions that use them.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import io
import math
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from _checkout import BUDGETS, add_common_arguments, check_checkout, fail  # noqa: F401 (re-exported)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both scripts share."""
    add_common_arguments(parser)
    parser.add_argument("--official-schedule", action="store_true",
                        help="the official side trains with the official learning rate, weight decay and "
                             "schedule and keeps the official checkpoint (see the docstring)")
    parser.add_argument("--checkpoint", choices=("project", "official"),
                        help="which epoch the official side keeps: the project's rule (default) or the official "
                             "code's (default with --official-schedule)")
    parser.add_argument("--lr", type=float, help="learning rate of the official side (overrides the schedule's)")
    parser.add_argument("--weight-decay", type=float, help="weight decay of the official side (overrides)")
    parser.add_argument("--fused-sgd", action="store_true",
                        help="the official side's SGD runs torch's fused kernel, as the project's does (the same "
                             "update, rounded as the project rounds it)")
    parser.add_argument("--official-only", action="store_true",
                        help="fit the official side only (to measure a variant of it); the project columns print –")


def import_official(folder: Path, module: str, argv: Sequence[str], extra_paths: Sequence[str] = (),
                    stubs: dict[str, types.ModuleType] | None = None) -> types.ModuleType:
    """Import ``module`` of the official checkout at ``folder``, with ``sys.argv`` set to ``argv``
    while it loads (the official argument parsers run at import time).

    Args:
        folder: the checkout (put first on ``sys.path``), with ``extra_paths`` below it.
        stubs: module name → a stand-in module, put in ``sys.modules`` (for a package the official
            file imports but the functions called here do not use; the caller passes it only where
            the package is missing).

    Raises:
        SystemExit: 2, with one line, when the import fails (a package missing here).
    """
    for name, stand_in in (stubs or {}).items():
        sys.modules.setdefault(name, stand_in)
    for p in reversed([str(folder), *(str(folder / e) for e in extra_paths)]):
        if p not in sys.path:
            sys.path.insert(0, p)
    saved = sys.argv
    sys.argv = list(argv)
    try:
        return importlib.import_module(module)
    except ImportError as e:
        fail(f"importing {module} from {folder} failed: {e}; install the package it names in this venv "
             f"(.venv/bin/pip install ...) and run again")
    except SystemExit as e:   # the official argparse rejected the flags
        fail(f"the official argument parser of {folder} rejected {' '.join(argv[1:])} (exit {e.code})")
    finally:
        sys.argv = saved


def findable(name: str) -> bool:
    """Whether a module ``name`` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def cuda_on_host(verbose: bool = False) -> Iterator[None]:
    """While official code runs: ``Tensor.cuda`` and ``Module.cuda`` return their object unchanged
    (everything stays on the CPU, where the project's features are), and what it prints goes to
    stderr with ``verbose``, nowhere without."""
    import torch

    saved = torch.Tensor.cuda, torch.nn.Module.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self        # type: ignore[method-assign]
    torch.nn.Module.cuda = lambda self, *a, **k: self     # type: ignore[method-assign]
    sink = sys.stderr if verbose else io.StringIO()
    try:
        with contextlib.redirect_stdout(sink):
            yield
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda = saved   # type: ignore[method-assign]


@functools.cache
def _net_classes() -> tuple[type, type]:
    """``(BackboneLogits, FrozenBackboneExits)``, defined on first use (torch is imported lazily)."""
    from torch import nn

    class BackboneLogits(nn.Module):
        """The frozen final classifier: its logits are cached, so its input is its output ``[B, C]``."""

        def forward(self, logits: Any) -> Any:
            return logits

    class FrozenBackboneExits(nn.Module):
        """The project's K−1 IMs and the frozen classifier in the shape of the official MSDNet:
        ``blocks`` (K identities: the backbone is frozen and its features cached), ``classifier``
        (IM 1..K−1, then :class:`BackboneLogits`), and ``forward(x, stage=None)``: ``x`` ``[B, ΣD_k + C]``
        → the list of the logits ``[B, C]`` of exits 1..stage+1 (all K when ``stage`` is None or ≥ K−1),
        the contract of the official MSDNet's ``forward(x, stage)``.

        Only the IMs have parameters: the official optimisers and meta-step see exactly the
        parameters the project trains.
        """

        def __init__(self, ims: nn.ModuleList, dims: Sequence[int], num_classes: int):
            super().__init__()
            self.split_sizes = [*map(int, dims), int(num_classes)]
            self.nBlocks = len(ims) + 1
            self.blocks = nn.ModuleList(nn.Identity() for _ in range(self.nBlocks))
            self.classifier = nn.ModuleList([*ims, BackboneLogits()])

        @property
        def ims(self) -> nn.ModuleList:
            """The K−1 IMs (a view of ``classifier``)."""
            return nn.ModuleList(list(self.classifier)[:-1])

        def forward(self, x: Any, stage: int | None = None) -> list:
            parts = x.split(self.split_sizes, 1)
            out = []
            for i, head in enumerate(self.classifier):
                out.append(head(self.blocks[i](parts[i])))
                if i == stage:
                    break
            return out

    return BackboneLogits, FrozenBackboneExits


def frozen_backbone_net(ims: Any, dims: Sequence[int], num_classes: int) -> Any:
    """A ``FrozenBackboneExits`` module (see :func:`_net_classes`) over the IMs ``ims``.

    Raises:
        SystemExit: 2 when an IM has a frozen parameter (the official meta-optimiser pairs every
            parameter with a gradient, L2W-DEN ``tools/meta.py:30``).
    """
    if any(not p.requires_grad for p in ims.parameters()):
        fail("an IM of this backbone has frozen parameters; the official code differentiates every parameter: "
             "use a backbone whose IMs are fully trainable")
    return _net_classes()[1](ims, dims, num_classes)


class FeatureLoader:
    """Mini-batches ``(x [B, ΣD_k + C] float32, y [B] int64)`` of a split's cached features, as the
    official loops iterate a ``DataLoader``.

    Args:
        split: a ``SplitFeatures``.
        batch_size: rows per batch.
        generator: shuffle with the project's ``minibatches`` on this generator (the order the
            project's fit draws with the same seed); None: in order.
        min_batch: batches with fewer rows are skipped (L2W-DEN halves each batch).
    """

    def __init__(self, split: Any, batch_size: int, generator: Any = None, min_batch: int = 1):
        self.split, self.batch_size, self.generator, self.min_batch = split, int(batch_size), generator, min_batch

    def __len__(self) -> int:
        n, b = self.split.n, self.batch_size
        return n // b + (1 if n % b >= self.min_batch else 0)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        import torch
        from eebench.method import minibatches

        n = self.split.n
        batches = (minibatches(n, self.batch_size, self.generator) if self.generator is not None
                   else torch.arange(n).split(self.batch_size))
        for idx in batches:
            if len(idx) < self.min_batch:
                continue
            x = torch.cat([*self.split.rows(idx), self.split.logits[idx].float()], 1)
            yield x, self.split.labels[idx]


class NullWriter:
    """A summary writer that keeps nothing (BoostedNet's ``train`` logs scalars through one)."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        return None


def official_shares(q: float, num_exits: int) -> Any:
    """Target exit shares π_k ∝ q^k in float32, as the official ``dynamic_evaluate`` computes them
    (BoostedNet ``adaptive_inference.py:32-35``; L2W-DEN ``tools/adaptive_inference.py:22-24``). ``[K]``."""
    import torch

    p = torch.exp(torch.log(torch.FloatTensor(1).fill_(q)) * torch.arange(1, num_exits + 1).float())
    return p / p.sum()


def first_passing(probs: Any, thresholds: Any) -> Any:
    """The official test rule, vectorised: the first exit k with max probability ≥ T_k (as
    ``Tester.dynamic_eval_with_threshold``), on ``[K, N, C]`` probabilities and ``[K]`` thresholds → ``[N]`` int64."""
    import torch

    passed = probs.amax(-1) >= thresholds[:, None]          # [K, N], float32 against float32
    passed[-1] = True
    return passed.to(torch.uint8).argmax(0).numpy().astype("int64")


@dataclass
class OfficialPoints:
    """The official side's operating points and what was checked on the way.

    Attributes:
        val, test: operating points on the selection half of val and on test, one per q.
        policy_mismatch: q values where the official ``dynamic_eval_find_threshold``'s accuracy on the
            policy half disagrees with the vectorised rule's (should be empty).
        project_search_diff: q values where the project's ``msdnet_thresholds`` on the same
            probabilities exits some policy sample elsewhere than the official search.
        tester: the official Tester (for :func:`check_with_official`).
    """

    val: list
    test: list
    policy_mismatch: list = field(default_factory=list)
    project_search_diff: list = field(default_factory=list)
    tester: Any = None
    test_probs: Any = None
    test_targets: Any = None
    flops: list = field(default_factory=list)
    thresholds: list = field(default_factory=list)


def official_points(tester: Any, probs: dict[str, tuple[Any, Any]], q_grid: Sequence[float],
                    exit_costs: Sequence[float], verbose: bool = False) -> OfficialPoints:
    """Operating points from the official threshold search.

    For each q: shares by :func:`official_shares`; thresholds by the official
    ``Tester.dynamic_eval_find_threshold`` on the policy half (the official code searches on its
    validation or train loader); exits on the selection half and on test by the official rule.

    Args:
        tester: the official ``Tester``.
        probs: ``"policy"``, ``"val"``, ``"test"`` → ``(probs [K, N, C], targets [N])`` from
            ``Tester.calc_logit``.
        exit_costs: ``[K]`` the project's normalised cost of each exit (the ``flops`` argument, so
            that the official expected flops are the project's mean cost).
    """
    import numpy as np
    from eebench.method import OperatingPoint, apply_thresholds, msdnet_thresholds

    K = probs["policy"][0].shape[0]
    flops = [float(c) for c in exit_costs]
    out = OfficialPoints([], [], tester=tester, test_probs=probs["test"][0], test_targets=probs["test"][1],
                         flops=flops)
    pol_p, pol_y = probs["policy"]
    pol_conf = pol_p.amax(-1).T.double().numpy()
    nkc = {s: probs[s][0].permute(1, 0, 2).contiguous() for s in ("val", "test")}
    for q in q_grid:
        with cuda_on_host(verbose):
            acc_pol, _, T = tester.dynamic_eval_find_threshold(pol_p, pol_y, official_shares(q, K), flops)
        out.thresholds.append(T.clone())
        exits_pol = first_passing(pol_p, T)
        correct = int((pol_p.argmax(-1).T[np.arange(len(exits_pol)), exits_pol] == pol_y.long()).sum())
        if round(float(acc_pol) * len(exits_pol) / 100) != correct:     # official: correct * 100 / n
            out.policy_mismatch.append(q)
        if not np.array_equal(apply_thresholds(pol_conf, msdnet_thresholds(pol_conf, q)), exits_pol):
            out.project_search_diff.append(q)
        for s in ("val", "test"):
            exits = first_passing(probs[s][0], T)
            getattr(out, s).append(OperatingPoint({"q": q}, exits, nkc[s], [0] * (K - 1)))
    return out


def check_with_official(points: OfficialPoints, indices: Sequence[int], labels: Any, costs: Any,
                        verbose: bool = False) -> float:
    """The largest difference between the official ``Tester.dynamic_eval_with_threshold`` (test
    accuracy %, expected cost) and the project's figures of the same points (``indices``); 0 when
    the glue hands the official thresholds on faithfully."""
    import numpy as np

    worst = 0.0
    for i in indices:
        if i < 0:
            continue
        with cuda_on_host(verbose):
            acc, cost = points.tester.dynamic_eval_with_threshold(points.test_probs, points.test_targets,
                                                                  points.flops, points.thresholds[i])
        p = points.test[i]
        mine_acc = 100 * float((p.answered_probs.argmax(1).numpy() == np.asarray(labels)).mean())
        mine_cost = float(np.asarray(costs)[p.exit_index].mean())
        worst = max(worst, abs(float(acc) - mine_acc), 100 * abs(float(cost) - mine_cost))
    return worst


@dataclass
class Setting:
    """What both sides fit on: the resolved run config, the features and the project's ExitTask."""

    config: Any
    prep: Any
    task: Any
    test: Any

    @property
    def num_exits(self) -> int:
        return self.prep.costs.num_exits

    @property
    def num_classes(self) -> int:
        return self.prep.splits.spec.num_classes

    @property
    def exit_costs(self) -> Any:
        return self.prep.costs.exit_costs([0] * (self.num_exits - 1))

    @property
    def exit_muladds(self) -> Any:
        return self.prep.costs.exit_muladds([0] * (self.num_exits - 1))


def prepare(method: str, args: argparse.Namespace) -> Setting:
    """Resolve the run config (``--set`` as ``eebench run``), load or build the feature cache, and
    carve the project's ExitTask (train; the policy and selection halves of val). One torch thread.

    Raises:
        EEBenchError: as ``eebench run`` (the caller prints it and exits with its status).
    """
    import torch
    from eebench.harness.config import resolve
    from eebench.harness.runner import RunOptions, exit_task, prepare_features
    from eebench.harness.training import no_progress

    torch.set_num_threads(1)
    config = resolve(method, args.dataset, args.backbone, args.seed, args.sets, None, args.data_dir)
    prep = prepare_features(config.dataset, config.backbone, config.dataset_params,
                            RunOptions(args.data_dir, args.weights_dir, args.cache_dir), weights=config.weights,
                            recipe=config.recipe, backbone_params=config.backbone_params)
    torch.set_num_threads(1)
    task, _, _ = exit_task(prep, config, args.cache_dir, progress=no_progress)
    return Setting(config, prep, task, prep.features["test"].in_memory())


def project_side(setting: Setting, skip: bool = False) -> tuple[Scored, str]:
    """The project's method fitted as ``eebench run`` fits it (same seed, same task) and scored;
    with ``skip``, nothing (:meth:`Scored.not_run`).

    Returns:
        ``(its figures, a header line)``.
    """
    if skip:
        return Scored.not_run(), "project:  not run (--official-only)"
    val, test, seconds = project_points(setting)
    return score(val, test, setting), f"project:  methods/{setting.config.method}.py through the harness, fit {seconds:.0f} s"


def project_points(setting: Setting) -> tuple[list, list, float]:
    """The project's method fitted as ``eebench run`` fits it (same seed, same task).

    Returns:
        ``(points on the selection half of val, points on test, fit seconds)``.
    """
    import torch
    from eebench.harness.method import load_methods

    config = setting.config
    torch.manual_seed(config.seed)
    t0 = time.perf_counter()
    fitted = load_methods().get(config.method).fit(setting.task, config.method_params, config.seed)
    seconds = time.perf_counter() - t0
    return fitted.predict(setting.task.val), fitted.predict(setting.test), seconds


@dataclass
class Scored:
    """One side's figures: per budget ``(test accuracy %, test ECE %, test cost)`` of the point chosen
    on the selection half of val (None: no point of val cost ≤ B), and each exit's test accuracy %."""

    cells: list
    exit_accuracy: list
    picks: list

    @classmethod
    def not_run(cls) -> "Scored":
        """The figures of a side that was not fitted (``--official-only``)."""
        return cls([None] * len(BUDGETS), [], [-1] * len(BUDGETS))


def score(val_points: list, test_points: list, setting: Setting) -> Scored:
    """Both sides' rule: for each budget B, the point with the best val accuracy among those with
    val cost ≤ B (:func:`eebench.report.selection.select`), reported by its test figures
    (:func:`eebench.harness.metrics.evaluate`)."""
    import numpy as np
    from eebench.harness.metrics import evaluate
    from eebench.report.selection import select

    costs, muladds = setting.exit_costs, setting.exit_muladds
    y_val, y_test = setting.task.val.labels.numpy(), setting.test.labels.numpy()
    v_cost = np.array([costs[p.exit_index].mean() for p in val_points])
    v_acc = np.array([(p.answered_probs.argmax(1).numpy() == y_val).mean() for p in val_points])
    picks = [int(i) for i in select(v_cost, v_acc, BUDGETS)]
    cells = []
    for i in picks:
        if i < 0:
            cells.append(None)
            continue
        m = evaluate(test_points[i], y_test, None, None, costs, muladds)
        cells.append((100 * m["accuracy"], 100 * m["ece"], m["cost"]))
    per_exit = (test_points[0].exit_probs.argmax(-1).numpy() == y_test[:, None]).mean(0) * 100
    return Scored(cells, [float(a) for a in per_exit], picks)


def _cell(c: tuple | None) -> str:
    return "–" if c is None else f"{c[0]:.2f} / {c[1]:.2f} / {c[2]:.3f}"


def print_report(title: str, header: list[str], official: Scored, project: Scored, notes: list[str]) -> None:
    """The table ``budget | official acc / ECE / cost | project acc / ECE / cost`` (test figures of
    the point chosen on val; accuracy and ECE in %, cost a fraction of the backbone's Mul-Adds),
    then each exit's test accuracy on both sides and ``notes``."""
    print(title)
    for line in header:
        print(line)
    print()
    print("| budget | official acc / ECE / cost | project acc / ECE / cost |")
    print("|---:|---:|---:|")
    for b, o, p in zip(BUDGETS, official.cells, project.cells):
        print(f"| {b:.2f} | {_cell(o)} | {_cell(p)} |")
    print()
    print("exit test accuracy % (all test samples at each exit):")
    print("  official: " + " ".join(f"{a:.1f}" for a in official.exit_accuracy))
    print("  project:  " + (" ".join(f"{a:.1f}" for a in project.exit_accuracy) or "not run (--official-only)"))
    for line in notes:
        print(line)


def run_guarded(main: Callable[[], None]) -> None:
    """Run ``main``; a harness error is printed as ``error: <message>`` and exits with its status."""
    from eebench.errors import EEBenchError

    try:
        main()
    except EEBenchError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code)


def compare(method: str, args: Any, folder: Path, official_side: Callable[..., tuple[Any, list[str], float]],
            title: Callable[[Any], str], official_line: str) -> None:
    """Fit both sides of ``method`` on the script's options and print the report: the official
    side (``official_side(setting, folder, args)`` → points, notes, seconds), the project's, both
    scored alike, and the official ``Tester.dynamic_eval_with_threshold`` checked on the deployed
    test points. ``title(config)`` heads the report; ``official_line`` names the official functions.
    A harness error exits with its status (:func:`run_guarded`)."""

    def run() -> None:
        setting = prepare(method, args)
        points, notes, off_s = official_side(setting, folder, args)
        official = score(points.val, points.test, setting)
        project, project_line = project_side(setting, args.official_only)
        worst = check_with_official(points, official.picks, setting.test.labels.numpy(), setting.exit_costs,
                                    args.verbose)
        task = setting.task
        print_report(
            title(setting.config),
            [f"{official_line}, fit {off_s:.0f} s",
             project_line,
             f"splits: train {task.train.n}, policy half {task.policy.n}, selection half {task.val.n}, "
             f"test {setting.test.n}; K = {setting.num_exits} exits; backbone test accuracy "
             f"{100 * float((setting.test.logits.argmax(1) == setting.test.labels).float().mean()):.2f} %"],
            official, project,
            notes + [f"official Tester.dynamic_eval_with_threshold on the deployed test points: largest difference "
                     f"from the harness's figures {worst:.2g} (points of accuracy, or of cost x100)"])

    run_guarded(run)


def epochs_line(selected: int | None, epochs: int, rule: str) -> str:
    """A note on which epoch a side kept."""
    return f"epoch kept: {selected} of {epochs} ({rule})" if selected else f"epoch kept: {epochs} of {epochs} ({rule})"


def milestones(epochs: int) -> list[int]:
    """BoostedNet's MultiStepLR milestones scaled to ``epochs``: 150 and 225 of 300 in
    ``msdnet_scripts/train_cifar100_batch.sh`` (50 % and 75 %)."""
    return [max(1, math.floor(epochs * 0.5)), max(1, math.floor(epochs * 0.75))]
