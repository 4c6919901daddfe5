"""The break-it battery (issue "Reliability"): every bad input and fault gets one clean line with the
right status, before any work where the input alone decides, and no stale or half-trusted result
survives. Real runs on digits (and CIFAR-10's mirror for the schema case)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from conftest import DATA_DIR, WEIGHTS_DIR, check_record, needs_shared, read_record

EEBENCH = Path(sys.executable).parent / "eebench"


def _sigint_as_at_a_terminal() -> None:
    """In the child before exec: SIGINT back to its default. A job a non-interactive shell starts in
    the background (``cmd &``, as a CI script may start the suite) inherits SIGINT ignored, and Python
    then installs no KeyboardInterrupt handler: ``kill -INT`` would do nothing. A user's Ctrl-C reaches
    a process whose SIGINT is not ignored, which is what these tests check."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("sets, words", [
    (["method.lr=-1"], ["method.lr=-1.0", "must be in (0, inf)"]),
    (["im.batch_size=0"], ["im.batch_size=0", "must be in [1, inf)"]),
    (["method.im_loss=bogus"], ["method.im_loss='bogus'", "must be one of weighted, uniform"]),
    (["method.epochs=0"], ["method.epochs=0", "must be in [1, inf)"]),
    (["method.lambdas=[]"], ["method.lambdas=[]", "a list of at least 1 value"]),
    (["dataset.policy_fraction=1"], ["dataset.policy_fraction=1.0", "[0, 1)"]),
    (["recipe.lr=0.1"], ["recipe.* applies to trained weights only"]),
])
def test_bad_parameters_stop_before_anything_runs(cli, tmp_path, sets, words):
    args = ["run", "--method", "jei", "--dataset", "cifar10", "--out", tmp_path / "out"]   # cifar10: published weights
    for s in sets:
        args += ["--set", s]
    t0 = time.perf_counter()
    status, _, err = cli(*args)
    line = _one_line(err)
    assert status == 2 and time.perf_counter() - t0 < 10
    for w in words:
        assert w in line
    assert "features:" not in err and not (tmp_path / "out").exists()     # nothing was loaded or written


def test_negative_seed(cli, tmp_path):
    status, _, err = cli("run", "--method", "threshold", "--seed", "-1", "--out", tmp_path)
    assert status == 2 and "seed=-1: expected an integer >= 0" in _one_line(err)


def test_outputs_are_checked_first(cli, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    status, _, err = cli("run", "--method", "threshold", "--out", afile)
    assert status == 2 and "is a file, not a folder" in _one_line(err)
    status, _, err = cli("run", "--method", "threshold", "--cache-dir", afile, "--out", tmp_path / "o")
    assert status == 2 and "cache folder" in _one_line(err) and "is a file" in _one_line(err)
    status, _, err = cli("report", tmp_path, "--out", afile)
    assert status == 2 and "is a file" in _one_line(err)
    if os.geteuid() != 0:                                      # root writes through permissions
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        status, _, err = cli("run", "--method", "threshold", "--out", ro / "x")
        assert status == 2 and "not writable" in _one_line(err)


@needs_shared
def test_schema_error_names_expected_and_found_columns(cli, tmp_path):
    """MNIST's parquet files where the CIFAR-10 mirror is expected."""
    (tmp_path / "cifar10").mkdir()
    for s in ("train", "test"):
        (tmp_path / "cifar10" / f"{s}.parquet").symlink_to(DATA_DIR / "mnist" / f"{s}.parquet")
    status, _, err = cli("run", "--method", "threshold", "--dataset", "cifar10", "--data-dir", tmp_path,
                         "--weights-dir", WEIGHTS_DIR, "--out", tmp_path / "out")
    line = _one_line(err)
    assert status == 2 and "has columns ['image', 'label'], expected 'img' (input) and 'label'" in line
    assert not (tmp_path / "out").exists()


def test_flag_that_does_not_apply_is_said(cli, tmp_path):
    status, _, err = cli("run", "--method", "threshold", "--data-dir", "/nonexistent", "--out", tmp_path)
    assert status == 0
    assert [ln for ln in err.splitlines() if "--data-dir" in ln] == \
        ["--data-dir does not apply to digits (it is bundled with a dependency): ignored"]


def test_list_reads_the_adapters(cli):
    status, out, _ = cli("list", "backbones")
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("cifar_resnet56"))
    assert status == 0 and "; 9 exits: after residual blocks 3, 6, 9" in line and "27 exits" not in line
    assert "published cifar10 checkpoint cifar10_resnet56-4bfd9763.th" in line


