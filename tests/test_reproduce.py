"""`eebench reproduce`: the lock check, the setting names, the comparison rule, and a real
reproduction of committed digits runs against the committed table."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from conftest import ROOT
from eebench.report import reproduce


def test_lock_drift_names_the_package_and_both_versions(tmp_path, cli, monkeypatch):
    lock = tmp_path / "requirements.lock"
    lock.write_text("numpy==0.0.1 \\\n    --hash=sha256:00\n    # via eebench\npyyaml==6.0.4 \\\n")
    drift = reproduce.check_lock(lock)
    assert [d[:2] for d in drift] == [("numpy", "0.0.1")] and drift[0][2] != "0.0.1"
    monkeypatch.setattr(reproduce, "LOCK", lock)
    status, _, err = cli("reproduce", "digits")
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert f"installed numpy {drift[0][2]} is not the lock's 0.0.1" in err and "--allow-drift" in err


def test_the_environment_matches_the_lock():
    """The test environment is installed from requirements.lock (README, .ci/run)."""
    assert reproduce.check_lock() == []


def test_unknown_setting_and_table_without_it(cli, tmp_path):
    status, _, err = cli("reproduce", "cifar10_resnet65", "--allow-drift")
    assert status == 2 and "did you mean 'cifar10_resnet56'" in err
    status, _, err = cli("reproduce", "digits", "--methods", "jei", "--seeds", "7")
    assert status == 2 and "holds no run of setting digits with methods ['jei'] and seeds [7]" in err


def test_compare_holds_within_the_standard_error():
    keys = {"dataset": ["d"], "backbone": ["b"], "variant": ["m"]}
    committed = pd.DataFrame({**keys, "accuracy_at_0.50_mean": [80.0], "accuracy_at_0.50_se": [0.5],
                              "auc_mean": [70.0], "auc_se": [math.nan], "cost_at_0.25_mean": [math.nan]})
    same = committed.copy()
    same["accuracy_at_0.50_mean"] = 80.4                          # within 0.5
    moved = committed.copy()
    moved["accuracy_at_0.50_mean"], moved["auc_mean"] = 80.6, 70.1
    assert reproduce.compare(committed, same)["holds"].all()
    out = reproduce.compare(committed, moved).set_index("figure")
    assert not out.loc["accuracy_at_0.50", "holds"] and out.loc["accuracy_at_0.50", "delta"] == pytest.approx(0.6)
    assert not out.loc["auc", "holds"]                            # no se: must be equal
    assert out.loc["cost_at_0.25", "holds"]                       # undefined in both


def test_committed_digits_runs_reproduce(cli, tmp_path):
    """Two committed digits runs re-run in this session on the ViT that ships with the package: every
    figure within its standard error of the committed table, on every CPU."""
    if not (ROOT / "results" / "operating_points.parquet").exists():
        pytest.skip("no committed table")
    status, out, err = cli("reproduce", "digits", "--methods", "threshold,eenet", "--seeds", "0",
                           "--out", tmp_path / "runs")
    assert status == 0, out + err
    assert "reproduce digits: 2 runs (eenet, threshold; seeds 0)" in out
    assert "figures of 2 method variants within their standard errors" in out


def test_other_weights_names_each_backbone_trained_otherwise():
    committed = pd.DataFrame({"dataset": ["digits", "digits", "cifar10"], "backbone": ["vit_digits"] * 2 + ["r56"],
                              "weights_sha256": ["aaaa", "aaaa", "cccc"]})
    same = committed.iloc[[0, 2]]
    other = same.assign(weights_sha256=["bbbb", "cccc"])
    assert reproduce.other_weights(committed, same) == ""
    assert reproduce.other_weights(committed, other) == "vit_digits (digits): committed aaaa, here bbbb"
