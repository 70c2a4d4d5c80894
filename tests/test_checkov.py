"""checkov finds nothing in the module and its examples; a skip exists only inline, with its reason.

Runs ``make checkov`` (which installs the pinned checkov into its own venv the first time), so the
test and the Makefile scan exactly the same paths with the same flags.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.terraform


def test_checkov_has_no_failed_checks() -> None:
    make = shutil.which("make")
    assert make is not None
    result = subprocess.run(
        [make, "-s", "checkov", "CHECKOV_OUTPUT=json"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert result.stdout.strip(), result.stderr
    reports: Any = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{check['check_id']} {check['resource']} {check['file_path']}:{check['file_line_range'][0]}"
        for report in reports
        for check in report.get("results", {}).get("failed_checks", [])
    ]
    summary = [report["summary"] for report in reports]
    print(f"checkov: {summary}")
    assert not failed, "\n".join(failed)
    assert sum(s["passed"] for s in summary) > 0
