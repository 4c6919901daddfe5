"""`eebench report` and `eebench plot` on a small real sweep (digits, two methods, 1-2 seeds), checked
against the run records by hand computation; the hull equations on a hand-made example; the
per-IM ECE of the metrics against a hand computation."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from eebench import report
from eebench.config import resolve
from eebench.method import OperatingPoint, load_methods
from eebench.metrics import evaluate
from eebench.runner import RunOptions, run

SWEEP = [("threshold", 0, {}), ("threshold", 1, {}), ("jei", 0, {}), ("threshold", 0, {"loss_weights": "linear"})]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> Path:
    """Real digits runs with each method's test parameters: threshold with seeds 0 and 1, JEI-DNN
    with seed 0, and one threshold run with linear IM loss weights (a second variant)."""
    out = tmp_path_factory.mktemp("runs")
    methods = load_methods()
    for method, seed, extra in SWEEP:
        config = resolve(method, "digits", None, seed)
        config.method_params.update({**methods.get(method).test_parameters, **extra})
        run(config, RunOptions(out_dir=out))
    return out


def _records(runs: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs.glob("*/record.json"))]


def _budget_accuracy(cost: np.ndarray, acc: np.ndarray, c: np.ndarray) -> np.ndarray:
    """A(c) by brute force from its definition: the best accuracy of a single point of cost ≤ c,
    or of a mix t·i + (1−t)·j of two points (c_i ≤ c < c_j) whose mean cost is exactly c. NaN where
    no point has cost ≤ c. ``c`` is ``[G]``."""
    c = np.atleast_1d(np.asarray(c, float))[:, None, None]
    ci, cj = cost[None, :, None], cost[None, None, :]
    ai, aj = acc[None, :, None], acc[None, None, :]
    single = np.where(cost[None, :] <= c[:, :, 0], acc[None, :], -np.inf).max(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mix = np.where((ci <= c) & (c < cj), ai + (aj - ai) * (c - ci) / (cj - ci), -np.inf).max((1, 2))
    best = np.maximum(single, mix)
    return np.where(np.isfinite(best), best, np.nan)


def _by_hand(record: dict) -> dict[str, float]:
    pts = record["operating_points"]
    cost = np.array([p["cost"] for p in pts])
    acc = np.array([p["accuracy"] for p in pts])
    out = {f"accuracy_at_{b:.2f}": 100 * _budget_accuracy(cost, acc, b)[0] for b in (0.25, 0.5, 0.75, 1.0)}
    grid = np.linspace(0, 1, 20001)
    a = np.nan_to_num(_budget_accuracy(cost, acc, grid), nan=0.0)
    out["auc"] = 100 * float(np.sum((a[1:] + a[:-1]) / 2 * np.diff(grid)))
    target = record["backbone_accuracy"] - 0.01
    if np.nanmax(acc) < target:
        out["cost_to_backbone_minus_1pt"] = math.nan
    else:                                  # bisection on the brute-force A
        lo, hi = 0.0, float(cost[np.argmax(acc)])
        for _ in range(60):
            mid = (lo + hi) / 2
            ok = _budget_accuracy(cost, acc, mid)[0] >= target
            lo, hi = (lo, mid) if ok else (mid, hi)
        out["cost_to_backbone_minus_1pt"] = hi
    for b in (0.5, 0.75):                  # the most accurate point of cost <= b, the cheaper on ties
        fits = [p for p in pts if p["cost"] <= b]
        best = max(fits, key=lambda p: (p["accuracy"], -p["cost"])) if fits else None
        out[f"ece_at_{b:.2f}"] = 100 * best["ece"] if best else math.nan
        ineff = best.get("inefficiency_at_95") if best else None
        out[f"inefficiency95_at_{b:.2f}"] = math.nan if ineff is None else ineff
    out["backbone_accuracy"] = 100 * record["backbone_accuracy"]
    return out


def test_leaderboard_against_records_by_hand(sweep: Path, tmp_path: Path, cli):
    status, out, err = cli("report", sweep, "--out", tmp_path)
    assert status == 0, err
    board = pd.read_csv(tmp_path / "leaderboard.csv", keep_default_na=True)
    assert list(board["variant"]) == ["threshold[loss_weights=linear]", "threshold[loss_weights=uniform]", "jei"]
    assert list(board["seeds"]) == [1, 2, 1]
    records = _records(sweep)
    groups = {"jei": [r for r in records if r["config"]["method"] == "jei"],
              "threshold[loss_weights=uniform]": [r for r in records if r["config"]["method"] == "threshold"
                                                  and r["config"]["method_params"]["loss_weights"] == "uniform"],
              "threshold[loss_weights=linear]": [r for r in records if r["config"]["method"] == "threshold"
                                                 and r["config"]["method_params"]["loss_weights"] == "linear"]}
    checked = 0
    for variant, recs in groups.items():
        row = board[board["variant"] == variant].iloc[0]
        hand = [_by_hand(r) for r in sorted(recs, key=lambda r: r["config"]["seed"])]
        for name in hand[0]:
            values = [h[name] for h in hand]
            tol = 2e-3 if name in ("auc", "cost_to_backbone_minus_1pt") else 1e-4   # grid / bisection / %.4f
            if any(math.isnan(v) for v in values):
                assert math.isnan(row[f"{name}_mean"]), (variant, name)
                continue
            assert row[f"{name}_mean"] == pytest.approx(statistics.mean(values), abs=tol), (variant, name)
            if len(values) > 1:
                assert row[f"{name}_std"] == pytest.approx(statistics.stdev(values), abs=tol), (variant, name)
            else:
                assert math.isnan(row[f"{name}_std"])
            checked += 1
    assert checked >= 25
    # the threshold curve reaches within 1 point of the backbone on digits; budgets are read off the hull
    uniform = board[board["variant"] == "threshold[loss_weights=uniform]"].iloc[0]
    assert uniform["cost_to_backbone_minus_1pt_mean"] < 1.0
    assert uniform["accuracy_at_1.00_mean"] >= uniform["backbone_accuracy_mean"] - 1.0
    # the long table: one row per operating point of every record, per-exit arrays included
    table = report.read_table(tmp_path / report.TABLE_NAME)
    assert len(table) == sum(len(r["operating_points"]) for r in records)
    row = table[table["method"] == "jei"].iloc[-1]
    rec = next(r for r in records if r["run_id"] == row["run_id"])
    p = rec["operating_points"][row["point"]]
    np.testing.assert_allclose(row["im_ece"], p["im_ece"], rtol=1e-6)
    np.testing.assert_allclose(row["conformal_coverage"], p["conformal"]["coverage"], rtol=1e-6)
    assert row["p_method_im_loss"] == rec["config"]["method_params"]["im_loss"]
    assert row["git_revision"] == (rec["git_revision"] or "unknown")
    assert row["version_torch"] == rec["versions"]["torch"] and row["device"] == rec["device"]
    assert (tmp_path / report.TABLE_NAME).stat().st_size < 200 * 1024


def test_regenerate_from_table_byte_for_byte(sweep: Path, tmp_path: Path, cli):
    first, second = tmp_path / "from_records", tmp_path / "from_table"
    assert cli("report", sweep, "--out", first)[0] == 0
    second.mkdir()           # a clean folder holding only the committed table
    (second / report.TABLE_NAME).write_bytes((first / report.TABLE_NAME).read_bytes())
    assert cli("report", second / report.TABLE_NAME, "--out", second)[0] == 0
    names = sorted(p.name for p in first.iterdir())
    assert names == ["leaderboard.csv", "leaderboard.md", "leaderboard_digits.csv", report.TABLE_NAME]
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_plot_draws_every_figure(sweep: Path, tmp_path: Path, cli):
    assert cli("report", sweep, "--out", tmp_path / "results")[0] == 0
    status, out, err = cli("plot", tmp_path / "results" / report.TABLE_NAME, "--out", tmp_path / "plots")
    assert status == 0, err
    folder = tmp_path / "plots" / "digits_vit_digits"
    for name in ("fig2_accuracy_vs_cost", "fig3_exit_decomposition", "fig4_ece_per_im", "fig5_uncertainty"):
        png, pdf = folder / f"{name}.png", folder / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000, name
        assert pdf.read_bytes()[:5] == b"%PDF-", name
    assert (tmp_path / "plots" / "fig2_accuracy_vs_cost_all.png").exists()


def test_plotted_curves_are_the_hull(sweep: Path):
    """Fig. 2 draws each seed's budget curve: equal to the brute-force A(c) on the grid."""
    from eebench import plots

    df = report.collect(sweep)
    df = df.assign(variant=report.variant_names(df))
    curves = plots.accuracy_curves(df)
    for record in _records(sweep):
        g = df[df["run_id"] == record["run_id"]]
        variant, seed = g["variant"].iloc[0], record["config"]["seed"]
        c = curves[(curves["variant"] == variant) & (curves["seed"] == seed)]
        cost = np.array([p["cost"] for p in record["operating_points"]])
        acc = np.array([p["accuracy"] for p in record["operating_points"]])
        inside = c["cost"].to_numpy() <= cost.max()
        expected = 100 * _budget_accuracy(cost, acc, c["cost"].to_numpy()[inside])
        np.testing.assert_allclose(c["accuracy"].to_numpy()[inside], expected, atol=1e-9)
        assert np.isnan(c["accuracy"].to_numpy()[~inside]).all()


