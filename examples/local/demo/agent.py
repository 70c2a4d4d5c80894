"""A fake ECS agent: the task-protection endpoint each task reaches at ``$ECS_AGENT_URI``.

No emulator implements task protection (it lives in the ECS agent inside each task), so the demo's
runner serves it: one local HTTP server, one path per task (``/api/<task>/task-protection/v1/state``),
with the same request and response shapes as the real agent. The runner asks it whether a task is
protected before stopping it, as ECS does on scale-in. The worker helper's tests use it too: it
records every request in order, and ``mode`` makes it misbehave the way a real agent can
(``"error"`` answers 500, ``"hang"`` does not answer before the caller's timeout).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

PROTECTION_PATH = "/task-protection/v1/state"
MAX_EXPIRES_IN_MINUTES = 2880
DEFAULT_EXPIRES_IN_MINUTES = 120
HANG_S = 30.0
Mode = Literal["ok", "error", "hang"]


@dataclass(frozen=True)
class AgentRequest:
    method: str
    task_id: str | None  # None when the path is not a task's protection endpoint
    body: dict[str, Any] | None


class FakeEcsAgent:
    """Serves PUT/GET task protection for any number of tasks and remembers when each expires."""

    def __init__(self, on_change: Callable[[str, bool, float | None], None] | None = None, mode: Mode = "ok") -> None:
        self.mode = mode
        self.requests: list[AgentRequest] = []
        self._expires: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
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
        self._stopping.set()  # frees handlers held in "hang"
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeEcsAgent:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def is_protected(self, task_id: str, now: float | None = None) -> bool:
        with self._lock:
            expires = self._expires.get(task_id)
        return expires is not None and expires > (time.time() if now is None else now)

    def puts(self) -> list[dict[str, Any]]:
        """Bodies of the PUT requests so far, oldest first."""
        with self._lock:
            return [r.body or {} for r in self.requests if r.method == "PUT"]

    def enabled_flags(self) -> list[bool]:
        return [bool(body.get("ProtectionEnabled")) for body in self.puts()]

    def state(self, task_id: str) -> dict[str, Any]:
        """The agent's answer to GET for one task."""
        with self._lock:
            expires = self._expires.get(task_id)
        enabled = expires is not None and expires > time.time()
        expiration = datetime.fromtimestamp(expires, UTC).isoformat() if enabled and expires else None
        task_arn = f"arn:aws:ecs:us-east-1:123456789012:task/demo/{task_id}"
        return {"protection": {"ProtectionEnabled": enabled, "ExpirationDate": expiration, "TaskArn": task_arn}}

    def _set(self, task_id: str, enabled: bool, minutes: int) -> dict[str, Any]:
        expires = time.time() + minutes * 60 if enabled else None
        with self._lock:
            if expires is None:
                self._expires.pop(task_id, None)
            else:
                self._expires[task_id] = expires
        if self._on_change is not None:
            self._on_change(task_id, enabled, expires)
        return self.state(task_id)

    def _answer(self, method: str, task_id: str | None, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        """Record the request, then answer it as the agent would (or misbehave, per ``mode``)."""
        with self._lock:
            self.requests.append(AgentRequest(method, task_id, body))
            mode = self.mode
        if mode == "hang":
            self._stopping.wait(HANG_S)
        if mode != "ok":
            return 500, {"error": {"Code": "ServerException", "Message": "fake agent failure"}}
        if task_id is None:
            return 404, {"error": {"Code": "NotFound"}}
        if method == "GET":
            return 200, self.state(task_id)
        enabled = (body or {}).get("ProtectionEnabled")
        minutes = (body or {}).get("ExpiresInMinutes", DEFAULT_EXPIRES_IN_MINUTES)
        if not isinstance(enabled, bool) or not isinstance(minutes, int) or not 1 <= minutes <= MAX_EXPIRES_IN_MINUTES:
            return 400, {"error": {"Code": "InvalidParameterException", "Message": str(body)}}
        return 200, self._set(task_id, enabled, minutes)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def _task_id(self) -> str | None:
                path = self.path.split("?")[0]
                if not (path.startswith("/api/") and path.endswith(PROTECTION_PATH)):
                    return None
                return path[len("/api/") : -len(PROTECTION_PATH)] or None

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the caller gave up (its timeout): what "hang" is for
                    pass

            def do_GET(self) -> None:
                self._reply(*agent._answer("GET", self._task_id(), None))

            def do_PUT(self) -> None:
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                except ValueError:
                    body = None  # answered 400: no ProtectionEnabled
                self._reply(*agent._answer("PUT", self._task_id(), body if isinstance(body, dict) else None))

            def log_message(self, format: str, *args: Any) -> None:  # silence per-request logs
                return

        return Handler
