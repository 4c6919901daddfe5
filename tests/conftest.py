"""Shared fixtures: one cache folder per test session (the digits ViT trains once), paths to the
real data and weights in ``../shared``, and a helper that runs the CLI in-process."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
DATA_DIR = SHARED / "data"
EXPERIMENTS = ROOT / "experiments"
SMOKE = EXPERIMENTS / "smoke.yaml"
WEIGHTS_DIR = SHARED / "weights"

needs_shared = pytest.mark.skipif(not (DATA_DIR / "cifar10" / "test.parquet").exists(),
                                  reason="../shared/data (real CIFAR-10 / MNIST mirror) is not present")


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EEBENCH_CACHE_DIR for the whole session, unless the caller set one (CI keeps one warm)."""
    if os.environ.get("EEBENCH_TEST_CACHE_DIR"):
        path = Path(os.environ["EEBENCH_TEST_CACHE_DIR"])
    else:
        path = tmp_path_factory.mktemp("eebench-cache")
    os.environ["EEBENCH_CACHE_DIR"] = str(path)
    os.environ.setdefault("TQDM_DISABLE", "1")
    return path


@pytest.fixture
def cli(capsys: pytest.CaptureFixture):
    """Run ``eebench ARGS`` in-process; returns ``(status, stdout, stderr)``."""
    from eebench.cli import main

    def _run(*args: str) -> tuple[int, str, str]:
        status = main([str(a) for a in args])
        out = capsys.readouterr()
        return status, out.out, out.err

    return _run


def read_record(out_dir: Path) -> dict:
    records = list(Path(out_dir).glob("*/record.json"))
    assert len(records) == 1, records
    return json.loads(records[0].read_text())


def check_record(record: dict) -> None:
    """A real run record of the digits ViT: its numbers, not just its presence."""
    assert record["config"]["dataset"] == "digits" and record["backbone"]["num_exits"] == 6
    assert record["backbone_accuracy"] >= 0.90                  # the ViT trained on first use
    points = record["operating_points"]
    method_params = record["config"]["method_params"]
    assert len(points) == (len(method_params["q_grid"]) if record["config"]["method"] == "threshold" else 2)
    for p in points:
        assert 0.0 < p["cost"] < 1.5 and 0.0 <= p["accuracy"] <= 1.0
        assert abs(sum(p["exit_shares"]) - 1) < 1e-9
    best = max(p["accuracy"] for p in points)
    if record["config"]["method"] == "threshold":   # the dearest budget keeps the backbone's accuracy
        assert best >= record["backbone_accuracy"] - 0.02
    else:   # JEI in its test_parameters: far above chance (0.10); a dearer λ never costs less
        assert best >= 0.70 and points[0]["cost"] >= points[1]["cost"]
