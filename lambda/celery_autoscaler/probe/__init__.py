"""Broker probes: read every configured queue's load in one round trip; one factory picks the probe.

What a broker fault means, the same for every probe:

- **The broker as a whole is unreadable** (refused, timeout, authentication failure, connection lost,
  the round trip could not run, or a broker-wide read such as Redis's ``unacked`` hash failed): the
  probe raises :class:`BrokerUnavailableError`, no pool gets a load and every pool holds.
- **One queue is unreadable** (the broker answered, but refused or failed the reads of that queue's
  keys, e.g. Redis ``WRONGTYPE`` or an ACL ``NOPERM``): the probe still returns, with
  :attr:`QueueMeasurement.error <celery_autoscaler.measurements.QueueMeasurement.error>` set for that
  queue only; its pool holds and every other pool decides normally.

Adding a broker is a new ``probe/<broker>.py``, one entry in :data:`PROBES` and its docs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from celery_autoscaler.config import BrokerConfig, ConfigError, parse_broker_url
from celery_autoscaler.measurements import BrokerMeasurements

MAX_CLOCK_SKEW_S = 300.0
"""A publish time at most this far in the future is taken as now (producers' clocks differ a little)."""
MAX_PLAUSIBLE_AGE_S = 30 * 86_400.0
"""A publish time older than this is not believed (a zero or garbage stamp); the age is then unknown."""


class BrokerUnavailableError(Exception):
    """The broker as a whole could not be read this tick; every pool holds instead of scaling."""


class Probe(Protocol):
    """Anything that can measure queues on one broker."""

    def measure(self, queues: Sequence[str]) -> BrokerMeasurements:
        """Measure ``queues`` now; raise :class:`BrokerUnavailableError` when the broker cannot be read."""
        ...

    def close(self) -> None:
        """Release the broker connection (the next ``measure`` opens a new one)."""
        ...


def _redis_probe(broker: BrokerConfig, url: str) -> Probe:
    from celery_autoscaler.probe.redis import RedisProbe  # imported here: probe.redis imports this module

    return RedisProbe.from_config(broker, url)


def _sqs_probe(broker: BrokerConfig, url: str) -> Probe:
    from celery_autoscaler.probe.sqs import SqsProbe

    return SqsProbe.from_config(broker, url)


def _rabbitmq_probe(broker: BrokerConfig, url: str) -> Probe:
    from celery_autoscaler.probe.rabbitmq import RabbitMQProbe

    return RabbitMQProbe.from_config(broker, url)


PROBES: dict[str, Callable[[BrokerConfig, str], Probe]] = {
    "redis": _redis_probe,
    "rediss": _redis_probe,
    "sqs": _sqs_probe,
    "amqp": _rabbitmq_probe,
    "amqps": _rabbitmq_probe,
}
"""URL scheme -> the probe for that broker (built from the broker config and the URL)."""


def probe_for(broker: BrokerConfig, url: str, *, field: str = "broker.url") -> Probe:
    """The probe for ``url``'s scheme. ``field`` names where the URL came from; the URL is never echoed."""
    scheme = parse_broker_url(url, field).scheme
    make = PROBES.get(scheme)
    if make is None:
        known = ", ".join(f"{s}://" for s in sorted(PROBES))
        raise ConfigError(field, f"unsupported scheme {scheme + '://' if scheme else '(none)'} (supported: {known})")
    try:
        return make(broker, url)
    except ConfigError:  # the probe named the field itself
        raise
    except ValueError:  # the URL itself is malformed (a bad port, ...)
        raise ConfigError(field, "cannot be parsed as a broker URL (not shown: it may hold a password)") from None
