"""Feature-pass speed against plain inference of the same model (run on demand; the README quotes it).

The feature pass runs the backbone block by block through its exit adapter and reads every IM
input on the way (:meth:`eebench.backbones.base.ExitAdapter.forward_exits`); plain inference is
``model(x)``. Both see the same batches, alternately, after a warm-up; the figure is the median
time per batch and their ratio (target: feature pass ≤ 1.5 × plain).

    python benchmarks/features.py --backbone timm:resnet18 --input-size 1,28,28 --set in_chans=1
    python benchmarks/features.py --backbone timm:deit_tiny_patch16_224 --input-size 1,28,28 \\
        --set in_chans=1 --set img_size=28 --set patch_size=4

Quote ``uptime``'s load with the figures: they count only on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from eebench.backbones import BACKBONES, create_model
from eebench.harness.config import parse_set


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", required=True, help="a registered backbone or timm:NAME")
    p.add_argument("--input-size", default="3,32,32", help="C,H,W of the input (default 3,32,32)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="model keyword (img_size, patch_size, in_chans, ...)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=10, help="timed batches per path (default 10)")
    p.add_argument("--classes", type=int, default=10)
    args = p.parse_args()
    size = tuple(int(v) for v in args.input_size.split(","))
    spec = BACKBONES.get(args.backbone)
    kwargs = dict(parse_set(s) for s in args.sets)
    model = create_model(spec.name, args.classes, pretrained_cfg_overlay={"input_size": size}, **kwargs).eval()
    adapter = spec.adapter(model)
    x = torch.randn(args.batch_size, *size)
    paths = {"plain": lambda: model(x), "feature pass": lambda: adapter.forward_exits(x)}
    seconds: dict[str, list[float]] = {k: [] for k in paths}
    with torch.no_grad():
        for fn in paths.values():   # warm-up
            fn()
        for _ in range(args.batches):
            for name, fn in paths.items():
                t0 = time.perf_counter()
                fn()
                seconds[name].append(time.perf_counter() - t0)
    plain, feats = (statistics.median(seconds[k]) for k in paths)
    print(f"{spec.name} at {args.input_size} {kwargs}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.2f}: {adapter.num_blocks} exits ({adapter.exits_doc})")
    print(f"  plain        {1e3 * plain:8.1f} ms/batch  {args.batch_size / plain:8.0f} images/s")
    print(f"  feature pass {1e3 * feats:8.1f} ms/batch  {args.batch_size / feats:8.0f} images/s")
    print(f"  ratio        {feats / plain:.2f} x")


if __name__ == "__main__":
    main()