# ------------------------------------------------------------------------------------------------
# the hull on a hand-made example


COST = np.array([0.2, 0.4, 0.5, 0.8, 0.9, 0.6])
ACC = np.array([0.6, 0.7, 0.9, 0.95, 0.93, 0.8])


def test_upper_hull_by_hand():
    hc, ha = report.upper_hull(COST, ACC)
    # (0.4, 0.7) and (0.6, 0.8) lie under the chords; (0.9, 0.93) is past the peak
    np.testing.assert_allclose(hc, [0.2, 0.5, 0.8])
    np.testing.assert_allclose(ha, [0.6, 0.9, 0.95])
    # A(0.25) = 0.6 + 0.05 * (0.3 / 0.3); flat at the peak after 0.8; undefined below 0.2
    np.testing.assert_allclose(report.hull_accuracy(hc, ha, [0.25, 0.65, 1.0, 3.0]), [0.65, 0.925, 0.95, 0.95])
    assert math.isnan(report.hull_accuracy(hc, ha, 0.1))
    # ∫0^1: 0 on [0, 0.2), 0.3 * 0.75 + 0.3 * 0.925 + 0.2 * 0.95
    assert report.hull_auc(hc, ha) == pytest.approx(0.225 + 0.2775 + 0.19)
    assert report.least_cost(hc, ha, 0.93) == pytest.approx(0.5 + 0.3 * 0.03 / 0.05)
    assert report.least_cost(hc, ha, 0.5) == pytest.approx(0.2)
    assert math.isnan(report.least_cost(hc, ha, 0.96))


