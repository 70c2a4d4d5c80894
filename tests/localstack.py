"""Start LocalStack's free edition on the host (no Docker) for the LocalStack test tier, and stop it.

LocalStack needs Python >= 3.12, so it lives in its own venv (``.venv-localstack``), built by
``scripts/localstack-venv.sh`` (also ``make localstack-venv``). It listens on loopback only: the
hypercorn gateway honours ``GATEWAY_LISTEN``, the default server would bind 0.0.0.0. It ignores
SIGTERM while serving, so stopping is SIGTERM, a grace period, then SIGKILL of its process group.
Only STS, Secrets Manager and CloudWatch are used: ECS and DynamoDB are not in the free edition
offline, so they stay on moto.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import requests
from moto_aws import free_port
from waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("LOCALSTACK_VENV", ROOT / ".venv-localstack"))
SERVICES = "sts,secretsmanager,cloudwatch"
NO_PYTHON_EXIT = 3


class NoPythonError(RuntimeError):
    """No Python >= 3.12 on this machine: the LocalStack tier cannot run here."""


def ensure_venv() -> Path:
    """Build the venv unless it is complete; return its python."""
    run = subprocess.run(
        [str(ROOT / "scripts" / "localstack-venv.sh")], capture_output=True, text=True, timeout=900, check=False
    )
    if run.returncode == NO_PYTHON_EXIT:
        raise NoPythonError(run.stderr.strip())
    if run.returncode != 0:
        raise RuntimeError(f"scripts/localstack-venv.sh failed ({run.returncode}): {run.stderr[-2000:]}")
    return VENV / "bin" / "python"


@dataclass
class LocalStack:
    """One running LocalStack; ``endpoint`` is its loopback URL, ``host`` what LOCALSTACK_HOST wants."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"LocalStack exited with {self.process.returncode}: {self.log_tail()}")
        try:
            services = requests.get(f"{self.endpoint}/_localstack/health", timeout=5).json()["services"]
        except (requests.RequestException, ValueError, KeyError):
            return False
        return all(services.get(name) in ("available", "running") for name in SERVICES.split(","))

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM its process group, then SIGKILL after ``grace_s`` (it can hang on SIGTERM); drop its data."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=60)
        shutil.rmtree(self.log_path.parent, ignore_errors=True)


def start(python: Path, timeout_s: float = 180.0) -> LocalStack:
    """Start LocalStack on a free loopback port in a fresh data folder and wait until it is healthy."""
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="localstack-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LOCALSTACK_"))},
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "GATEWAY_SERVER": "hypercorn",
        "LOCALSTACK_HOST": f"127.0.0.1:{port}",
        "SERVICES": SERVICES,
        "DNS_ADDRESS": "0",
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        "DISABLE_EVENTS": "1",
        "PERSISTENCE": "0",
        "FILESYSTEM_ROOT": str(data),
    }
    log_path = data / "localstack.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(python), "-m", "localstack.runtime.main"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=data,
            start_new_session=True,
        )
    stack = LocalStack(process, port, log_path)
    try:
        wait_until(stack.healthy, timeout=timeout_s, interval=0.5, what="LocalStack to report healthy")
    except BaseException:
        stack.stop()
        raise
    return stack
