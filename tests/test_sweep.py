"""Sweeps without a cluster: grid expansion (products, ``include:``, list-valued parameters), run
ids equal to ``eebench run``'s, bad grids, ``--dry-run``, the inline and local launchers on the
real digits data, skipping of recorded runs, failure reports and ``--collect``."""
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from conftest import EXPERIMENTS, SMOKE, check_record
from eebench.harness.config import resolve
from eebench.errors import ConfigError, UnknownNameError
from eebench.harness.method import load_methods
from eebench.sweep.grids import expand, load_grid

EEBENCH = Path(sys.executable).parent / "eebench"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_smoke_grid_is_the_product_of_its_lists():
    configs = expand(load_grid(SMOKE))
    assert len(configs) == 12 and len({c.run_id for c in configs}) == 12
    assert Counter(c.method for c in configs) == {"threshold": 6, "jei": 6}
    combos = Counter((c.method, str(c.method_params.get("q_grid") if c.method == "threshold" else
                                    c.method_params["im_loss"]), c.seed) for c in configs)
    assert set(combos.values()) == {1}
    assert {k[1] for k in combos} == {"[0.5, 1.0, 1.5]", "[0.25, 0.75, 1.25, 1.75]", "uniform", "weighted"}
    assert {c.seed for c in configs} == {0, 1, 2}
    for c in configs:   # each method starts from its test_parameters; a list-valued one stays whole
        tiny = load_methods().get(c.method).test_parameters
        assert c.dataset == "digits" and c.backbone == "vit_digits"
        assert all(c.method_params[k] == v for k, v in tiny.items())
        if c.method == "jei":
            assert c.method_params["lambdas"] == [0.1, 1.0]


def test_run_ids_are_those_of_eebench_run():
    """The sweep resolves each run exactly as `eebench run --set ...` does, so the ids agree."""
    by_key = {(c.method, c.seed, str(c.method_params.get("im_loss", c.method_params.get("q_grid")))): c.run_id
              for c in expand(load_grid(SMOKE))}
    jei = resolve("jei", "digits", None, 2, ["method.epochs=4", "method.lambdas=[0.1, 1.0]", "method.im_loss=uniform"])
    thr = resolve("threshold", None, None, 0, ["method.q_grid=[0.5, 1.0, 1.5]"])
    assert by_key[("jei", 2, "uniform")] == jei.run_id
    assert by_key[("threshold", 0, "[0.5, 1.0, 1.5]")] == thr.run_id


def test_include_inherits_overrides_and_removes(tmp_path):
    _write(tmp_path / "base.yaml", "name: base\ndatasets: [digits]\nseeds: [0, 1]\ntest_parameters: true\n"
                                   "methods:\n  boosted: {gamma: [0.5, 1.0]}\n  jei: {}\n")
    _write(tmp_path / "child.yaml", "include: base.yaml\nseeds: 3\n"
                                    "methods:\n  jei: null\n  boosted: {final_exit: [ensemble, backbone]}\n")
    base, child = load_grid(tmp_path / "base.yaml"), load_grid(tmp_path / "child.yaml")
    assert base.name == "base" and child.name == "child"      # a name is never inherited
    assert len(expand(base)) == 2 * 2 + 2
    configs = expand(child)
    # jei removed; boosted keeps the inherited gamma sweep and adds a final_exit sweep; seeds 0..2
    assert {c.method for c in configs} == {"boosted"}
    assert len(configs) == 2 * 2 * 3
    assert {(c.method_params["gamma"], c.method_params["final_exit"]) for c in configs} == \
        {(0.5, "ensemble"), (0.5, "backbone"), (1.0, "ensemble"), (1.0, "backbone")}
    # --set overrides a dotted grid key; null removes an entry; im_params sweep the shared IM stage
    assert len(expand(load_grid(tmp_path / "child.yaml", ["seeds=[5]", "methods.boosted.gamma=2"]))) == 2
    assert {c.method for c in expand(load_grid(tmp_path / "base.yaml", ["methods.jei=null"]))} == {"boosted"}
    swept = expand(load_grid(tmp_path / "base.yaml", ["im_params.epochs=[5, 10]"]))
    assert Counter(c.im_params["epochs"] for c in swept) == {5: 6, 10: 6}


