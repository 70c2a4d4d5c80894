"""``simulate``'s table: fits 100 columns, units in the header, aligned decimals, settings stated above it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from celery_autoscaler.cli import main
from celery_autoscaler.sim import BUILTIN


def test_the_table_fits_100_columns_with_units_settings_and_aligned_decimals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "scaler.json"
    pool = {"service": "celery-default", "queues": ["celery"], "max_workers": 40, "scale_in_window_s": 90}
    config.write_text(
        json.dumps({"broker": {"url": "redis://localhost/0"}, "cluster": "c", "pools": {"default": pool}})
    )
    assert main(["simulate", "--trace", "spiky", "--hours", "2", "--compare", "all", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert lines[0].startswith("spiky: ")
    assert "over 2.00 h; slo 60 s" in lines[0]
    assert "pool default: concurrency 2, 0..40 workers, scale-in window 90 s, idle window 120 s" in lines
    assert "per simulated day (this trace x12): worker hours, USD, scaling actions, late min, killed" in lines
    header = lines.index(next(line for line in lines if line.startswith("policy")))
    assert re.split(r"\s{2,}", lines[header].strip())[1:5] == ["p50 s", "p95 s", "p99 s", "backlog"]
    rows = lines[header + 1 :]
    assert [row.split()[0] for row in rows][:2] == ["celery-autoscaler", "aws-target-tracking"]
    assert len(rows) == 8
    # Every cell ends at its column's right edge and the decimal points line up down each column.
    ends = [m.end() for m in re.finditer(r"\S+(?: \S+)*", lines[header])][1:]
    for row in rows:
        cells = list(re.finditer(r"-?\d+(\.\d+)?", row[20:]))
        assert [20 + m.end() for m in cells] == ends, row
    dots = {tuple(i for i, ch in enumerate(row) if ch == ".") for row in rows}
    assert len(dots) == 1, "the same columns have decimals at the same place on every row"


def test_an_unknown_trace_lists_the_built_ins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--trace", "burst"]) == 2
    error = capsys.readouterr().err
    assert "--trace 'burst' is neither a built-in trace (" in error
    assert all(name in error for name in BUILTIN)
