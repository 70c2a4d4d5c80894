#!/usr/bin/env python3
"""``terraform init`` + ``terraform validate`` in the module and in every directory below it that
holds .tf files (submodules, examples): the pre-commit hook for ``terraform validate``.

Providers come the same way as in ``make`` and the tests (scripts/tf_mirror.py): from the offline
mirror when there is one, else from the registry. Each directory's ``.terraform`` lives under
.tmp/terraform-validate/ (kept, so a second run needs no download), never in the directory itself.

Usage: ``python scripts/tf_validate.py`` (exit 1 when any directory fails, with terraform's output).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tf_mirror import use_mirror

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".tmp" / "terraform-validate"


def module_directories() -> list[Path]:
    """The root and every non-hidden directory below it with a .tf file, sorted."""
    found = {path.parent for path in ROOT.rglob("*.tf")}
    return sorted(d for d in found if not any(part.startswith(".") for part in d.relative_to(ROOT).parts))


def validate(directory: Path, environ: dict[str, str]) -> str | None:
    """None when the directory initialises and validates; else terraform's output."""
    name = directory.relative_to(ROOT).as_posix()
    env = {**environ, "TF_DATA_DIR": str(WORK / name.replace("/", "__"))}
    for command in (["init", "-backend=false", "-input=false", "-no-color"], ["validate", "-no-color"]):
        result = subprocess.run(
            ["terraform", *command], cwd=directory, env=env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            return f"{name}: terraform {command[0]} failed\n{result.stdout}{result.stderr}"
    return None


def main() -> int:
    environ = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1", "TF_INPUT": "0"}
    use_mirror(ROOT / ".tmp" / "terraform-mirror.tfrc", environ)
    failures = [failure for d in module_directories() if (failure := validate(d, environ))]
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
