"""The runtime (:mod:`eebench.deploy.runtime`) and ``eebench latency``: the time profile's arithmetic, dropping
exited samples from any hidden state, the bad inputs named before anything loads, and on real
CIFAR-10 through the published ResNet-20 the runtime answering as the record for every method, with
a time profile that adds up to the plain pass (``test_run_e2e``). (Digits: every method's test checks
its runtime through ``conftest.check_replay``.)"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import DATA_DIR, WEIGHTS_DIR, check_replay, needs_shared, read_record
from eebench.data.graphs import GraphBatch
from eebench.harness.method import load_methods
from eebench.harness.runner import RunOptions
from eebench.harness.exit_policy import IMSteps, ThresholdRule
from eebench.harness.features import SplitFeatures
from eebench.deploy.runtime import CachedBackbone, TimeProfile, keep_rows, run_exits


def test_time_profile_predicts_seconds_and_speedup_by_hand():
    profile = TimeProfile(block_s=[1.0, 2.0, 3.0], exit_s=[0.5, 0.25])
    # leaving at exit 1 costs 1 + 0.5; at exit 2, 1.5 + 2 + 0.25; at exit 3, 3.75 + 3 (no IM at exit K)
    assert profile.seconds(np.array([0, 2, 1])) == pytest.approx((1.5 + 6.75 + 3.75) / 3)
    assert profile.speedup(np.array([0, 2, 1])) == pytest.approx(6.0 / 4.0)
    assert profile.speedup(np.array([2, 2])) == pytest.approx(6.0 / 6.75)    # exits cost time when nobody leaves
    assert profile.to_dict()["blocks_s_per_sample"] == 6.0 and profile.to_dict()["plain_s_per_sample"] is None


def test_keep_rows_drops_samples_from_any_hidden_state():
    batch = GraphBatch(torch.arange(12.).view(3, 2, 2), torch.ones(3, 2, dtype=torch.bool), torch.zeros(3, 4, 2, 2))
    keep = torch.tensor([True, False, True])
    out = keep_rows((torch.arange(3), batch), keep)
    assert isinstance(out[1], GraphBatch) and out[1].node_feat.shape == (2, 2, 2)
    assert out[0].tolist() == [0, 2] and out[1].node_feat[1, 0].tolist() == [8.0, 9.0]
    assert keep_rows(None, keep) is None and keep_rows([torch.arange(3)], keep)[0].tolist() == [0, 2]
    with pytest.raises(TypeError, match="cannot drop samples"):
        keep_rows({"h": torch.arange(3)}, keep)


def test_cached_backbone_runs_a_rule_on_the_cached_rows():
    """The IM input of each exit is the cached (float16) row of each sample, in the order the rows are
    asked for; run through :func:`run_exits` a threshold rule gives the exits worked out by hand."""
    exit1 = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 0.1], [0.0, 3.0]])    # max softmax .881 .5 .525 .953
    exit2 = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 0.2], [0.0, 0.0]])    # .5 .982 .550 .5
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [5.0, 0.0], [0.0, 0.0]])
    cached = CachedBackbone(SplitFeatures.from_im_inputs([exit1, exit2], logits, torch.zeros(4, dtype=torch.long)))
    rows = torch.tensor([3, 0, 2, 1])
    assert cached.num_blocks == 3 and torch.equal(cached.im_input(2, rows), exit2[rows].half().float())
    assert torch.equal(cached.head(rows), logits[rows])
    rule = ThresholdRule(IMSteps(torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])),
                         np.array([0.8, 0.8, -np.inf]))
    exit_index, probs = run_exits(cached, rule, rows)
    assert exit_index.tolist() == [0, 0, 2, 1]           # rows 3, 0 at exit 1; row 2 runs to the end; row 1 at exit 2
    assert probs.argmax(1).tolist() == [1, 0, 0, 0]


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--repeats", "0"], "--repeats 0: must be at least 1"),
    (["--device", "cuda:0"], "torch sees no CUDA device"),
    (["--points", "half"], "--points half: give all, or budgets"),
    ([], "has no exits.safetensors (a run from before fitted exits were saved); rerun it"),
])
def test_bad_input_is_one_line_and_status_2(cli, tmp_path, args, message):
    if "cuda" in " ".join(args) and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run_dir = tmp_path / "old-run"
    run_dir.mkdir()
    (run_dir / "record.json").write_text(json.dumps({"run_id": "old-run", "config": {}}))
    status, out, err = cli("latency", run_dir, *args)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (run_dir / "latency.json").exists()


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("method", ["boosted", "l2w", "eenet", "diffbranch", "jei"])
def test_runtime_answers_as_the_record_on_cifar10_resnet20(cli, tmp_path, method):
    """Every method in its test configuration on real CIFAR-10 through the published ResNet-20 (a
    convolutional backbone whose hidden state is a feature map): the runtime takes the record's
    decisions for 1,000 test samples (``check_replay``). On 30 % of train, as the threshold baseline's run,
    ``test_run_e2e.test_cifar10_resnet20_published_weights``, whose feature cache it shares (that test
    also checks the time profile)."""
    sets = [a for k, v in load_methods().get(method).test_parameters.items()
            for a in ("--set", f"method.{k}={json.dumps(v)}")]
    status, _, err = cli("run", "--method", method, "--dataset", "cifar10", "--backbone", "cifar_resnet20",
                         "--data-dir", DATA_DIR, "--weights-dir", WEIGHTS_DIR, "--set", "im.epochs=3", *sets,
                         "--set", "dataset.train_fraction=0.3", "--out", tmp_path)   # the e2e test's cache
    assert status == 0, err
    assert read_record(tmp_path)["backbone"]["num_exits"] == 9
    check_replay(tmp_path, RunOptions(DATA_DIR, WEIGHTS_DIR), runtime_samples=1000)