def test_list_valued_parameters_sweep_only_lists_of_lists(tmp_path):
    one = expand(load_grid(_write(tmp_path / "a.yaml", "methods: {jei: {lambdas: [0.1, 1.0]}}\n")))
    two = expand(load_grid(_write(tmp_path / "b.yaml", "methods: {jei: {lambdas: [[0.1], [1.0, 3.0]]}}\n")))
    assert [c.method_params["lambdas"] for c in one] == [[0.1, 1.0]]
    assert [c.method_params["lambdas"] for c in two] == [[0.1], [1.0, 3.0]]


def test_method_grid_expands_each_methods_declared_grid():
    configs = expand(load_grid(EXPERIMENTS / "paper_cifar100.yaml"))
    methods = load_methods()
    counts = Counter(c.method for c in configs)
    for name, n in counts.items():
        grid = methods.get(name).grid
        size = 1
        for values in grid.values():
            size *= len(values)
        assert n == 3 * size, name                           # 3 seeds x the method's grid
    assert {(c.dataset, c.backbone) for c in configs} == {("cifar100", "t2t_vit_14")}


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_experiment_grid_expands(path):
    configs = expand(load_grid(path))
    assert configs and len({c.run_id for c in configs}) == len(configs)
    if path.stem.startswith("paper_") and path.stem != "paper_base":
        assert {c.backbone for c in configs} <= {"t2t_vit_7", "t2t_vit_14"}


def test_include_cycle_and_unknown_keys(tmp_path):
    _write(tmp_path / "a.yaml", "include: b.yaml\n")
    _write(tmp_path / "b.yaml", "include: a.yaml\n")
    with pytest.raises(ConfigError, match="include cycle: a.yaml -> b.yaml -> a.yaml"):
        load_grid(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="unknown key 'seed'.*did you mean 'seeds'"):
        load_grid(_write(tmp_path / "c.yaml", "seed: [0]\nmethods: [jei]\n"))
    with pytest.raises(UnknownNameError, match="unknown method 'jie'.*did you mean 'jei'"):
        expand(load_grid(_write(tmp_path / "d.yaml", "methods: {jie: {}}\n")))


@pytest.mark.parametrize("grid, words", [
    ("methods: {jie: {}}", ["unknown method 'jie'", "did you mean 'jei'"]),
    ("methods: {jei: {epoch: [1, 2]}}", ["method.epoch", "did you mean 'epochs'"]),
    ("im_params: {epoch: 3}\nmethods: [threshold]", ["im.epoch", "did you mean 'epochs'"]),
    ("methods: {jei: {epochs: two}}", ["method.epochs='two'", "expected int"]),
    ("datasets: [cifar01]\nmethods: [jei]", ["unknown dataset 'cifar01'", "did you mean 'cifar10'"]),
    ("methods: {jei: {im_loss: []}}", ["im_loss", "empty list"]),
    ("methods: {jei: {im_loss: bogus}}", ["method.im_loss='bogus'", "must be one of weighted, uniform"]),
    ("methods: {threshold: {}}\nim_params: {batch_size: 0}", ["im.batch_size=0", "must be in [1, inf)"]),
    ("methods: [jei]\nseeds: [a]", ["seeds must be a list of ints"]),
    ("methods: [jei\n", ["malformed YAML", "line"]),
])
def test_bad_grids_stop_before_anything_runs(cli, tmp_path, grid, words):
    path = _write(tmp_path / "bad.yaml", grid + "\n")
    status, _, err = cli("sweep", path, "--launcher", "inline", "--out", tmp_path / "runs")
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert status == 2 and len(lines) == 1, err
    for w in words:
        assert w in lines[0]
    assert not (tmp_path / "runs").exists()


def test_dry_run_lists_runs_and_stages_and_submits_nothing(cli, tmp_path):
    status, out, err = cli("sweep", SMOKE, "--dry-run", "--launcher", "inline", "--out", tmp_path / "runs")
    assert status == 0, err
    assert "grid smoke: 12 runs (0 already recorded" in out
    assert out.count("  pending  ") == 12
    assert "stages: 1 feature job(s), then 12 run task(s)" in out
    assert "im_loss=weighted" in out and "q_grid=[0.5, 1.0, 1.5]" in out   # printed: what differs from the defaults
    assert not (tmp_path / "runs").exists()