def test_hull_degenerate_inputs():
    hc, ha = report.upper_hull(np.array([0.3, 0.3, 0.3]), np.array([0.5, 0.7, 0.6]))
    assert hc.tolist() == [0.3] and ha.tolist() == [0.7]          # one cost: the best point
    hc, ha = report.upper_hull(np.array([0.2, 0.4, 0.6]), np.array([0.5, 0.6, 0.7]))   # collinear
    assert hc.tolist() == [0.2, 0.6]
    assert report.hull_accuracy(hc, ha, 0.4) == pytest.approx(0.6)
    assert len(report.upper_hull(np.array([]), np.array([]))[0]) == 0
    assert report.hull_auc(np.array([1.2]), np.array([0.9])) == 0.0   # no budget in [0, 1] is reachable


def test_deployed_point_by_hand():
    sc, si = report.staircase(COST, ACC)
    # budget 0.45: the best of (0.2, 0.6), (0.4, 0.7) is index 1; 0.85: (0.8, 0.95) is index 3
    assert report.deployed_point(sc, si, np.array([0.1, 0.2, 0.45, 0.55, 0.85, 2.0])).tolist() == [-1, 0, 1, 2, 3, 3]
    sc, si = report.staircase(np.array([0.5, 0.3]), np.array([0.8, 0.8]))     # a tie: the cheaper
    assert report.deployed_point(sc, si, 0.6) == 1


# ------------------------------------------------------------------------------------------------
# bad input


def test_report_bad_input(cli, tmp_path: Path):
    status, _, err = cli("report", tmp_path / "nowhere")
    assert status == 2 and "not a folder of run records" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    status, _, err = cli("report", tmp_path / "empty", "--out", tmp_path / "r")
    assert status == 2 and "no run record" in err
    (tmp_path / "bad" / "x").mkdir(parents=True)
    (tmp_path / "bad" / "x" / "record.json").write_text('{"run_id": "x", "config": {}}')
    status, _, err = cli("report", tmp_path / "bad", "--out", tmp_path / "r")
    assert status == 2 and "not a readable run record" in err
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "other.parquet")
    status, _, err = cli("plot", tmp_path / "other.parquet", "--out", tmp_path / "p")
    assert status == 2 and "not an eebench operating-point table" in err


# ------------------------------------------------------------------------------------------------
# per-IM ECE (eebench/metrics.py)


def test_im_ece_by_hand():
    # 4 samples, K = 2, C = 2; confidences away from the 15 bin edges (k/15)
    probs = torch.tensor([[[0.81, 0.19], [0.62, 0.38]],
                          [[0.30, 0.70], [0.10, 0.90]],
                          [[0.57, 0.43], [0.22, 0.78]],
                          [[0.91, 0.09], [0.35, 0.65]]])
    labels = np.array([0, 1, 1, 1])
    m = evaluate(OperatingPoint({}, np.array([0, 1, 1, 0]), probs), labels, None, None,
                 np.array([0.5, 1.0]), np.array([5.0, 10.0]))
    # bin of a confidence: ceil(15 conf) - 1
    # IM 1: 0.81 right (bin 12), 0.70 right (bin 10), 0.57 wrong (bin 8), 0.91 wrong (bin 13): one per bin
    ece1 = (0.19 + 0.30 + 0.57 + 0.91) / 4
    # IM 2: all right; 0.62 and 0.65 share bin 9 -> 2/4 * |1 - 0.635|; 0.90 (bin 13) and 0.78 (bin 11)
    ece2 = 0.5 * (1 - 0.635) + 0.25 * 0.10 + 0.25 * 0.22
    assert m["im_ece"] == pytest.approx([ece1, ece2])


def test_seed_band_is_mean_plus_minus_sample_std_clipped_to_the_range():
    from eebench.plots import sd_band
    values = [0.0, 1.0, 5.0]                      # mean 2; sample variance (4 + 1 + 9) / 2 = 7
    lo, hi = sd_band(100.0)(values)
    assert lo == 0.0                              # 2 - sqrt(7) < 0 is clipped
    assert abs(hi - (2 + 7 ** 0.5)) < 1e-12
    assert sd_band(4.0)(values) == (0.0, 4.0)     # and the upper end
    assert sd_band()([3.0]) == (3.0, 3.0)         # one seed: no band
