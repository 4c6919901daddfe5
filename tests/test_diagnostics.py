"""Diagnostics beyond the trade-off curve (:mod:`eebench.report.diagnostics`): the oracle bound,
failure prediction (AUROC, AURC, E-AURC) and overthinking, against values worked out by hand and
against scikit-learn; and the report's columns on a real digits run."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from eebench.harness.metrics import aurc, auroc, e_aurc
from eebench.report import bootstrap, diagnostics, table

COSTS = np.array([0.1, 0.3, 1.0])


def test_the_oracle_moves_samples_by_extra_cost_not_by_the_exit_that_fixes_most():
    """10 samples: 4 first correct at exit 2 (extra cost 0.2 each), 5 at exit 3 (0.9 each), 1 never.
    At B = 0.19 the budget above c₁ is 10 · 0.09 = 0.9 sample-costs: four moves to exit 2 (0.8) →
    4/10. Greedy by accuracy (exit 3 fixes the most samples) affords one move to exit 3 → 1/10."""
    first = np.array([1] * 4 + [2] * 5 + [-1])
    assert diagnostics.oracle_accuracy(first, COSTS, 0.19) == pytest.approx(0.4)
    by_accuracy = math.floor(round(10 * (0.19 - 0.1) / 0.9, 9)) / 10  # every move to the exit fixing most
    assert by_accuracy == pytest.approx(0.1) and by_accuracy < diagnostics.oracle_accuracy(first, COSTS, 0.19)
    # B = 0.6: all four to exit 2 (0.8 of 5.0), then ⌊4.2 / 0.9⌋ = 4 of the five to exit 3 → 8/10
    assert diagnostics.oracle_accuracy(first, COSTS, 0.6) == pytest.approx(0.8)
    assert diagnostics.oracle_accuracy(first, COSTS, 1.0) == pytest.approx(0.9)  # the never-correct one stays wrong
    assert diagnostics.oracle_accuracy(first, COSTS, 0.1) == 0.0                 # everyone at exit 1: none correct
    assert math.isnan(diagnostics.oracle_accuracy(first, COSTS, 0.05))           # below every exit: no policy
    # bootstrap replicates move weight in part (within 1/N of whole samples): uniform weights give
    # 0.4 + (0.5 − 0.08) / 0.9 at B = 0.6 and 0.4 + (0.09 − 0.08) / 0.9 at B = 0.19
    w = np.full((3, 10), 0.1)
    np.testing.assert_allclose(diagnostics.replicate_oracle(w, first, COSTS, 0.6), 0.4 + 0.42 / 0.9)
    np.testing.assert_allclose(diagnostics.replicate_oracle(w, first, COSTS, 0.19), 0.4 + 0.01 / 0.9)
    assert np.isnan(diagnostics.replicate_oracle(w, first, COSTS, 0.05)).all()


def test_correct_bits_round_trip_and_first_correct():
    ok = np.array([[0, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 1]], dtype=bool)          # [K=3, N=4]
    bits = diagnostics.correct_bits(ok)
    assert bits.tolist() == [0b110, 0b011, 0b000, 0b100]
    assert np.array_equal(diagnostics.exit_correct(bits, 3), ok)
    assert diagnostics.first_correct(bits, 3).tolist() == [1, 0, -1, 2]


def test_overthinking_counts_by_hand():
    """4 samples, exits at costs 0.1, 0.3, 1.0: (a) right at exits 1 and 2, wrong at the last:
    overthinking; (b) right only at the last; (c) right nowhere; (d) right at exit 2 and the last.
    Overthinking 1/4; an earlier exit right 2/4; costs at the first correct exit 0.1, 1.0, 1.0 (none:
    the last), 0.3 → saved 1 − 2.4/4 = 0.4."""
    ok = np.array([[1, 0, 0, 0], [1, 0, 0, 1], [0, 1, 0, 1]], dtype=bool)
    out = diagnostics.overthinking(diagnostics.correct_bits(ok), COSTS)
    assert out == pytest.approx({"overthinking": 0.25, "early_correct": 0.5, "saved": 0.4})
    reps = diagnostics.overthinking(diagnostics.correct_bits(ok), COSTS, np.full((2, 4), 0.25))
    np.testing.assert_allclose(reps["saved"], 0.4)


def test_aurc_and_e_aurc_on_five_samples():
    """Confidences 0.9 ✓, 0.8 ✗, 0.7 ✓, 0.6 ✓, 0.5 ✗: risks at coverage 1..5 are 0, 1/2, 1/3, 1/4,
    2/5, so AURC = (0 + .5 + .3333 + .25 + .4) / 5 = 0.29667; the ideal ranking with 2 errors has
    risks 0, 0, 0, 1/4, 2/5 → 0.13, so E-AURC = 0.16667. AUROC: 4 of the 6 (correct, wrong) pairs are
    ordered → 2/3."""
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    ok = np.array([1, 0, 1, 1, 0], dtype=bool)
    assert aurc(conf, ok) == pytest.approx(1.48333 / 5, abs=1e-5)
    assert e_aurc(conf, ok) == pytest.approx(1.48333 / 5 - 0.65 / 5, abs=1e-5)
    assert auroc(conf, ok) == pytest.approx(2 / 3)
    # ties enter together: whatever the order of two tied samples, the same area
    tied = np.array([0.9, 0.7, 0.7, 0.6, 0.5])
    assert aurc(tied, ok) == aurc(tied[[0, 2, 1, 3, 4]], ok[[0, 2, 1, 3, 4]])
    assert math.isnan(auroc(conf, np.ones(5, bool)))


def test_replicated_auroc_and_aurc_match_the_exact_ones_on_quantised_confidence():
    """With one replicate of uniform weights, the bootstrap's AUROC is scikit-learn's on the stored
    levels (ties and all) and its AURC the exact one."""
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.1, 1.0, 500)
    ok = rng.uniform(size=500) < conf                       # confidence that means something
    levels = table.quantise_confidence(conf)
    w = np.full((1, 500), 1 / 500, dtype=np.float32)
    got = bootstrap.replicate_auroc(w, ok, levels, table.CONFIDENCE_LEVELS)[0]
    assert got == pytest.approx(roc_auc_score(ok, levels), abs=1e-6)
    assert bootstrap.replicate_aurc(w, ok, levels, table.CONFIDENCE_LEVELS)[0] == pytest.approx(aurc(levels, ok), abs=1e-6)
    # the replicates spread around the estimate, as a bootstrap should
    reps = bootstrap.replicate_auroc(bootstrap.resample_weights(500, 300, "t"), ok, levels, table.CONFIDENCE_LEVELS)
    assert abs(reps.mean() - got) < 0.01 and 0.005 < reps.std() < 0.05


def test_report_columns_and_tables_on_digits(cli, tmp_path):
    """A threshold and a JEI-DNN run on digits, reported: every new column with its se, the per-exit
    table and overthinking; an oracle never below the deployed accuracy; an empty cell below the
    first exit's cost."""
    for m in ("threshold", "jei"):
        assert cli("run", "--method", m, "--out", tmp_path / "runs")[0] == 0
    status, out, err = cli("report", tmp_path / "runs", "--out", tmp_path / "results", "--budgets", "0.1,0.5,0.75")
    assert status == 0, err
    board = pd.read_csv(tmp_path / "results" / "leaderboard.csv")
    for f in ("oracle_accuracy", "headroom", "auroc", "aurc"):
        for b in ("0.50", "0.75"):
            assert {f"{f}_at_{b}_mean", f"{f}_at_{b}_se"} <= set(board.columns)
            assert board[f"{f}_at_{b}_mean"].notna().all() and board[f"{f}_at_{b}_se"].notna().all(), (f, b)
        assert board[f"{f}_at_0.10_mean"].isna().all()              # below the first exit's cost (0.17)
    assert (board["headroom_at_0.50_mean"] >= 0).all()
    np.testing.assert_allclose(board["headroom_at_0.50_mean"],
                               board["oracle_accuracy_at_0.50_mean"] - board["accuracy_at_0.50_mean"], atol=1e-3)
    exits = pd.read_csv(tmp_path / "results" / "exits_digits_vit_digits.csv")
    assert exits["exit"].tolist() == [1, 2, 3, 4, 5, 6] and exits["accuracy_se"].notna().all()
    assert exits["accuracy_mean"].iloc[-1] == pytest.approx(board["backbone_accuracy_mean"].iloc[0], abs=1e-3)
    over = pd.read_csv(tmp_path / "results" / "overthinking.csv")
    assert len(over) == 1 and 0 <= over["overthinking_mean"].iloc[0] <= over["early_correct_mean"].iloc[0] <= 100


