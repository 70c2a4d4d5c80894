"""``pre-commit run --all-files`` passes on the tree, and a hook really rewrites a file it should.

It runs in a copy of the tracked files as they are in the working tree (edits included; like
``pre-commit run --all-files``, untracked files are left out), staged in a git repository of their
own that uses this virtualenv, so the hooks that format can never touch the developer's files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = [pytest.mark.terraform, pytest.mark.timeout(600)]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tree's tracked files, as they are now, staged in a fresh repository."""
    dest = tmp_path_factory.mktemp("checkout")
    for name in git(ROOT, "ls-files", "-z").split("\0"):
        source = ROOT / name
        if name and source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git(dest, "init", "--quiet")
    (dest / ".git" / "info" / "exclude").write_text(".venv\n")
    (dest / ".venv").symlink_to(ROOT / ".venv")
    git(dest, "add", "--all")
    return dest


def pre_commit(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PRE_COMMIT_HOME": str(checkout.parent / "pre-commit-home"), "NO_COLOR": "1"}
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "pre-commit"), "run", "--all-files", "--color=never", *args],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )


def test_every_hook_passes_on_the_tree(checkout: Path) -> None:
    result = pre_commit(checkout)
    assert result.returncode == 0, result.stdout + result.stderr
    hooks = [line.split("...")[0] for line in result.stdout.splitlines() if line.endswith("Passed")]
    assert len(hooks) == 6, result.stdout
    print("\n".join(hooks))


def test_terraform_fmt_hook_rewrites_a_misformatted_file(checkout: Path) -> None:
    versions = checkout / "versions.tf"
    formatted = versions.read_text()
    versions.write_text(formatted.replace("required_version = ", "required_version    =  "))
    git(checkout, "add", "versions.tf")
    result = pre_commit(checkout, "terraform-fmt")
    assert result.returncode == 1, result.stdout
    assert "files were modified by this hook" in result.stdout
    assert versions.read_text() == formatted
