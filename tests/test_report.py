"""`eebench report` and `eebench plot` on a small real sweep (digits, two methods, 1-2 seeds), checked
against the run records by hand computation (the val-selection rule, the common-range AUC, the
standard errors against the records' per-sample arrays); the per-IM ECE of the metrics against a
hand computation."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from eebench.report import bootstrap, leaderboard, table
from eebench.harness.config import resolve
from eebench.harness.method import OperatingPoint, load_methods
from eebench.harness.metrics import evaluate
from eebench.harness.runner import RunOptions, run
from eebench.report.selection import select

SWEEP = [("threshold", 0, {}), ("threshold", 1, {}), ("jei", 0, {}), ("threshold", 0, {"q_grid": [0.5, 1.0, 1.5]})]
FULL_GRID = "threshold[q_grid=[0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3, 1.35, 1.4, 1.45, 1.5, 1.55, 1.6, 1.65, 1.7, 1.75, 1.8, 1.85, 1.9, 1.95]]"
SHORT_GRID = "threshold[q_grid=[0.5, 1.0, 1.5]]"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> Path:
    """Real digits runs with each method's test parameters: threshold with seeds 0 and 1, JEI-DNN
    with seed 0, and one threshold run with three budget levels (a second variant)."""
    out = tmp_path_factory.mktemp("runs")
    methods = load_methods()
    for method, seed, extra in SWEEP:
        config = resolve(method, "digits", None, seed)
        config.method_params.update({**methods.get(method).test_parameters, **extra})
        run(config, RunOptions(out_dir=out))
    return out


def _records(runs: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs.glob("*/record.json"))]


def _deployed(points: list[dict], budget: float) -> int:
    """By the definition: the point of best val accuracy among val cost <= budget; ties: lower val
    cost, then the earlier point; -1 if none."""
    fits = [i for i, p in enumerate(points) if p["val"]["cost"] <= budget]
    if not fits:
        return -1
    return max(fits, key=lambda i: (points[i]["val"]["accuracy"], -points[i]["val"]["cost"], -i))


def _by_hand(record: dict, lo: float) -> dict[str, float]:
    pts = record["operating_points"]
    out: dict[str, float] = {}
    for b in (0.25, 0.5, 0.75, 1.0):
        i = _deployed(pts, b)
        p = pts[i] if i >= 0 else None
        out[f"accuracy_at_{b:.2f}"] = 100 * p["accuracy"] if p else math.nan
        out[f"cost_at_{b:.2f}"] = p["cost"] if p else math.nan
        out[f"ece_at_{b:.2f}"] = 100 * p["ece"] if p else math.nan
        out[f"inefficiency95_at_{b:.2f}"] = p["inefficiency_at_95"] if p else math.nan
    grid = np.linspace(lo, 1.0, 60001)[:-1]            # budgets uniform on [lo, 1)
    out["auc"] = 100 * float(np.mean([pts[_deployed(pts, b)]["accuracy"] for b in grid[::10]]))
    target = record["backbone_val_accuracy"] - 0.01
    reach = [i for i, p in enumerate(pts) if p["val"]["accuracy"] >= target]
    out["cost_to_backbone_minus_1pt"] = (pts[min(reach, key=lambda i: (pts[i]["val"]["cost"], -pts[i]["val"]["accuracy"],
                                                                      i))]["cost"] if reach else math.nan)
    return out


def test_leaderboard_against_records_by_hand(sweep: Path, tmp_path: Path, cli):
    status, out, err = cli("report", sweep, "--out", tmp_path)
    assert status == 0, err
    board = pd.read_csv(tmp_path / "leaderboard.csv", keep_default_na=True)
    assert list(board["variant"]) == [FULL_GRID, SHORT_GRID, "jei"]     # variants by name within a method
    assert list(board["seeds"]) == [2, 1, 1]
    records = _records(sweep)
    lo = max(min(p["val"]["cost"] for p in r["operating_points"]) for r in records)
    assert board["auc_range_lo"].tolist() == pytest.approx([lo] * 3, abs=1e-4) and (board["auc_range_hi"] == 1).all()
    groups = {"jei": [r for r in records if r["config"]["method"] == "jei"],
              FULL_GRID: [r for r in records if r["config"]["method"] == "threshold"
                          and len(r["config"]["method_params"]["q_grid"]) == 39],
              SHORT_GRID: [r for r in records if r["config"]["method"] == "threshold"
                           and len(r["config"]["method_params"]["q_grid"]) == 3]}
    checked = 0
    for variant, recs in groups.items():
        row = board[board["variant"] == variant].iloc[0]
        hand = [_by_hand(r, lo) for r in sorted(recs, key=lambda r: r["config"]["seed"])]
        for name in hand[0]:
            values = [h[name] for h in hand]
            tol = 0.05 if name == "auc" else 1e-4                  # a 6,000-budget grid / %.4f
            if any(math.isnan(v) for v in values):
                assert math.isnan(row[f"{name}_mean"]), (variant, name)
                continue
            assert row[f"{name}_mean"] == pytest.approx(statistics.mean(values), abs=tol), (variant, name)
            if len(values) > 1:
                assert row[f"{name}_std"] == pytest.approx(statistics.stdev(values), abs=tol), (variant, name)
            else:
                assert math.isnan(row[f"{name}_std"])
            checked += 1
    assert checked >= 40
    # the standard error of an accuracy against the binomial one of a fixed classifier of that accuracy
    full = board[board["variant"] == FULL_GRID].iloc[0]
    p, n = full["accuracy_at_0.75_mean"] / 100, records[0]["splits"]["test"]["n"]
    assert full["accuracy_at_0.75_se"] == pytest.approx(100 * math.sqrt(p * (1 - p) / n), rel=0.35)
    assert full["tied_with_best_at_0.75"] in (True, False)
    # the long table: one row per operating point of every record, per-exit arrays included
    tab = table.read_table(tmp_path / table.TABLE_NAME)
    assert len(tab) == sum(len(r["operating_points"]) for r in records)
    row = tab[tab["method"] == "jei"].iloc[-1]
    rec = next(r for r in records if r["run_id"] == row["run_id"])
    p = rec["operating_points"][row["point"]]
    np.testing.assert_allclose(row["im_ece"], p["im_ece"], rtol=1e-6)
    np.testing.assert_allclose(row["conformal_coverage"], p["conformal"]["coverage"], rtol=1e-6)
    assert row["p_method_im_loss"] == rec["config"]["method_params"]["im_loss"]
    assert row["git_revision"] == (rec["git_revision"] or "unknown")
    assert row["version_torch"] == rec["versions"]["torch"] and row["device"] == rec["device"]
    assert row["weights_sha256"] == rec["backbone"]["weights"]["sha256"] and row["weights_source"] == rec["backbone"]["weights"]["source"]
    assert (tmp_path / table.TABLE_NAME).stat().st_size < 200 * 1024


def test_samples_table_holds_the_deployed_points_of_the_records(sweep: Path, tmp_path: Path, cli):
    assert cli("report", sweep, "--out", tmp_path)[0] == 0
    tab = table.read_table(tmp_path / table.TABLE_NAME)
    samples = table.read_samples(tmp_path)
    for record in _records(sweep):
        run = tab[tab["run_id"] == record["run_id"]].sort_values("point")
        deployed = select(run["val_cost"].to_numpy(), run["val_accuracy"].to_numpy(), [0.25, 0.5, 0.75, 1.0])
        arrays = np.load(next(sweep.glob(f"{record['run_id']}/samples.npz")))
        for i in {int(i) for i in deployed if i >= 0}:
            row = samples[(samples["run_id"] == record["run_id"]) & (samples["point"] == i)].iloc[0]
            assert np.array_equal(row["correct"], arrays["prediction"][i] == arrays["labels"])
            assert np.array_equal(row["exit"], arrays["exit_index"][i])
            assert row["set_size"].mean() == pytest.approx(record["operating_points"][i]["inefficiency_at_95"])
            np.testing.assert_allclose(table.dequantise_confidence(row["confidence"]), arrays["confidence"][i],
                                       atol=1 / 480 + 1e-3)


def test_regenerate_from_table_byte_for_byte(sweep: Path, tmp_path: Path, cli):
    first, second = tmp_path / "from_records", tmp_path / "from_table"
    assert cli("report", sweep, "--out", first)[0] == 0
    second.mkdir()           # a clean folder holding only the committed tables
    for name in (table.TABLE_NAME, "samples_digits_vit_digits.parquet"):
        (second / name).write_bytes((first / name).read_bytes())
    assert cli("report", second / table.TABLE_NAME, "--out", second)[0] == 0
    names = sorted(p.name for p in first.iterdir())
    assert names == ["diagnostics.md", "exits_digits_vit_digits.csv", "index.html", "leaderboard.csv", "leaderboard.md",
                     "leaderboard_digits.csv", table.TABLE_NAME, "overthinking.csv", "samples_digits_vit_digits.parquet"]
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_plot_draws_every_figure(sweep: Path, tmp_path: Path, cli):
    assert cli("report", sweep, "--out", tmp_path / "results")[0] == 0
    status, out, err = cli("plot", tmp_path / "results" / table.TABLE_NAME, "--out", tmp_path / "plots")
    assert status == 0, err
    from PIL import Image

    from eebench.report import figure_style

    df = table.read_table(tmp_path / "results" / table.TABLE_NAME)
    variants = leaderboard.variant_names(df)
    colours = figure_style.palette(variants.tolist())
    folder = tmp_path / "plots" / "digits_vit_digits"
    figures = [folder / f"{name}.png" for name in ("fig2_accuracy_vs_cost", "fig3_exit_decomposition",
                                                   "fig4_ece_per_im", "fig5_uncertainty", "fig7_risk_coverage")]
    for png in figures + [tmp_path / "plots" / "fig2_accuracy_vs_cost_all.png"]:
        assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-", png.name
        pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(int)
        for v in set(variants):       # every variant is drawn: pixels of its palette colour
            rgb = np.round(255 * np.asarray(colours[v][:3]))
            assert (np.abs(pixels - rgb).max(axis=1) <= 2).sum() >= 30, (png.name, v)


def test_plotted_curves_are_the_val_selected_test_accuracy(sweep: Path):
    """Fig. 2 draws, at each budget of its grid, the test accuracy of the point chosen on val."""
    from eebench.report import plots

    df, _ = table.collect(sweep)
    df = df.assign(variant=leaderboard.variant_names(df))
    curves = plots.accuracy_curves(df)
    for record in _records(sweep):
        g = df[df["run_id"] == record["run_id"]]
        variant, seed = g["variant"].iloc[0], record["config"]["seed"]
        c = curves[(curves["variant"] == variant) & (curves["seed"] == seed)]
        pts = record["operating_points"]
        inside = c["cost"].to_numpy() <= max(p["cost"] for p in pts)
        expected = [100 * pts[i]["accuracy"] if i >= 0 else math.nan
                    for i in (_deployed(pts, b) for b in c["cost"].to_numpy()[inside])]
        np.testing.assert_allclose(c["accuracy"].to_numpy()[inside], expected, atol=1e-9)
        assert np.isnan(c["accuracy"].to_numpy()[~inside]).all()


def test_bootstrap_weights_pair_the_methods_of_a_setting():
    """One resample of the test samples serves every method of a setting (a paired comparison)."""
    w1 = bootstrap.resample_weights(50, 100, "digits/vit_digits")
    w2 = bootstrap.resample_weights(50, 100, "digits/vit_digits")
    assert np.array_equal(w1, w2) and not np.array_equal(w1, bootstrap.resample_weights(50, 100, "mnist/t2t_vit_7"))


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
# per-IM ECE (eebench/harness/metrics.py)


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
    from eebench.report.figure_style import sd_band
    values = [0.0, 1.0, 5.0]                      # mean 2; sample variance (4 + 1 + 9) / 2 = 7
    lo, hi = sd_band(100.0)(values)
    assert lo == 0.0                              # 2 - sqrt(7) < 0 is clipped
    assert abs(hi - (2 + 7 ** 0.5)) < 1e-12
    assert sd_band(4.0)(values) == (0.0, 4.0)     # and the upper end
    assert sd_band()([3.0]) == (3.0, 3.0)         # one seed: no band
