"""Every bad-input case gets exit status 2 (1 for a failed run) and a one-line message that says
what to do; a failed run writes no record."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA_DIR, needs_shared, read_record


def _one_line_error(err: str) -> str:
    lines = [l for l in err.strip().splitlines() if l.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("flag, bad, good", [
    ("--method", "jeii", "jei"),
    ("--dataset", "cifar01", "cifar10"),
    ("--backbone", "cifar_resnet57", "cifar_resnet56"),
])
def test_unknown_names(cli, tmp_path, flag, bad, good):
    args = ["run", "--method", "jei", "--out", tmp_path]
    if flag == "--method":
        args[2] = bad
    else:
        args += [flag, bad]
    status, _, err = cli(*args)
    line = _one_line_error(err)
    assert status == 2
    assert f"'{bad}'" in line and f"did you mean '{good}'" in line and "valid:" in line
    assert not list(tmp_path.iterdir())


def test_list_names_everything(cli):
    status, out, _ = cli("list")
    assert status == 0
    for name in ("jei", "threshold", "digits", "cifar10", "mnist", "cifar_resnet56", "vit_digits"):
        assert name in out


@pytest.mark.parametrize("option, words", [
    ("lr", ["malformed --set 'lr'", "KEY=VALUE"]),
    ("method.lamdas=[0.1]", ["method.lamdas", "did you mean 'lambdas'"]),
    ("method.lr=fast", ["method.lr='fast'", "expected float"]),
    ("method.epochs=[1, 2", ["method.epochs", "not valid YAML"]),
    ("sede=1", ["--set sede", "did you mean 'seed'"]),
    ("dataset.val_fraction=1.5", ["dataset.val_fraction=1.5", "[0, 1)"]),
])
def test_malformed_set(cli, tmp_path, option, words):
    status, _, err = cli("run", "--method", "jei", "--set", option, "--out", tmp_path)
    line = _one_line_error(err)
    assert status == 2
    for w in words:
        assert w in line


@pytest.mark.parametrize("text, words", [
    ("method: jei\n  dataset: [digits\n", ["malformed YAML", "line 2"]),
    ("method: jei\nmethod_parms: {lr: 0.1}\n", ["unknown key 'method_parms'", "did you mean 'method_params'"]),
    ("- jei\n", ["must be a mapping"]),
    ("method: jei\nmethod_params: {im_loss: 3}\n", ["method.im_loss=3", "expected str"]),
])
def test_malformed_yaml(cli, tmp_path, text, words):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    status, _, err = cli("run", "--config", path, "--out", tmp_path / "out")
    line = _one_line_error(err)
    assert status == 2
    for w in words:
        assert w in line
    assert not (tmp_path / "out").exists()


def test_offline_hub_says_how_to_get_data(tmp_path):
    """Through the installed console script, with HF_HUB_OFFLINE=1 and no mirror."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("EEBENCH_DATA_DIR", None)
    exe = Path(sys.executable).parent / "eebench"
    res = subprocess.run([str(exe), "run", "--method", "jei", "--dataset", "cifar10", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=300)
    line = _one_line_error(res.stderr)
    assert res.returncode == 2
    assert "uoft-cs/cifar10" in line and "--data-dir" in line and "unset HF_HUB_OFFLINE" in line
    assert not (tmp_path / "out").exists()


def test_missing_mirror(cli, tmp_path):
    status, _, err = cli("run", "--method", "jei", "--dataset", "cifar10", "--data-dir", tmp_path, "--out", tmp_path / "o")
    line = _one_line_error(err)
    assert status == 2 and f"{tmp_path}/cifar10/train.parquet" in line and "--data-dir" in line


@needs_shared
def test_missing_weights_file(cli, tmp_path):
    status, _, err = cli("run", "--method", "threshold", "--dataset", "cifar10", "--data-dir", DATA_DIR,
                         "--weights-dir", tmp_path, "--out", tmp_path / "o")
    line = _one_line_error(err)
    assert status == 2 and "cifar10_resnet56-4bfd9763.th" in line and "--weights-dir" in line


def test_nan_loss_stops_without_record(cli, tmp_path):
    status, _, err = cli("run", "--method", "threshold", "--set", "im.lr=1e30", "--out", tmp_path)
    line = _one_line_error(err)
    assert status == 1
    assert "training loss is nan" in line or "training loss is inf" in line
    assert "im.lr" in line and "no record was written" in line
    assert not list(tmp_path.glob("*/record.json"))


def test_corrupt_feature_cache(cli, tmp_path, session_cache):
    status, _, _ = cli("run", "--method", "threshold", "--set", "im.epochs=1", "--out", tmp_path / "a")
    assert status == 0
    entry = session_cache / "features" / read_record(tmp_path / "a")["features"]["key"]
    shard = entry / "val-00000.safetensors"
    backup = shard.read_bytes()
    try:
        shard.write_bytes(backup[: len(backup) // 3])   # truncated file
        status, _, err = cli("run", "--method", "threshold", "--set", "im.epochs=1", "--out", tmp_path / "b")
        line = _one_line_error(err)
        assert status == 1 and "unreadable" in line and f"rm -rf {entry}" in line and shard.name in line
        assert not (tmp_path / "b").exists()
    finally:
        shard.write_bytes(backup)