@contextmanager
def _flipped(path: Path, n: int = 200) -> Iterator[None]:
    """``path`` with n bytes inverted inside its last tensor (past the header), restored afterwards."""
    backup = path.read_bytes()
    data = bytearray(backup)
    for i in range(len(data) - 4 * n, len(data) - 3 * n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    try:
        yield
    finally:
        path.write_bytes(backup)


def test_flipped_bytes_in_the_feature_cache_are_caught(cli, tmp_path, session_cache):
    assert cli("run", "--method", "threshold", "--out", tmp_path / "a")[0] == 0
    entry = session_cache / "features" / read_record(tmp_path / "a")["features"]["key"]
    with _flipped(entry / "train-00000.safetensors"):
        status, _, err = cli("run", "--method", "threshold", "--out", tmp_path / "b")
    line = _one_line(err)
    assert status == 1 and "does not match its content hash" in line and f"rm -rf {entry}" in line
    assert "train-00000.safetensors" in line
    assert not (tmp_path / "b").exists()


def test_flipped_bytes_in_a_trained_checkpoint_are_caught(cli, tmp_path, session_cache):
    other = ["--set", "recipe.epochs=3"]     # not the shipped recipe: trained here on first use
    assert cli("run", "--method", "threshold", *other, "--out", tmp_path / "a")[0] == 0
    record = read_record(tmp_path / "a")
    ckpt = Path(record["backbone"]["weights"]["source"].removeprefix("trained here: ").split("; recipe")[0].split(" (")[0])
    with _flipped(ckpt):   # the checkpoint is loaded (and checked) before the feature cache is read
        status, _, err = cli("run", "--method", "eenet", *other, "--out", tmp_path / "b")
    line = _one_line(err)
    assert status == 1 and "does not match its content hash" in line and f"rm -r {ckpt.parent}" in line
    assert not (tmp_path / "b").exists()


def test_shipped_weights_that_fail_their_sha256_stop_the_run(cli, tmp_path, monkeypatch):
    """The digits ViT ships with the package; a changed file is named, status 1, never retrained."""
    from eebench import backbones

    shipped = backbones.BACKBONES.get("vit_digits").shipped["digits"]
    copy = tmp_path / "weights"
    copy.mkdir()
    (copy / shipped.file).write_bytes(shipped.path.read_bytes())
    monkeypatch.setattr(backbones, "SHIPPED_DIR", copy)
    with _flipped(copy / shipped.file):
        status, _, err = cli("run", "--method", "threshold", "--out", tmp_path / "out")
    line = _one_line(err)
    assert status == 1 and f"shipped weights {copy / shipped.file} do not match their sha256" in line
    assert not (tmp_path / "out").exists()
    (copy / shipped.file).unlink()
    status, _, err = cli("run", "--method", "threshold", "--out", tmp_path / "out")
    assert status == 1 and "are missing" in _one_line(err)


def test_another_recipe_is_another_checkpoint_and_another_run(cli, tmp_path, session_cache):
    status, out, err = cli("backbone", "train", "--backbone", "vit_digits", "--dataset", "digits",
                           "--set", "epochs=3")
    assert status == 0, err
    trained = Path(out.strip().rsplit("; ", 1)[1])
    assert cli("run", "--method", "threshold", "--out", tmp_path)[0] == 0
    default = read_record(tmp_path)
    status, _, err = cli("run", "--method", "threshold", "--set", "recipe.epochs=3", "--out", tmp_path)
    assert status == 0, err
    records = {r["config"]["recipe"]["epochs"]: r for r in
               (json.loads(p.read_text()) for p in tmp_path.glob("*/record.json"))}
    assert set(records) == {100, 3}
    assert records[3]["run_id"] != default["run_id"]
    assert records[3]["backbone"]["weights"]["sha256"] != default["backbone"]["weights"]["sha256"]
    assert records[3]["backbone"]["weights"]["source"].startswith(f"trained here: {trained}")
    # a sweep of the default recipe finds its own record only
    grid = tmp_path / "g.yaml"
    grid.write_text("datasets: [digits]\nseeds: [0]\nmethods: [threshold]\n")
    status, stdout, _ = cli("sweep", grid, "--launcher", "inline", "--out", tmp_path)
    assert status == 0 and "1 runs: 1 already recorded, 0 finished now" in stdout


@pytest.mark.slow
@pytest.mark.parametrize("sig, status, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_interrupt_exits_cleanly_and_fast(tmp_path, session_cache, sig, status, word):
    """A signal during a fit: the status, one line, no traceback, promptly (the fit would take minutes;
    10 s leaves room for a loaded machine: 2 s failed once at 2.01 s beside another job), nothing left
    behind."""
    env = {**os.environ, "EEBENCH_CACHE_DIR": str(session_cache), "TQDM_DISABLE": "1"}
    subprocess.run([str(EEBENCH), "run", "--method", "threshold", "--out", str(tmp_path / "warm")], env=env,
                   capture_output=True, timeout=600, check=True)                    # the ViT and the features
    proc = subprocess.Popen([str(EEBENCH), "run", "--method", "l2w", "--set", "im.epochs=200", "--set",
                             "method.batch_size=16", "--out", str(tmp_path / "out")], env=env,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_as_at_a_terminal)
    time.sleep(8)                                                                    # well inside the fit
    assert proc.poll() is None
    t0 = time.perf_counter()
    proc.send_signal(sig)
    err = proc.communicate(timeout=30)[1]
    assert time.perf_counter() - t0 < 10.0
    assert proc.returncode == status and "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"{word}; nothing written"
    assert not (tmp_path / "out").exists()
    leftovers = [p for p in session_cache.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp")]
    assert not leftovers


@pytest.mark.slow
def test_interrupted_inline_sweep_keeps_finished_records_and_says_how_to_resume(tmp_path, session_cache):
    env = {**os.environ, "EEBENCH_CACHE_DIR": str(session_cache), "TQDM_DISABLE": "1"}
    out, grid = tmp_path / "out", tmp_path / "g.yaml"
    grid.write_text("datasets: [digits]\nseeds: [0]\nim_params: {epochs: 200}\n"
                    "methods:\n  threshold: {}\n  l2w: {batch_size: 16}\n")          # a quick run, then a long one
    proc = subprocess.Popen([str(EEBENCH), "sweep", str(grid), "--launcher", "inline", "--out", str(out)], env=env,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_as_at_a_terminal)
    end = time.monotonic() + 300
    while not list(out.glob("*/record.json")):                   # interrupt once a run has finished
        assert proc.poll() is None and time.monotonic() < end
        time.sleep(0.2)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=30)[1]
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted: finished runs keep their records")
    records = [json.loads(p.read_text()) for p in out.glob("*/record.json")]
    assert [r["config"]["method"] for r in records] == ["threshold"]       # the interrupted l2w wrote nothing
    check_record(records[0])
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp")]
