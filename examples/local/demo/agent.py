"""A fake ECS agent: the task-protection endpoint each task reaches at ``$ECS_AGENT_URI``.

No emulator implements task protection (it lives in the ECS agent inside each task), so the demo's
runner serves it: one local HTTP server, one path per task (``/api/<task>/task-protection/v1/state``),
with the same request and response shapes as the real agent. The runner asks it whether a task is
protected before stopping it, as ECS does on scale-in.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_EXPIRES_IN_MINUTES = 2880
DEFAULT_EXPIRES_IN_MINUTES = 120
_PATH_SUFFIX = "/task-protection/v1/state"


class FakeEcsAgent:
    """Serves PUT/GET task protection for every task of the demo and remembers when each expires."""

    def __init__(self, on_change: Callable[[str, bool, float | None], None] | None = None) -> None:
        self._expires: dict[str, float] = {}
        self._lock = threading.Lock()
        self._on_change = on_change
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-ecs-agent", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def uri_for(self, task_id: str) -> str:
        """The ``ECS_AGENT_URI`` a task gets (the real one looks like ``http://169.254.170.2/api/<id>``)."""
        return f"http://127.0.0.1:{self.port}/api/{task_id}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def is_protected(self, task_id: str, now: float | None = None) -> bool:
        with self._lock:
            expires = self._expires.get(task_id)
        return expires is not None and expires > (time.time() if now is None else now)

    def _set(self, task_id: str, enabled: bool, minutes: int) -> dict[str, Any]:
        expires = time.time() + minutes * 60 if enabled else None
        with self._lock:
            if expires is None:
                self._expires.pop(task_id, None)
            else:
                self._expires[task_id] = expires
        if self._on_change is not None:
            self._on_change(task_id, enabled, expires)
        return self._state(task_id)

    def _state(self, task_id: str) -> dict[str, Any]:
        with self._lock:
            expires = self._expires.get(task_id)
        enabled = expires is not None and expires > time.time()
        expiration = datetime.fromtimestamp(expires, UTC).isoformat() if enabled and expires else None
        task_arn = f"arn:aws:ecs:us-east-1:123456789012:task/demo/{task_id}"
        return {"protection": {"ProtectionEnabled": enabled, "ExpirationDate": expiration, "TaskArn": task_arn}}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def _task_id(self) -> str | None:
                parts = self.path.split("?")[0]
                if not (parts.startswith("/api/") and parts.endswith(_PATH_SUFFIX)):
                    return None
                return parts[len("/api/") : -len(_PATH_SUFFIX)] or None

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                task_id = self._task_id()
                if task_id is None:
                    self._reply(404, {"error": {"Code": "NotFound"}})
                    return
                self._reply(200, agent._state(task_id))

            def do_PUT(self) -> None:
                task_id = self._task_id()
                if task_id is None:
                    self._reply(404, {"error": {"Code": "NotFound"}})
                    return
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                    enabled = body["ProtectionEnabled"]
                    minutes = int(body.get("ExpiresInMinutes", DEFAULT_EXPIRES_IN_MINUTES))
                    if not isinstance(enabled, bool) or not 1 <= minutes <= MAX_EXPIRES_IN_MINUTES:
                        raise ValueError(body)
                except (ValueError, KeyError, TypeError):
                    self._reply(400, {"error": {"Code": "InvalidParameterException"}})
                    return
                self._reply(200, agent._set(task_id, enabled, minutes))

            def log_message(self, format: str, *args: Any) -> None:  # silence per-request logs
                return

        return Handler
