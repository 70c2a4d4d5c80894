"""Broker probes: read every configured queue's load in one round trip."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from celery_autoscaler.measurements import BrokerMeasurements


class BrokerUnavailableError(Exception):
    """The broker could not be read this tick; the policy holds instead of scaling in."""


class Probe(Protocol):
    """Anything that can measure queues (Redis now; another broker would be another probe)."""

    def measure(self, queues: Sequence[str]) -> BrokerMeasurements:
        """Measure ``queues`` now; raise :class:`BrokerUnavailableError` when the broker cannot be read."""
        ...
