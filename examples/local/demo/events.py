"""One JSON line per thing that happened, shared by every part of the demo.

The report and the end-to-end test read this log instead of trusting any part's own summary.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any


class EventLog:
    """Append-only JSONL file; each event has ``t`` (seconds since the run started) and ``kind``."""

    def __init__(self, path: Path, started_at: float | None = None) -> None:
        self.path = path
        self.started_at = time.time() if started_at is None else started_at
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w", encoding="utf-8")

    def emit(self, kind: str, **fields: Any) -> None:
        event = {"t": round(time.time() - self.started_at, 3), "kind": kind, **fields}
        line = json.dumps(event, default=str)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_events(path: Path) -> list[dict[str, Any]]:
    """All events of a run, in order."""
    with path.open(encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
