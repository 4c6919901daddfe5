"""``eebench run --method jei --dataset svhn``: without the hub it says how to provide the data; with a
synthetic SVHN mirror and a synthetic T2T-ViT-7 checkpoint in the official format it runs the whole
chain (published weights → fine-tuned backbone → features → JEI-DNN → record)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import read_record, write_mirror, write_official_checkpoint
from eebench.backbones.training import lr_factor


def test_offline_svhn_says_how_to_provide_the_data(tmp_path):
    """Through the installed console script, with HF_HUB_OFFLINE=1 and no mirror."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("EEBENCH_DATA_DIR", None)
    exe = Path(sys.executable).parent / "eebench"
    res = subprocess.run([str(exe), "run", "--method", "jei", "--dataset", "svhn", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=600)
    lines = [line for line in res.stderr.strip().splitlines() if line.startswith("error: ")]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    line = lines[0]
    assert "ufldl-stanford/svhn" in line and "HF_HUB_OFFLINE is set" in line
    assert "--data-dir DIR with DIR/svhn/{train,test}.parquet" in line and "unset HF_HUB_OFFLINE" in line
    assert not (tmp_path / "out").exists()


def test_svhn_chain_end_to_end(cli, tmp_path):
    """Tiny and at 32 px (a 2×2 token grid; the published 14×14 position table is resampled), so it
    runs in seconds on a CPU; the paper's setting is the same chain at 224 px."""
    rng = np.random.default_rng(0)
    data, weights, cache = tmp_path / "data", tmp_path / "weights", tmp_path / "cache"
    test_labels = rng.integers(0, 10, 40).tolist()
    write_mirror(data, "svhn", {"train": rng.integers(0, 10, 120).tolist(), "test": test_labels})
    weights.mkdir()
    ema = write_official_checkpoint(weights / "71.7_T2T_ViT_7.pth.tar", "t2t_vit_7")
    common = ["--data-dir", data, "--cache-dir", cache]

    # no fine-tuned backbone yet: the run stops and gives the command that trains it
    status, _, err = cli("run", "--method", "jei", "--dataset", "svhn", *common, "--out", tmp_path / "o0")
    assert status == 2 and "`eebench backbone train --backbone t2t_vit_7 --dataset svhn`" in err
    assert not (tmp_path / "o0").exists()

    train = ("backbone", "train", "--backbone", "t2t_vit_7", "--dataset", "svhn", *common, "--weights-dir", weights,
             "--set", "init=pretrained", "--set", "epochs=1", "--set", "batch_size=16", "--set", "num_workers=0",
             "--set", "input_cfg={input_size: [3, 32, 32], crop_pct: 1.0}")
    status, out, err = cli(*train)
    assert status == 0, err
    assert "trained t2t_vit_7 on svhn" in out
    ckpt = Path(out.strip().rsplit("; ", 1)[1])
    written = ckpt.stat().st_mtime_ns
    status, out, err = cli(*train)                       # same recipe: finished, not repeated
    assert status == 0 and "already trained with this recipe" in err and ckpt.stat().st_mtime_ns == written
    meta = json.loads((ckpt.parent / "meta.json").read_text())
    assert meta["recipe"]["init"] == "pretrained" and meta["recipe"]["augment"] == "crop"   # SVHN: no flips
    assert meta["recipe"]["lr"] == 0.05 and meta["recipe"]["backbone_lr_ratio"] == 0.01
    trained = load_file(str(ckpt))
    # started from the published file: its frozen Performer features are the checkpoint's EMA tensors
    assert torch.equal(trained["tokens_to_token.attention1.w"], ema["tokens_to_token.attention1.w"])
    assert trained["head.weight"].shape == (10, 256) and trained["pos_embed"].shape == (1, 5, 256)
    assert not torch.equal(trained["blocks.0.attn.qkv.weight"], ema["blocks.0.attn.qkv.weight"])

    # the recipe is part of the run: without it the default recipe's weights are asked for, and there are none
    status, _, err = cli("run", "--method", "jei", "--dataset", "svhn", *common, "--out", tmp_path / "o0")
    assert status == 2 and "trained here with: --set recipe.batch_size=16 --set recipe.epochs=1" in err
    recipe = ["--set", "recipe.init=pretrained", "--set", "recipe.epochs=1", "--set", "recipe.batch_size=16",
              "--set", "recipe.num_workers=0", "--set", "recipe.input_cfg={input_size: [3, 32, 32], crop_pct: 1.0}"]
    status, out, err = cli("run", "--method", "jei", "--dataset", "svhn", *common, *recipe, "--num-workers", "0",
                           "--set", "method.epochs=1",
                           "--set", "im.epochs=1", "--set", "method.lambdas=[0.1,1.0]",
                           "--out", tmp_path / "o1")
    assert status == 0, err
    record = read_record(tmp_path / "o1")
    assert record["config"]["backbone"] == "t2t_vit_7"
    assert record["backbone"]["weights"]["source"].startswith(f"trained here: {ckpt}; recipe ")
    assert record["backbone"]["num_exits"] == 7 and record["backbone"]["im_dims"] == [256] * 6
    costs = record["exit_costs"]
    assert all(a < b for a, b in zip(costs, costs[1:])) and costs[-1] > 1.0
    # val (18 rows) halved: exit policies learn on one half, choices are made on the other
    assert {name: s["n"] for name, s in record["splits"].items()} == {"train": 90, "val": 9, "calib": 12, "test": 40,
                                                                      "policy": 9}
    assert len(record["operating_points"]) == 2
    # each point's figures are those of its 40 per-sample decisions
    s = np.load(tmp_path / "o1" / record["run_id"] / "samples.npz")
    assert sorted(s["labels"].tolist()) == sorted(test_labels)
    for i, point in enumerate(record["operating_points"]):
        assert point["accuracy"] == np.mean(s["prediction"][i] == s["labels"])
        assert point["exit_shares"] == pytest.approx(np.bincount(s["exit_index"][i], minlength=7) / 40)
        assert point["cost"] == pytest.approx(np.asarray(costs)[s["exit_index"][i]].mean())


def test_learning_rate_schedule():
    """Linear warm-up over 10 steps, then cosine to 0 over the remaining 100: factors by hand."""
    assert lr_factor(0, 10, 110) == 0.1 and lr_factor(9, 10, 110) == 1.0
    assert lr_factor(10, 10, 110) == 1.0
    assert abs(lr_factor(60, 10, 110) - 0.5) < 1e-12                  # half-way: (1 + cos(π/2)) / 2
    assert abs(lr_factor(35, 10, 110) - (1 + 2 ** -0.5) / 2) < 1e-12  # a quarter: (1 + cos(π/4)) / 2
    assert lr_factor(110, 10, 110) == 0.0 and lr_factor(5, 0, 10) == 0.5