def test_inline_sweep_skips_recorded_runs_and_reports_a_failing_one(cli, tmp_path):
    """A run recorded by `eebench run` is skipped by the sweep (same id, record untouched); a run
    with a parameter its method rejects fails alone, reported with its log; --collect gathers."""
    out = tmp_path / "runs"
    status, _, err = cli("run", "--method", "threshold", "--seed", "1", "--out", out)
    assert status == 0, err
    first = next(out.glob("*/record.json"))
    before = (first.read_bytes(), first.stat().st_mtime_ns)
    grid = _write(tmp_path / "g.yaml", "name: mixed\ndatasets: [digits]\nseeds: [0, 1]\ntest_parameters: true\n"
                                       "methods:\n  threshold: {}\n  eenet: {budgets: [[0.01]]}\n")
    status, stdout, err = cli("sweep", grid, "--launcher", "inline", "--out", out)
    assert status == 1, err
    assert "sweep mixed (inline): 4 runs: 1 already recorded, 1 finished now, 2 failed" in stdout
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before
    configs = expand(load_grid(grid))
    bad = [c.run_id for c in configs if c.method == "eenet"]     # a budget below the first exit's cost: known at fit
    for run_id in bad:
        assert f"  {run_id}: ConfigError: method.budgets=[0.01]: each budget must lie in (" in stdout
        assert not (out / run_id).exists()                   # a failed run writes nothing
    logs = [Path(ln.split("log: ", 1)[1]) for ln in stdout.splitlines() if "log: " in ln]
    assert len(logs) == 2 and all("Traceback" in p.read_text() and "budget" in p.read_text() for p in logs)
    for c in configs:
        if c.method == "threshold":
            check_record(json.loads((out / c.run_id / "record.json").read_text()))
    # resubmitting runs only what is missing
    status, stdout, _ = cli("sweep", grid, "--launcher", "inline", "--out", out)
    assert status == 1 and "2 already recorded, 0 finished now, 2 failed" in stdout
    status, stdout, _ = cli("sweep", grid, "--collect", "--out", out)
    assert status == 1
    assert "grid mixed: 2 of 4 runs recorded" in stdout and all(r in stdout for r in bad)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_local_launcher_runs_the_smoke_grid_without_slurm(tmp_path, session_cache):
    """With no SLURM client on PATH, --launcher auto falls back to submitit's local executor."""
    out = tmp_path / "runs"
    env = {**os.environ, "PATH": str(EEBENCH.parent), "EEBENCH_CACHE_DIR": str(session_cache), "TQDM_DISABLE": "1"}
    proc = subprocess.run([str(EEBENCH), "sweep", str(SMOKE), "--launcher", "auto", "--runs-per-task", "12",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sweep smoke (local): 12 runs: 0 already recorded, 12 finished now, 0 failed" in proc.stdout
    ids = {c.run_id for c in expand(load_grid(SMOKE))}
    assert {p.parent.name for p in out.glob("*/record.json")} == ids
    for run_id in ids:
        record = json.loads((out / run_id / "record.json").read_text())
        check_record(record)
        assert record["features"]["reused"] is True          # built once, by the feature job
    manifest = json.loads(next((out / "_sweeps").glob("smoke-*/sweep.json")).read_text())
    assert [j["kind"] for j in manifest["jobs"]] == ["features", "runs"]
    proc = subprocess.run([str(EEBENCH), "sweep", str(SMOKE), "--collect", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "grid smoke: 12 of 12 runs recorded" in proc.stdout


def test_failed_feature_stage_fails_its_runs_with_its_log(cli, tmp_path):
    """A feature stage that cannot be built (published weights the digits ViT does not have) fails
    every run of its group with the stage's error and log; nothing is recorded."""
    grid = _write(tmp_path / "g.yaml", "name: nofeatures\ndatasets: [digits]\nweights: published\nseeds: [0, 1]\n"
                                       "test_parameters: true\nmethods: [threshold]\n")
    status, stdout, err = cli("sweep", grid, "--launcher", "inline", "--out", tmp_path / "runs")
    assert status == 1, err
    assert "2 runs: 0 already recorded, 0 finished now, 2 failed" in stdout
    assert stdout.count("feature stage digits/vit_digits failed: UsageError: vit_digits has no published weights") == 1
    assert all(c.run_id in stdout for c in expand(load_grid(grid)))     # one line for the stage, naming its runs
    logs = {Path(ln.split("log: ", 1)[1]) for ln in stdout.splitlines() if "log: " in ln}
    assert len(logs) == 1 and "Traceback" in logs.pop().read_text()
    assert not list((tmp_path / "runs").glob("*/record.json"))


def test_bad_profile_and_missing_slurm_are_usage_errors(cli, tmp_path, monkeypatch):
    profile = _write(tmp_path / "p.yaml", "slurm_partiton: debug\n")
    status, _, err = cli("sweep", SMOKE, "--profile", profile, "--launcher", "inline", "--out", tmp_path / "runs")
    assert status == 2 and "submitit rejects it: Unknown argument 'partiton'" in err
    monkeypatch.setenv("PATH", str(EEBENCH.parent))            # no sbatch, no srun
    status, _, err = cli("sweep", SMOKE, "--launcher", "slurm", "--out", tmp_path / "runs")
    assert status == 2 and "no SLURM client (sbatch, srun) on PATH" in err and "--launcher local" in err
    assert not (tmp_path / "runs").exists()


def test_latency_key_times_each_run_and_the_report_gains_the_measured_column(cli, tmp_path):
    """``latency:`` in a grid times every run after it (``latency.json`` beside the record); a run
    recorded before, without it, is timed without being run again; ``eebench report`` and ``plot``
    then carry the measured speed-up of the val-selected point and the measured-time figure."""
    out = tmp_path / "runs"
    plain = _write(tmp_path / "g.yaml", "name: timed\ndatasets: [digits]\nseeds: [0]\ntest_parameters: true\n"
                                        "methods: {jei: {}}\n")
    assert cli("sweep", plain, "--launcher", "inline", "--out", out)[0] == 0
    record = next(out.glob("*/record.json"))
    before = record.stat().st_mtime_ns
    timed = _write(tmp_path / "t.yaml", f"include: {plain.name}\nlatency: {{batch_size: 64, repeats: 1}}\n")
    status, dry, err = cli("sweep", timed, "--dry-run", "--launcher", "inline", "--out", out)
    assert status == 0 and "1 runs (0 already recorded" in dry, dry + err      # recorded, but not timed yet
    status, stdout, err = cli("sweep", timed, "--launcher", "inline", "--out", out)
    assert status == 0, err
    assert "1 runs: 0 already recorded, 1 finished now, 0 failed" in stdout
    assert record.stat().st_mtime_ns == before                       # timed, not run again
    latency = json.loads((record.parent / "latency.json").read_text())
    assert latency["batch_size"] == 64 and all(p["agreement"] == 1.0 for p in latency["points"])
    assert cli("report", out, "--out", tmp_path / "results")[0] == 0
    board = pd.read_csv(tmp_path / "results" / "leaderboard.csv")
    assert "measured_speedup_at_0.50_mean" in board.columns
    speedups = [p["measured_speedup"] for p in latency["points"]]      # the CSV keeps 4 decimals
    assert all(min(abs(v - s) for s in speedups) < 1e-3
               for v in board.filter(like="measured_speedup_at").filter(like="_mean").iloc[0].dropna())
    assert "measured × @0.50" in (tmp_path / "results" / "leaderboard.md").read_text()
    assert cli("plot", tmp_path / "results" / "operating_points.parquet", "--out", tmp_path / "fig")[0] == 0
    assert list((tmp_path / "fig").glob("*/fig6_measured_time.png"))
    status, _, err = cli("sweep", _write(tmp_path / "bad.yaml", f"include: {plain.name}\nlatency: {{batch: 64}}\n"),
                         "--launcher", "inline", "--out", out)
    assert status == 2 and "latency: expected true, or a mapping of" in err
