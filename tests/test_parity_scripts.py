"""The parity scripts (``benchmarks/parity/{boosted,l2w,eenet,jei}.py``) name the repository and
commit they were written against, and refuse a checkout of another commit, a folder that is no
checkout, or no ``--official-dir``, with one line on stderr and exit status 2, before they load
anything. Neither the official code nor the network is needed: the "other commit" is a git
repository made here with one commit."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = {"boosted.py": ("SHI-Labs/Boosted-Dynamic-Networks", "17995bbfaed78594d8c360e7da852aa72d8a7525"),
            "l2w.py": ("LeapLabTHU/L2W-DEN", "c49d5753afaaf8b22f1adcfcae526b13396e6778"),
            "eenet.py": ("git-disl/EENet", "a5e80c8216bfa72c9a888193717c394bd6836638"),
            "jei.py": ("networkslab/dynn", "8dd598d48f50f61fbea584e951db17952f456964")}
SCRIPTS = [ROOT / "benchmarks" / "parity" / name for name in EXPECTED]

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def pinned(script: Path) -> tuple[str, str]:
    """``(REPO, COMMIT)`` as the script declares them (read from its source, not imported)."""
    values = {}
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("REPO", "COMMIT"):
                values[node.targets[0].id] = ast.literal_eval(node.value)
    return values["REPO"], values["COMMIT"]


def run_script(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)


def one_commit_repo(path: Path) -> str:
    """A git repository at ``path`` with one commit; returns its hash."""
    path.mkdir()
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@example.com",
           "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    (path / "README.md").write_text("not the official code\n")
    subprocess.run([*git, "add", "README.md"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "another commit"], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_each_script_names_its_repository_and_commit(script: Path) -> None:
    repo, commit = pinned(script)
    assert (repo, commit) == EXPECTED[script.name]
    doc = ast.get_docstring(ast.parse(script.read_text()))
    assert repo in doc and commit in doc
    help_text = run_script(script, "--help")
    assert help_text.returncode == 0 and repo in help_text.stdout and commit in help_text.stdout
    for option in ("--official-dir", "--dataset", "--backbone", "--seed", "--data-dir", "--weights-dir",
                   "--cache-dir", "--set"):
        assert option in help_text.stdout


@needs_git
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_another_commit_exits_2_naming_both(script: Path, tmp_path: Path) -> None:
    repo, expected = pinned(script)
    found = one_commit_repo(tmp_path / "checkout")
    out = run_script(script, "--official-dir", str(tmp_path / "checkout"))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert expected in lines[0] and found in lines[0] and repo in lines[0]
    assert out.stdout == ""


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_a_folder_that_is_no_checkout_exits_2(script: Path, tmp_path: Path) -> None:
    _, expected = pinned(script)
    out = run_script(script, "--official-dir", str(tmp_path))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "no git checkout" in lines[0]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_no_official_dir_says_what_to_fetch(script: Path) -> None:
    repo, commit = pinned(script)
    out = run_script(script)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"https://github.com/{repo}" in lines[0] and commit in lines[0] and "--official-dir" in lines[0]
