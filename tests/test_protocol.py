"""The protocol of the leaderboard against hand-computed values on tiny tables: the val-selection
rule, the common-range AUC, the bootstrap standard error, the paired tie test; and the shared IM
stage reused by a second method in the same cache."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from eebench.report import bootstrap
from eebench.errors import UsageError
from eebench.harness.metrics import ece
from eebench.report.leaderboard import ReportOptions, leaderboard
from eebench.report.selection import cheapest_within, select, selection_intervals
from eebench.report.table import CONFIDENCE_LEVELS, SCORE_LEVELS, dequantise_confidence, quantise_confidence


def test_val_selection_takes_the_best_val_accuracy_within_the_budget():
    val_cost = np.array([0.20, 0.45, 0.45, 0.70, 0.95])
    val_acc = np.array([0.60, 0.80, 0.80, 0.79, 0.90])
    # B = 0.1: nothing fits; 0.3: point 0; 0.5: points 1 and 2 tie (same cost too): the earlier, 1;
    # 0.8: point 3 is cheaper but less accurate on val than 1; 1.0: point 4
    assert select(val_cost, val_acc, [0.1, 0.3, 0.5, 0.8, 1.0]).tolist() == [-1, 0, 1, 1, 4]
    # equal val accuracy: the lower val cost wins
    assert select(np.array([0.6, 0.4]), np.array([0.8, 0.8]), [0.7]).tolist() == [1]
    # the cheapest point within 1 point of a target accuracy of 0.80: point 1 (0.45), not 3
    assert cheapest_within(val_cost, val_acc, 0.80 - 0.01) == 1
    assert cheapest_within(val_cost, val_acc, 0.95) == -1


def test_selection_intervals_split_the_budget_range():
    val_cost = np.array([0.2, 0.5, 0.9])
    val_acc = np.array([0.6, 0.8, 0.7])
    # on [0.4, 1]: point 0 on [0.4, 0.5), point 1 from 0.5 on (point 2 is less accurate on val)
    shares = selection_intervals(val_cost, val_acc, 0.4, 1.0)
    assert shares == pytest.approx({0: 0.1 / 0.6, 1: 0.5 / 0.6})


def _table(runs: dict[str, list[tuple[float, float, float, float]]], n_test: int = 4) -> pd.DataFrame:
    """A tiny operating-point table: run → [(val_cost, val_acc, test_cost, test_acc)] (one seed each)."""
    rows = []
    for run_id, points in runs.items():
        method = run_id.split("-")[0]
        for i, (vc, va, tc, ta) in enumerate(points):
            rows.append({"dataset": "toy", "backbone": "bb", "method": method, "seed": 0, "run_id": run_id,
                         "point": i, "val_cost": vc, "val_accuracy": va, "cost": tc, "accuracy": ta, "ece": 0.1,
                         "auroc": 0.8, "aurc": 0.1,
                         "inefficiency_at_95": 1.5, "backbone_accuracy": 0.9, "backbone_val_accuracy": 0.9,
                         "n_test": n_test, "test_sha256": "t", "weights_sha256": "w", "weights_source": "s",
                         "exit_costs": np.array([0.3, 1.0])})
    return pd.DataFrame(rows)


def test_leaderboard_reads_the_val_selected_point_and_the_common_range_auc():
    df = _table({"a-1": [(0.2, 0.6, 0.21, 0.50), (0.5, 0.8, 0.52, 0.75), (0.9, 0.7, 0.88, 0.95)],
                 "b-1": [(0.4, 0.7, 0.41, 0.70), (0.8, 0.9, 0.82, 0.85)]})
    board = leaderboard(df, None, ReportOptions(budgets=(0.25, 0.5, 0.75, 1.0))).set_index("variant")
    a, b = board.loc["a"], board.loc["b"]
    # a at 0.5 deploys point 1 (val 0.8 > 0.6): its test accuracy 75 %, not the test-best 95 % of point 2
    assert a["accuracy_at_0.50_mean"] == pytest.approx(75.0) and a["cost_at_0.50_mean"] == pytest.approx(0.52)
    assert a["accuracy_at_1.00_mean"] == pytest.approx(75.0)
    # b has no point of val cost <= 0.25: no figure there
    assert math.isnan(b["accuracy_at_0.25_mean"]) and b["accuracy_at_0.50_mean"] == pytest.approx(70.0)
    # the common range starts at b's cheapest val cost, 0.4, and ends at 1
    assert (a["auc_range_lo"], a["auc_range_hi"]) == (0.4, 1.0)
    # a: point 0 on [0.4, 0.5), point 1 on [0.5, 1] -> (0.1 * 50 + 0.5 * 75) / 0.6
    assert a["auc_mean"] == pytest.approx((0.1 * 50 + 0.5 * 75) / 0.6)
    # b: point 0 on [0.4, 0.8), point 1 on [0.8, 1] -> (0.4 * 70 + 0.2 * 85) / 0.6
    assert b["auc_mean"] == pytest.approx((0.4 * 70 + 0.2 * 85) / 0.6)
    # the backbone's val accuracy 0.9 - 1 point: only b's point 1 (val 0.9) reaches it; its test cost
    assert math.isnan(a["cost_to_backbone_minus_1pt_mean"])
    assert b["cost_to_backbone_minus_1pt_mean"] == pytest.approx(0.82)
    # without per-sample arrays there is no standard error and no tie decision
    assert math.isnan(a["accuracy_at_0.50_se"]) and board["tied_with_best_at_0.50"].isna().all()


def test_bootstrap_replicates_by_hand():
    w = bootstrap.resample_weights(5, 200, "toy")
    assert w.shape == (200, 5) and np.allclose(w.sum(1), 1.0)
    assert np.array_equal(w, bootstrap.resample_weights(5, 200, "toy"))        # deterministic per key
    x = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    assert np.allclose(bootstrap.replicate_mean(w, x), (w * x).sum(1))
    # weights 1/N on every sample give back the plain figures
    plain = np.full((1, 5), 0.2, dtype=np.float32)
    conf = np.array([0.95, 0.9, 0.55, 0.62, 0.3])
    correct = np.array([True, False, True, True, False])
    assert bootstrap.replicate_ece(plain, correct, conf)[0] == pytest.approx(ece(conf, correct), abs=1e-6)
    # se = std (ddof 1) of the replicates
    assert bootstrap.standard_error(np.array([1.0, 2.0, 3.0])) == pytest.approx(1.0)


def test_bootstrap_standard_error_of_an_accuracy_matches_the_binomial_one():
    n, p = 2000, 0.8
    correct = (np.arange(n) < p * n).astype(float)
    reps = bootstrap.replicate_mean(bootstrap.resample_weights(n, 2000, "binomial"), correct)
    assert bootstrap.standard_error(reps) == pytest.approx(math.sqrt(p * (1 - p) / n), rel=0.08)


def test_paired_tie_test():
    n = 1000
    w = bootstrap.resample_weights(n, 1000, "ties")
    rng = np.random.default_rng(0)
    base = rng.random(n) < 0.8
    better = base.copy()
    better[np.flatnonzero(~base)[:60]] = True        # right on 60 more samples: +6 points
    close = base.copy()
    close[np.flatnonzero(~base)[:2]] = True          # right on 2 more samples
    reps = {k: bootstrap.replicate_mean(w, v.astype(float)) for k, v in
            {"base": base, "better": better, "close": close}.items()}
    assert bootstrap.tied(reps["better"], reps["better"])
    assert not bootstrap.tied(reps["better"], reps["base"])
    assert bootstrap.tied(reps["close"], reps["base"])


def test_leaderboard_standard_errors_and_ties_from_per_sample_arrays():
    n = 400
    df = _table({"a-1": [(0.5, 0.8, 0.5, 0.80)], "b-1": [(0.5, 0.8, 0.5, 0.79)], "c-1": [(0.5, 0.6, 0.5, 0.60)]},
                n_test=n)
    rng = np.random.default_rng(1)
    a = rng.random(n) < 0.8
    b = a.copy()
    b[np.flatnonzero(a)[:4]] = False
    c = rng.random(n) < 0.6
    samples = pd.DataFrame([{"run_id": r, "point": 0, "exit": np.zeros(n, np.int8), "correct": v,
                             "set_size": np.ones(n, np.int16), "confidence": np.full(n, CONFIDENCE_LEVELS, np.uint8),
                             "auc_score": None} for r, v in (("a-1", a), ("b-1", b), ("c-1", c))]
                           + [{"run_id": r, "point": -1, "exit": None, "correct": None, "set_size": None,
                               "confidence": None, "auc_score": (v * SCORE_LEVELS).astype(np.uint8)}
                              for r, v in (("a-1", a), ("b-1", b), ("c-1", c))])
    board = leaderboard(df, samples, ReportOptions(budgets=(0.5,), replicates=500)).set_index("variant")
    se = board.loc["a", "accuracy_at_0.50_se"]
    assert se == pytest.approx(100 * math.sqrt(a.mean() * (1 - a.mean()) / n), rel=0.15)
    assert board.loc["a", "cost_at_0.50_se"] == pytest.approx(0.0, abs=1e-6)   # one exit for all: no spread
    assert board["tied_with_best_at_0.50"].tolist() == [True, True, False]
    assert board.loc["a", "auc_se"] == pytest.approx(se, rel=1e-3)  # one point over the whole range


@pytest.mark.parametrize("kwargs, message", [({"budgets": (0.5, 0.0)}, "must be a normalised cost"),
                                             ({"budgets": (-1.0,)}, "must be a normalised cost"),
                                             ({"selection": "train"}, "selection split 'train'"),
                                             ({"replicates": 50}, "at least 100")])
def test_report_options_reject_bad_input(kwargs, message):
    with pytest.raises(UsageError, match=message):
        ReportOptions(**kwargs)


@pytest.mark.parametrize("args, message", [(["--budgets", "0.5,inf"], "must be a normalised cost"),
                                           (["--budgets", "half"], "comma-separated numbers"),
                                           (["--selection-split", "calib"], "selection split"),
                                           (["--bootstrap", "10"], "at least 100")])
def test_report_cli_rejects_bad_input_in_one_line(cli, tmp_path, args, message):
    status, out, err = cli("report", tmp_path, "--out", tmp_path / "out", *args)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_second_method_reuses_the_cached_im_stage(cli, tmp_path):
    first = cli("run", "--method", "threshold", "--out", tmp_path / "a")
    second = cli("run", "--method", "eenet", "--set", "method.num_budgets=2", "--set", "method.scorer_steps=50",
                 "--out", tmp_path / "b")
    assert first[0] == 0 and second[0] == 0, (first[2], second[2])
    import json

    (ra,), (rb,) = ([json.loads(p.read_text()) for p in (tmp_path / d).glob("*/record.json")] for d in "ab")
    assert ra["ims"]["start"] == rb["ims"]["start"] == "shared IM stage"
    assert rb["ims"]["stage"]["key"] == ra["ims"]["stage"]["key"] and rb["ims"]["stage"]["reused"] is True
    assert rb["ims"]["stage"]["best_epochs"] == ra["ims"]["stage"]["best_epochs"]
    # the same IMs: every IM's test accuracy is the same in both records
    assert ra["operating_points"][0]["im_accuracy"] == rb["operating_points"][0]["im_accuracy"]


def test_quantised_confidences_keep_their_ece_bin():
    conf = np.array([0.0, 1 / 15, 1 / 15 + 1e-9, 0.5, 0.9999, 1.0])
    back = dequantise_confidence(quantise_confidence(conf))
    bins = lambda c: np.clip(np.ceil(c * 15).astype(int) - 1, 0, 14)   # noqa: E731  (as metrics.ece)
    assert np.array_equal(bins(back), bins(conf))
    assert np.abs(back - conf)[1:].max() <= 1 / 480 + 1e-12
