"""Resident memory and time of random row gathers from one feature shard: through safetensors'
memory map against :class:`eebench.harness.features.ShardedRows` (``preadv``), run on demand; the numbers
behind ``docs/decisions.md`` H1::

    python benchmarks/row_reads.py [--dir DIR] [--rows 100000]

Writes one shard of ImageNet-shaped IM inputs (``--rows`` × 13 × 384 float16) under ``--dir``
(default ``$EEBENCH_CACHE`` or ``/tmp``), then, each way in its own process, gathers 40 mini-batches
of 256 random rows and prints the process's anonymous and file-backed RSS before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

WIDTH, BATCHES, BATCH = 13 * 384, 40, 256


def rss_mib() -> dict[str, int]:
    """``{"RssAnon": MiB, "RssFile": MiB}`` of this process, from ``/proc/self/status``."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("RssAnon", "RssFile")):
            out[line.split(":")[0]] = int(line.split()[1]) // 1024
    return out


def one(path: Path, way: str) -> dict:
    from safetensors import safe_open

    from eebench.harness.features import ShardedRows
    from eebench.integrity import verify_file

    if way == "mmap":
        handle = safe_open(str(path), "pt")
        rows = handle.get_tensor("im_inputs")
    else:
        layouts, _ = verify_file(path)
        rows = ShardedRows([path], [layouts["im_inputs"]])
    g = torch.Generator().manual_seed(0)
    batches = [torch.randperm(rows.shape[0], generator=g)[:BATCH] for _ in range(BATCHES)]
    before = rss_mib()
    t0 = time.perf_counter()
    for idx in batches:
        rows[idx].float()
    return {"way": way, "before": before, "after": rss_mib(), "ms_per_batch": (time.perf_counter() - t0) / BATCHES * 1e3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default=os.environ.get("EEBENCH_CACHE"))
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(Path(args.one[0]), args.one[1])))
        return
    from eebench.integrity import save_hashed

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "train-00000.safetensors"
        save_hashed({"im_inputs": torch.zeros(args.rows, WIDTH, dtype=torch.float16)}, path)
        print(f"shard {path.stat().st_size / 2 ** 30:.2f} GiB; {BATCHES} batches of {BATCH} random rows "
              f"({BATCHES * BATCH / args.rows:.0%} of them); load {os.getloadavg()[0]:.2f}")
        for way in ("mmap", "preadv"):
            out = subprocess.run([sys.executable, __file__, "--one", str(path), way], capture_output=True, text=True,
                                 check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{way:>7}: RSS file-backed {r['before']['RssFile']} -> {r['after']['RssFile']} MiB, anonymous "
                  f"{r['before']['RssAnon']} -> {r['after']['RssAnon']} MiB; {r['ms_per_batch']:.2f} ms per batch")


if __name__ == "__main__":
    main()
