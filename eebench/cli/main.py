"""The ``eebench`` command line: ``run``, ``list``, ``backbone train``, and the commands of the
modules in :data:`COMMAND_MODULES`.

A command module defines ``add_commands(subparsers)``, registering its parsers with
``set_defaults(handler=...)``; a handler takes the parsed arguments and returns the exit status.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from eebench.errors import EEBenchError

log = logging.getLogger("eebench")

#: Modules that add sub-commands (each defines ``add_commands(subparsers)``).
COMMAND_MODULES: list[str] = []
COMMAND_MODULES.append("eebench.cli.report")
COMMAND_MODULES.append("eebench.cli.sweep")
COMMAND_MODULES.append("eebench.cli.reproduce")
COMMAND_MODULES.append("eebench.cli.latency")


def add_common_options(p: argparse.ArgumentParser) -> None:
    """``--data-dir``, ``--weights-dir``, ``--cache-dir`` and ``--set``, shared by every command that runs."""
    add_dir_options(p)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter: method.<p>=v, dataset.<p>=v, seed=n (repeatable)")


def add_dir_options(p: argparse.ArgumentParser) -> None:
    """``--data-dir``, ``--weights-dir``, ``--cache-dir``."""
    p.add_argument("--data-dir", type=Path, help="local mirror: DIR/<dataset>/{train,test}.parquet (env EEBENCH_DATA_DIR)")
    p.add_argument("--weights-dir", type=Path, help="folder with published checkpoint files (env EEBENCH_WEIGHTS_DIR)")
    p.add_argument("--cache-dir", type=Path, help="feature/backbone cache root (env EEBENCH_CACHE_DIR, default ~/.cache/eebench)")
    p.add_argument("--threads", metavar="N", help="torch CPU threads (env EEBENCH_THREADS; default: the CPUs this "
                                                  "process may use, from its affinity, cgroup quota and SLURM task)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eebench", description="Comparative benchmark of early-exit networks.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one method on one dataset and backbone, write a run record")
    run.add_argument("--method", help="method name (eebench list methods)")
    run.add_argument("--dataset", help="dataset name (default digits)")
    run.add_argument("--backbone", help="backbone name (default: the dataset's)")
    run.add_argument("--config", type=Path, help="YAML run config (method, dataset, backbone, seed, *_params)")
    run.add_argument("--seed", type=int, help="method seed (default 0)")
    run.add_argument("--out", type=Path, default=Path("runs"), help="output folder for run records (default ./runs)")
    run.add_argument("--batch-size", type=int, default=256, help="batch size of the backbone pass")
    run.add_argument("--num-workers", type=int, help="data-loading workers of the backbone pass "
                                                    "(default: the CPUs this process may use less one, at least 1)")
    run.add_argument("--device", default="auto", help="where the backbone pass runs: auto (default), cpu, cuda, cuda:N")
    add_common_options(run)
    run.set_defaults(handler=cmd_run)

    lst = sub.add_parser("list", help="list methods, datasets and backbones")
    lst.add_argument("what", nargs="?", choices=["methods", "datasets", "backbones"], help="one kind only")
    lst.set_defaults(handler=cmd_list)

    bb = sub.add_parser("backbone", help="backbone commands")
    bsub = bb.add_subparsers(dest="backbone_command", required=True)
    tr = bsub.add_parser("train", help="train or fine-tune a backbone on a dataset (checkpoint chosen on val)")
    tr.add_argument("--backbone", required=True)
    tr.add_argument("--dataset", required=True)
    tr.add_argument("--stop-after", type=int, metavar="EPOCH",
                    help="stop after this epoch of the schedule and write the checkpoint chosen on val so far; "
                         "run again without it to finish (resumes)")
    add_common_options(tr)
    tr.set_defaults(handler=cmd_backbone_train)
    rc = bsub.add_parser("recipe", help="print the training recipe `backbone train` would run (same flags)")
    rc.add_argument("--backbone", required=True)
    rc.add_argument("--dataset", required=True)
    add_common_options(rc)
    rc.set_defaults(handler=cmd_backbone_recipe)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from eebench.harness.config import resolve
    from eebench.harness.runner import RunOptions, run, summary_table

    from eebench import paths

    from eebench.harness.devices import resolve_device

    resolve_device(args.device)
    config = resolve(args.method, args.dataset, args.backbone, args.seed, args.sets, args.config, args.data_dir)
    paths.writable_dir(args.out, "--out")
    paths.cache_dir(args.cache_dir)
    warn_unused_flags(config.dataset, args)
    log.info("run %s", config.run_id)
    options = RunOptions(args.data_dir, args.weights_dir, args.cache_dir, args.out, args.batch_size, args.num_workers,
                         args.device)
    record = run(config, options)
    print(f"{config.method} on {config.dataset} / {config.backbone} (seed {config.seed}): "
          f"backbone accuracy {100 * record['backbone_accuracy']:.2f} %, "
          f"{record['backbone']['muladds'] / 1e6:.2f} M Mul-Adds, {record['backbone']['num_exits']} exits")
    print(summary_table(record))
    t = record["timings"]
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    print(f"record: {Path(args.out) / config.run_id / 'record.json'}")
    return 0


def warn_unused_flags(dataset: str, args: argparse.Namespace) -> None:
    """One log line for a flag that does not apply to ``dataset`` (``--data-dir`` for a bundled one)."""
    from eebench.data.spec import DATASETS

    spec = DATASETS.get(dataset)
    if getattr(args, "data_dir", None) is not None and spec.bundled:
        log.warning("--data-dir does not apply to %s (it is bundled with a dependency): ignored", spec.name)


def cmd_list(args: argparse.Namespace) -> int:
    from eebench.backbones import BACKBONES
    from eebench.data.spec import DATASETS
    from eebench.harness.method import load_methods

    if args.what in (None, "methods"):
        methods = load_methods()
        print("methods:")
        for name in methods.names():
            m = methods.get(name)
            print(f"  {name:<12} {m.paper}; grid: {m.grid}")
    if args.what in (None, "datasets"):
        print("datasets:")
        width = max(map(len, DATASETS.names()))
        for name in DATASETS.names():
            d = DATASETS.get(name)
            print(f"  {name:<{width}} {d.hub_id or '(bundled)':<22} default backbone {d.default_backbone:<16} {d.description}")
        print(f"  {'hf:OWNER/NAME[:CONFIG]':<{width}} any hub image-classification dataset (columns and classes read "
              f"from its Features; offline: --data-dir DIR with DIR/OWNER/NAME/*.parquet)")
        print(f"  {'PATH':<{width}} a folder: train.parquet [validation, test] in a hub schema, or train/<class>/<image>")
    if args.what in (None, "backbones"):
        from eebench.backbones import describe_backbone

        print("backbones:")
        for name in BACKBONES.names():
            print(f"  {name:<16} {describe_backbone(name)}")
        print(f"  {'timm:NAME':<16} any timm model with forward_intermediates; exits at its intermediates "
              f"(--set backbone.exits=[...]), model options --set backbone.KEY=VALUE")
    return 0


def training_setup(args: argparse.Namespace) -> tuple[str, Any, dict[str, Any]]:
    """The backbone name, the dataset's splits and the full recipe of ``backbone train`` and
    ``backbone recipe``, from ``--backbone``, ``--dataset`` and ``--set`` (``dataset.*``, ``recipe.*``
    or bare recipe keys, ``backbone.*`` model keywords). ``run``'s other keys (``method.*``, ``im.*``,
    ``backbone.exits``) are accepted and do not change the weights, so both commands take the same flags.

    Raises:
        UnknownNameError, ConfigError, DataUnavailableError: bad names, options or data.
    """
    from eebench import paths
    from eebench.backbones import BACKBONES
    from eebench.harness.config import (PARAM_SECTIONS, check_params, check_weights_unseen, parse_set, place_set, resolve_holdout, resolve_recipe)
    from eebench.data.spec import DATASETS
    from eebench.data.splits import load_splits

    spec = BACKBONES.get(args.backbone)
    dspec = DATASETS.get(args.dataset)
    data: dict[str, Any] = {k: {} for k in PARAM_SECTIONS}
    for option in args.sets:
        place_set(data, *parse_set(option), top=(), sections=("dataset", "method", "im"))
    dataset_params = check_params("dataset", dspec.name, data["dataset_params"], dspec.default_parameters(),
                                  dspec.constraints())
    if dataset_params["holdout"] == "auto":
        dataset_params["holdout"] = resolve_holdout(spec.name, dspec.name)
    recipe = resolve_recipe(spec.name, dspec.name, "trained", data["recipe"], dataset_params, args.data_dir)
    check_weights_unseen(spec.name, dspec.name, "trained", recipe)
    cache = paths.cache_dir(args.cache_dir)
    splits = load_splits(dspec.name, dataset_params, paths.data_dir(args.data_dir), cache)
    return spec.name, splits, recipe


def cmd_backbone_train(args: argparse.Namespace) -> int:
    from eebench import paths
    from eebench.backbones.training import train_backbone

    backbone, splits, recipe = training_setup(args)
    cache = paths.cache_dir(args.cache_dir)
    path = train_backbone(backbone, splits, cache, recipe, paths.weights_dir(args.weights_dir), args.stop_after)
    meta = json.loads((path.parent / "meta.json").read_text())
    partial = "" if meta.get("complete", True) else \
        f"; stopped after epoch {meta['epochs_done']} (run again without --stop-after to finish)"
    print(f"trained {backbone} on {splits.spec.name}: val accuracy {100 * meta['best_val_accuracy']:.2f} % "
          f"(epoch {meta['best_epoch']} of {meta['recipe']['epochs']}), {meta['train_seconds']:.0f} s of training{partial}; {path}")
    from eebench.backbones import BACKBONES
    from eebench.data.sources import file_sha256
    from eebench.backbones.weights import shipped_for

    shipped = shipped_for(BACKBONES.get(backbone), splits, recipe)
    if shipped is not None:
        sha = file_sha256(path)
        same = "the same weights" if sha == shipped.sha256 else \
            "other weights (this CPU's kernels; runs keep using the shipped ones, docs/decisions.md R2)"
        print(f"eebench ships weights for this recipe ({shipped.file}, sha256 {shipped.sha256[:16]}); these "
              f"(sha256 {sha[:16]}) are {same}")
    return 0


def cmd_backbone_recipe(args: argparse.Namespace) -> int:
    import yaml

    from eebench import paths
    from eebench.backbones.training import checkpoint_path, is_complete
    from eebench.data.splits import image_info

    backbone, splits, recipe = training_setup(args)
    path = checkpoint_path(paths.cache_dir(args.cache_dir), backbone, splits, recipe)
    info = image_info(splits)
    flips = {True: "declared to preserve the class", False: "declared not to preserve the class",
             None: "not declared for this dataset: no flips (--set augment=crop_flip if they preserve the class)"}
    print(f"# {backbone} on {splits.spec.name}: {splits.spec.num_classes} classes, images {info.channels}x"
          f"{info.height}x{info.width}, {len(splits.indices['train'][1])} train rows; horizontal flips "
          f"{flips[splits.spec.hflip_invariant]}")
    print(f"# every key can be changed with --set KEY=VALUE (model keywords: --set backbone.KEY=VALUE)")
    print(yaml.safe_dump(recipe, sort_keys=True, default_flow_style=None).rstrip())
    state = ("trained" if is_complete(path.parent) else "partly trained") if path.exists() else "not trained yet"
    print(f"# checkpoint: {path} ({state})")
    return 0


def quiet_libraries() -> None:
    """With ``TQDM_DISABLE`` set, the Hugging Face libraries' own progress bars are off too (they
    read their switches when imported, or through ``disable_progress_bars`` once they are)."""
    if os.environ.get("TQDM_DISABLE", "") in ("", "0"):
        return
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def configure_threads(args: argparse.Namespace) -> None:
    """Size torch's thread pool from ``--threads`` / ``$EEBENCH_THREADS`` / the CPUs this process may
    use (:mod:`eebench.harness.threads`), and pass the count on to the jobs a sweep starts.

    Raises:
        UsageError: a count that is not a whole number ≥ 1.
    """
    from eebench.harness.threads import THREADS_ENV, resolve_threads, set_threads

    n, source = resolve_threads(args.threads)
    args.threads = n
    if source != "available CPUs":
        os.environ[THREADS_ENV] = str(n)
    set_threads(n)
    log.debug("torch threads: %d (%s)", n, source)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``finally`` and lock release runs."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 failed run, 2 bad input, 130 interrupted,
    143 terminated). An interrupt unwinds like an error: temporary files are removed, locks
    released, and nothing half-written remains (every record and cache entry is written atomically)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    quiet_libraries()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        if hasattr(args, "threads"):
            configure_threads(args)
        return int(args.handler(args))
    except EEBenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated; nothing written", file=sys.stderr)
        return 143
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
