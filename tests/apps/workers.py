"""Start and stop real ``celery worker`` processes (tests/apps/worker_app.py unless told otherwise).

Each worker runs in its own process group, like the processes of one ECS container: SIGTERM goes to
the main process (what ECS sends to PID 1), SIGKILL goes to the whole group (what ECS does after
stopTimeout), and cleanup kills the group so no prefork child outlives a test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent
ROOT = TESTS_DIR.parent


class WorkerProcess:
    """One ``celery worker`` (prefork, no gossip, mingle or heartbeat) whose output goes to ``log_dir``.

    Used as a context manager, it is stopped on exit whatever the test did to it.
    """

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        log_dir: Path,
        concurrency: int = 2,
        *,
        app: str = "apps.worker_app",
        queues: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.hostname = f"{name}@test"
        self.log_path = log_dir / f"{name}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ECS_", "CELERY_", "SAFE_", "REMAP_"))}
        full_env.update(env)
        full_env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(ROOT / "lambda")])
        command = [sys.executable, "-m", "celery", "-A", app, "worker", "-P", "prefork"]
        command += ["-c", str(concurrency), "-n", self.hostname, "-l", "INFO"]
        command += ["-Q", ",".join(queues)] if queues else []
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=TESTS_DIR,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def sigterm(self) -> None:
        """What ECS sends to the container's main process at scale-in."""
        self.proc.send_signal(signal.SIGTERM)

    def sigkill(self) -> None:
        """What ECS does to every process of the container after stopTimeout."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def is_ready(self) -> bool:
        """Celery logs ``<hostname> ready.`` once the consumer is subscribed to its queues."""
        if self.exited():
            raise AssertionError(f"worker {self.hostname} exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
        return f"{self.hostname} ready." in self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Cleanup: warm shutdown with a deadline, then kill whatever is left of the group."""
        if self.proc.poll() is None:
            self.sigterm()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
