"""End to end through the CLI on the offline default (digits, the small ViT): each new method in
its tiny test configuration must produce sensible operating points with real quality bars.
The frozen backbone (trained in the session; 90–95 % on the digits test set, depending on the
machine's thread count) is the reference: bars are relative to its accuracy."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import check_replay, read_record
from eebench.harness.method import load_methods
from methods.eenet import auto_budgets


def _run(cli, tmp_path, method: str) -> dict:
    sets = []
    for key, value in load_methods().get(method).test_parameters.items():
        sets += ["--set", f"method.{key}={json.dumps(value)}"]
    status, out, err = cli("run", "--method", method, *sets, "--out", tmp_path)
    assert status == 0, err
    record = read_record(tmp_path)
    assert record["config"]["method"] == method and record["backbone"]["num_exits"] == 6
    check_replay(tmp_path)
    return record


def _curve(record: dict) -> tuple[np.ndarray, np.ndarray]:
    points = record["operating_points"]
    return np.array([p["cost"] for p in points]), np.array([p["accuracy"] for p in points])


@pytest.mark.parametrize("method", ["boosted", pytest.param("l2w", marks=pytest.mark.slow)])
def test_threshold_methods_trace_a_budget_curve(cli, tmp_path, method):
    record = _run(cli, tmp_path, method)
    points = record["operating_points"]
    assert [p["setting"]["q"] for p in points] == load_methods().get(method).parameters["q_grid"]
    cost, acc = _curve(record)
    print(method, np.round(cost[::6], 3), np.round(acc[::6], 3))
    # the budget levels span cheap to expensive; the cheap end exits early and loses accuracy
    assert cost.min() < 0.3 and cost.max() > 0.7
    assert acc[cost.argmax()] >= record["backbone_accuracy"] - 0.02
    assert acc[cost.argmin()] < acc[cost.argmax()] - 0.02
    # no gate: threshold methods add no Mul-Adds beyond blocks and IMs
    assert np.allclose(record["exit_costs"], np.cumsum(np.array(record["backbone"]["cost_profile"]["block_muladds"])
                       + np.r_[record["backbone"]["cost_profile"]["im_muladds"], 0]) / record["backbone"]["muladds"])


def test_eenet_meets_its_budgets(cli, tmp_path):
    record = _run(cli, tmp_path, "eenet")
    points = record["operating_points"]
    budgets = [p["setting"]["budget"] for p in points]
    # the default budgets run from the first exit's cost (the last exit's gate included) to 1
    assert budgets == auto_budgets(record["exit_costs"][0], load_methods().get("eenet").test_parameters["num_budgets"])
    for p in points:
        print("eenet", p["setting"], round(p["cost"], 3), round(p["accuracy"], 3), round(p["val"]["cost"], 3))
        assert abs(p["val"]["cost"] - p["setting"]["budget"]) <= 0.06     # thresholds from 135 policy samples
        assert abs(p["cost"] - p["setting"]["budget"]) <= 0.08            # 359 test samples
    assert points[-1]["accuracy"] >= record["backbone_accuracy"] - 0.03
    assert points[0]["cost"] < points[-1]["cost"]


def test_diffbranch_beta_trades_accuracy_for_cost(cli, tmp_path):
    record = _run(cli, tmp_path, "diffbranch")
    points = record["operating_points"]
    betas = [p["setting"]["beta"] for p in points]
    assert len(betas) == 4 and betas == sorted(betas)
    for p in points:
        print("diffbranch", p["setting"], round(p["cost"], 3), round(p["accuracy"], 3))
    low, high = points[0], points[-1]
    assert low["accuracy"] >= record["backbone_accuracy"] - 0.03
    assert high["cost"] < low["cost"] - 0.1
    # the gates' Mul-Adds are counted: the last exit costs more than blocks and IMs alone
    profile = record["backbone"]["cost_profile"]
    assert record["exit_costs"][-1] > (sum(profile["block_muladds"]) + sum(profile["im_muladds"])) / profile["backbone_muladds"]
