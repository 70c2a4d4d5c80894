"""AWS calls sized for a 15 s tick: one botocore client configuration and one bounded backoff.

Every boto3 client the scaler creates uses :func:`client_config`: botocore's ``standard`` retry mode
(exponential backoff with jitter; throttling, 5xx, connect and read timeouts retried) bounded to
``MAX_ATTEMPTS`` calls, each with its own connect and read timeout. One AWS call therefore gives
up after at most ``MAX_ATTEMPTS * (CONNECT_TIMEOUT_S + READ_TIMEOUT_S)`` plus about a second of
backoff (~11 s), instead of botocore's defaults (60 s read timeout, legacy retries) that outlast a
tick. Retries the scaler makes itself (DynamoDB's ``UnprocessedKeys``) wait through
:class:`Backoff`, whose sleep and randomness tests inject so they never wait.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from botocore.config import Config

CONNECT_TIMEOUT_S = 2.0
"""A TCP connect to a regional endpoint takes milliseconds; 2 s covers a cold VPC network path."""

READ_TIMEOUT_S = 3.0
"""DynamoDB answers in milliseconds and ECS in well under a second; 3 s means the service is in trouble."""

MAX_ATTEMPTS = 2
"""Calls per request in all (the first and one retry), so a throttled or timed-out call fits a tick."""


def client_config() -> Config:
    """The botocore configuration of every client the scaler creates (ECS, DynamoDB, Secrets Manager)."""
    from botocore.config import Config

    return Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
    )


@dataclass(frozen=True)
class Backoff:
    """Full-jitter exponential backoff over at most ``attempts`` calls.

    The wait before call ``n`` (0-based, ``n >= 1``) is uniform in ``[0, min(cap_s, base_s * 2**(n-1)))``:
    with the defaults at most 0.1 + 0.2 + 0.4 = 0.7 s over four calls.
    """

    attempts: int = 4
    base_s: float = 0.1
    cap_s: float = 1.0
    sleep: Callable[[float], None] = time.sleep
    random: Callable[[], float] = random.random

    def pause(self, attempt: int) -> None:
        """Wait before call number ``attempt`` (1 for the first retry)."""
        self.sleep(self.random() * min(self.cap_s, self.base_s * 2 ** (attempt - 1)))
