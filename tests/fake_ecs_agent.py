"""A local stand-in for the ECS container agent's task scale-in protection endpoint.

Implements ``PUT``/``GET /task-protection/v1/state`` with the real agent's answer shapes and records
every request with its time, so tests can see what a worker asked for and in which order. ``mode``
makes it misbehave the way a real agent can: ``"error"`` answers 500, ``"hang"`` never answers in time.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

PATH = "/task-protection/v1/state"
TASK_ARN = "arn:aws:ecs:eu-west-1:123456789012:task/test-cluster/0123456789abcdef0123456789abcdef"
Mode = Literal["ok", "error", "hang"]


@dataclass(frozen=True)
class AgentRequest:
    at: float  # time.time() when it arrived
    method: str
    path: str
    body: dict[str, Any] | None


@dataclass
class FakeEcsAgent:
    mode: Mode = "ok"
    requests: list[AgentRequest] = field(default_factory=list)
    protection_enabled: bool = False
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def uri(self) -> str:
        """What ECS puts in ``ECS_AGENT_URI``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeEcsAgent:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopping.set()  # frees handlers stuck in "hang"
        self._server.shutdown()
        self._server.server_close()

    def puts(self) -> list[dict[str, Any]]:
        """Bodies of the PUT requests so far, oldest first."""
        with self._lock:
            return [r.body or {} for r in self.requests if r.method == "PUT"]

    def enabled_flags(self) -> list[bool]:
        return [bool(body.get("ProtectionEnabled")) for body in self.puts()]

    def state(self) -> dict[str, Any]:
        if self.expires_at is not None and datetime.now(UTC) >= self.expires_at:
            self.protection_enabled, self.expires_at = False, None
        expiration = self.expires_at.isoformat().replace("+00:00", "Z") if self.expires_at else None
        return {
            "protection": {
                "ExpirationDate": expiration,
                "ProtectionEnabled": self.protection_enabled,
                "TaskArn": TASK_ARN,
            }
        }

    def handle(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(AgentRequest(time.time(), method, path, body))
            mode = self.mode
        if mode == "hang":
            self._stopping.wait(30)
        if mode != "ok":
            return 500, {"error": {"Arn": TASK_ARN, "Code": "ServerException", "Message": "fake agent failure"}}
        if path != PATH:
            return 404, {"error": {"Code": "NotFound", "Message": path}}
        with self._lock:
            if method == "GET":
                return 200, self.state()
            enabled = (body or {}).get("ProtectionEnabled")
            minutes = (body or {}).get("ExpiresInMinutes", 120)
            if not isinstance(enabled, bool) or not isinstance(minutes, int) or not 1 <= minutes <= 2880:
                return 400, {"error": {"Arn": TASK_ARN, "Code": "InvalidParameterException", "Message": str(body)}}
            self.protection_enabled = enabled
            self.expires_at = datetime.now(UTC) + timedelta(minutes=minutes) if enabled else None
            return 200, self.state()


def _handler_for(agent: FakeEcsAgent) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(*agent.handle("GET", self.path, None))

        def do_PUT(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                body = {"unparsable": True}
            self._answer(*agent.handle("PUT", self.path, body))

        def _answer(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up (timeout): that is the point of "hang"
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