def test_runs_without_every_exits_answers_are_named(cli, tmp_path):
    assert cli("run", "--method", "threshold", "--out", tmp_path / "runs")[0] == 0
    npz = next((tmp_path / "runs").glob("*/samples.npz"))
    with np.load(npz) as z:
        old = {k: z[k] for k in z.files if not k.startswith("exit_") or k == "exit_index"}
    np.savez(npz, **old)                                    # as a run of the previous version wrote it
    status, _, err = cli("report", tmp_path / "runs", "--out", tmp_path / "results")
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "1 run(s) lack the per-sample arrays" in err and npz.parent.name in err and "eebench sweep" in err


def test_shot_groups_and_accuracies_of_a_long_tail():
    """CIFAR-10-LT's train counts (ρ = 100): classes 0–7 have > 100 images (many), 8 and 9 have 83
    and 50 (medium), none < 20 (few: empty, so its figure is undefined). On 6 test samples of
    classes 0, 0, 8, 9, 9, 3 with correctness 1, 0, 1, 0, 0, 1: many 2/3, medium 1/3."""
    counts = np.array([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])
    groups = diagnostics.shot_groups(counts)
    assert groups["many_shot_accuracy"].tolist() == list(range(8))
    assert groups["medium_shot_accuracy"].tolist() == [8, 9] and groups["few_shot_accuracy"].size == 0
    setting = pd.DataFrame({"run_id": ["r"], "exit_costs": [np.array([0.5, 1.0])], "train_class_counts": [counts]})
    samples = pd.DataFrame([
        {"run_id": "r", "point": 0, "correct": np.array([1, 0, 1, 0, 0, 1], bool), "exit_set": 0},
        {"run_id": "r", "point": -2, "exit_set": 0, "labels": np.array([0, 0, 8, 9, 9, 3]),
         "exit_correct": np.zeros(6, np.int64)}])
    arrays = diagnostics.SampleArrays(samples, setting)
    assert diagnostics.sample_figure("many_shot_accuracy", arrays, "r", 0, 0.5, math.nan) == pytest.approx(200 / 3)
    assert diagnostics.sample_figure("medium_shot_accuracy", arrays, "r", 0, 0.5, math.nan) == pytest.approx(100 / 3)
    assert math.isnan(diagnostics.sample_figure("few_shot_accuracy", arrays, "r", 0, 0.5, math.nan))
    reps = diagnostics.sample_replicates("many_shot_accuracy", np.full((2, 6), 1 / 6), arrays, [("r", 0)], [0.5], None)
    np.testing.assert_allclose(reps, 200 / 3)
