"""Measure Celery queues on Amazon SQS.

Celery's SQS transport keeps each Celery queue in one SQS queue, named by kombu's rule
(:func:`sqs_queue_name`: the ``queue_name_prefix`` transport option, then ``.`` -> ``-`` and other
punctuation but ``-`` and ``_`` -> ``_``). Each tick reads ``GetQueueAttributes`` of every queue,
concurrently (SQS has no batched form), with each queue's URL resolved once by ``GetQueueUrl`` and
cached (resolved again when SQS says the queue does not exist):

- waiting = ``ApproximateNumberOfMessages`` (visible),
- in flight (``unacked``) = ``ApproximateNumberOfMessagesNotVisible`` (received, not yet deleted:
  reserved, running, and the ETA/countdown tasks a worker holds until they are due),
- scheduled = ``ApproximateNumberOfMessagesDelayed`` (sent with a delay, not visible yet).

SQS counts are approximate: eventually consistent, typically right within a minute. The age of the
oldest message is not an SQS attribute: it is CloudWatch's ``ApproximateAgeOfOldestMessage`` (a
1-minute metric that SQS publishes with a delay, covering in-flight messages too), read for every
queue with messages waiting in one ``GetMetricData`` call at most once per :data:`AGE_REFRESH_S`
and carried forward in between: it lags by a minute or more, and is unknown when no datapoint is
younger than :data:`AGE_LOOKBACK_S`.

Faults: a queue that does not exist (``declared = False``), or whose reads SQS refuses or throttles
(after the client's bounded retries), is unreadable alone; SQS unreachable, a timeout or credentials
SQS rejects make the broker unavailable. A failed CloudWatch read only keeps the previous ages.
"""

from __future__ import annotations

import logging
import string
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from celery_autoscaler.config import BrokerConfig
from celery_autoscaler.measurements import BrokerMeasurements, QueueMeasurement
from celery_autoscaler.probe import BrokerUnavailableError

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import GetQueueAttributesResultTypeDef

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
"""kombu's region when neither the transport options nor the environment name one."""
MAX_NAME_LENGTH = 80
"""SQS refuses longer queue names (``.fifo`` included)."""
WAITING: Final = "ApproximateNumberOfMessages"
IN_FLIGHT: Final = "ApproximateNumberOfMessagesNotVisible"
DELAYED: Final = "ApproximateNumberOfMessagesDelayed"
AGE_METRIC = "ApproximateAgeOfOldestMessage"
AGE_REFRESH_S = 60.0
"""CloudWatch has one datapoint a minute: reading the age more often only costs more."""
AGE_LOOKBACK_S = 300.0
"""The newest datapoint must be younger than this to give an age (SQS publishes with a delay)."""
MAX_CONCURRENT_READS = 32
"""Parallel ``GetQueueAttributes`` calls (and HTTP connections) of one probe."""
_QUERIES_PER_CALL = 500  # GetMetricData's limit of metric queries per request
_MISSING = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
_REJECTED_CREDENTIALS = frozenset(
    {
        "ExpiredToken",
        "IncompleteSignature",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "InvalidSecurity",
        "MissingAuthenticationToken",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
    }
)
"""Errors about the caller, not the queue: no queue can be read with these credentials."""

# kombu.transport.SQS.CHARS_REPLACE_TABLE: '.' -> '-', punctuation other than '-' and '_' -> '_'.
_NAME_TABLE = {ord(c): "_" for c in string.punctuation if c not in "-_."}
_NAME_TABLE[ord(".")] = "-"


def sqs_queue_name(queue: str, prefix: str = "") -> str:
    """The SQS queue kombu uses for Celery queue ``queue`` (``Channel.canonical_queue_name``)."""
    name = prefix + queue
    if name.endswith(".fifo"):
        return name[: -len(".fifo")].translate(_NAME_TABLE) + ".fifo"
    return name.translate(_NAME_TABLE)


@dataclass(frozen=True)
class SqsEndpoint:
    """Where the queues are, from kombu's URL form ``sqs://[KEY:SECRET@][HOST[:PORT]]``.

    Without a key, boto3's default chain (the Lambda's or task's role) signs the calls. A host is
    for emulators and private endpoints; kombu then talks plain ``http://HOST[:PORT]`` (its
    ``is_secure`` option unset), and so does the probe, so both reach the same queues.
    """

    region: str | None
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None

    @classmethod
    def parse(cls, url: str, region: str | None) -> SqsEndpoint:
        parts = urlsplit(url)
        if parts.scheme.lower() != "sqs":
            raise ValueError("not an sqs:// URL")
        host, port = parts.hostname, parts.port  # .port raises ValueError for a bad port
        endpoint = f"http://{host}{f':{port}' if port else ''}" if host else None
        key = unquote(parts.username) if parts.username else None
        secret = unquote(parts.password) if parts.password else None
        return cls(region=region, endpoint_url=endpoint, access_key_id=key, secret_access_key=secret)


@dataclass(frozen=True)
class _Read:
    """One queue's ``GetQueueAttributes`` outcome: counts, or why not."""

    counts: tuple[int, int, int] | None = None
    error: str | None = None
    missing: bool = False
    unavailable: str | None = None


def _code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "error")


class SqsProbe:
    """Reads waiting, in-flight, delayed and (lagging) age of Celery queues on SQS; see the module docstring.

    The SQS and CloudWatch clients are created on first use (bounded retries, the broker's socket
    timeout) or injected; ``clock`` (epoch seconds) is injectable so tests control time.
    """

    def __init__(
        self,
        settings: BrokerConfig,
        *,
        url: str | None = None,
        sqs: SQSClient | None = None,
        cloudwatch: CloudWatchClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        url = url if url is not None else settings.url
        if url is None and sqs is None:
            raise ValueError("give an sqs:// url or an SQS client")
        self._settings = settings
        self._endpoint = SqsEndpoint.parse(url or "sqs://", settings.region)
        self._sqs = sqs
        self._cloudwatch = cloudwatch
        self._clock = clock
        self._session: boto3.session.Session | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._urls: dict[str, str] = {}  # SQS queue name -> queue URL
        self._ages: dict[str, tuple[float, float]] = {}  # SQS queue name -> (age s, datapoint epoch s)
        self._ages_read_at: float | None = None
        self._warned: dict[str, str] = {}

    @classmethod
    def from_config(cls, broker: BrokerConfig, url: str) -> SqsProbe:
        """The probe for a configured broker; the URL is parsed here, so a malformed one fails at start."""
        return cls(broker, url=url)

    def _boto(self, service: str, endpoint_url: str | None) -> Any:
        if self._session is None:
            e = self._endpoint
            self._session = boto3.session.Session(
                aws_access_key_id=e.access_key_id, aws_secret_access_key=e.secret_access_key, region_name=e.region
            )
        timeout = self._settings.socket_timeout_s
        config = Config(
            region_name=self._session.region_name or DEFAULT_REGION,
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"mode": "standard", "total_max_attempts": 3},
            max_pool_connections=MAX_CONCURRENT_READS,
        )
        return self._session.client(service, endpoint_url=endpoint_url, config=config)  # type: ignore[call-overload]

    @property
    def sqs(self) -> SQSClient:
        """The SQS client (kombu's endpoint rule: the URL's host if it has one, else the region's)."""
        if self._sqs is None:
            self._sqs = self._boto("sqs", self._endpoint.endpoint_url)
        return self._sqs

    @property
    def cloudwatch(self) -> CloudWatchClient:
        """The CloudWatch client for the queues' region (``AWS_ENDPOINT_URL_CLOUDWATCH`` overrides it)."""
        if self._cloudwatch is None:
            self._cloudwatch = self._boto("cloudwatch", None)
        return self._cloudwatch

    def close(self) -> None:
        """Stop the read threads and drop the clients (the next ``measure`` makes new ones)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for client in (self._sqs, self._cloudwatch):
            if client is not None:
                client.close()
        self._sqs = self._cloudwatch = None
        self._session = None

    def measure(self, queues: Sequence[str]) -> BrokerMeasurements:
        """Measure ``queues`` now: one ``GetQueueAttributes`` per queue, in parallel; ages when due."""
        names = [sqs_queue_name(queue, self._settings.queue_name_prefix) for queue in queues]
        self.sqs  # noqa: B018 - create the client here: boto3 sessions are not thread-safe
        if self._executor is None:
            self._executor = ThreadPoolExecutor(MAX_CONCURRENT_READS, thread_name_prefix="sqs-probe")
        reads = list(self._executor.map(self._read, names))
        down = next((r.unavailable for r in reads if r.unavailable is not None), None)
        if down is not None:
            raise BrokerUnavailableError(f"cannot read SQS: {down}")
        now = self._clock()
        self._refresh_ages([n for n, r in zip(names, reads, strict=True) if r.counts and r.counts[0] > 0], now)
        rows = zip(queues, names, reads, strict=True)
        result = {queue: self._queue(queue, name, read, now) for queue, name, read in rows}
        unacked_total = sum(r.counts[1] for r in reads if r.counts is not None)
        return BrokerMeasurements(queues=result, unacked_total=unacked_total, measured_at=now)

    def _queue(self, queue: str, name: str, read: _Read, now: float) -> QueueMeasurement:
        if read.counts is None:
            problem = f"SQS queue {name!r} does not exist" if read.missing else str(read.error)
            self._warn_once(name, problem, "queue %r unreadable: %s", queue, problem)
            return QueueMeasurement(0, None, None, error=problem, declared=not read.missing)
        self._warned.pop(name, None)
        waiting, in_flight, delayed = read.counts
        age = self._ages.get(name)
        fresh = age is not None and age[1] >= now - AGE_LOOKBACK_S
        return QueueMeasurement(
            waiting=waiting,
            unacked=in_flight,
            oldest_age_s=age[0] if fresh and waiting > 0 and age is not None else None,
            scheduled=delayed,
            declared=True,
        )

    def _url(self, name: str) -> str:
        url = self._urls.get(name)
        if url is None:
            url = self._urls[name] = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
        return url

    def _read(self, name: str) -> _Read:
        """One queue's counts; a cached URL SQS no longer knows is resolved once more."""
        for _ in range(2):
            cached = name in self._urls
            try:
                url = self._url(name)
                reply = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[WAITING, IN_FLIGHT, DELAYED])
            except ClientError as exc:
                code = _code(exc)
                if code in _REJECTED_CREDENTIALS:
                    return _Read(unavailable=f"credentials rejected ({code})")
                if code not in _MISSING:
                    return _Read(error=f"{exc.operation_name}: {code}")
                self._urls.pop(name, None)
                if cached:
                    continue
                return _Read(missing=True)
            except BotoCoreError as exc:  # unreachable, timed out, no credentials
                return _Read(unavailable=str(exc))
            return self._counts(reply)
        return _Read(missing=True)

    @staticmethod
    def _counts(reply: GetQueueAttributesResultTypeDef) -> _Read:
        """The three counts as integers; an answer without them is unreadable, never zero."""
        attributes = reply.get("Attributes", {})
        try:
            counts = tuple(int(attributes[key]) for key in (WAITING, IN_FLIGHT, DELAYED))
        except (KeyError, ValueError):
            return _Read(error="GetQueueAttributes: answer without integer message counts")
        if min(counts) < 0:
            return _Read(error="GetQueueAttributes: negative message counts")
        return _Read(counts=(counts[0], counts[1], counts[2]))

    def _refresh_ages(self, names: list[str], now: float) -> None:
        """Read the newest age datapoint of every waiting queue, at most every :data:`AGE_REFRESH_S`."""
        if not names or (self._ages_read_at is not None and now - self._ages_read_at < AGE_REFRESH_S):
            return
        self._ages_read_at = now
        ages: dict[str, tuple[float, float]] = {}
        try:
            for start in range(0, len(names), _QUERIES_PER_CALL):
                ages.update(self._read_ages(names[start : start + _QUERIES_PER_CALL], now))
        except (ClientError, BotoCoreError) as exc:
            self._warn_once("(cloudwatch)", type(exc).__name__, "cannot read %s (%s); ages carried", AGE_METRIC, exc)
            return
        self._warned.pop("(cloudwatch)", None)
        self._ages = ages

    def _read_ages(self, names: list[str], now: float) -> dict[str, tuple[float, float]]:
        queries: list[Any] = [
            {
                "Id": f"q{i}",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "AWS/SQS",
                        "MetricName": AGE_METRIC,
                        "Dimensions": [{"Name": "QueueName", "Value": name}],
                    },
                    "Period": 60,
                    "Stat": "Maximum",
                },
                "ReturnData": True,
            }
            for i, name in enumerate(names)
        ]
        pages = self.cloudwatch.get_paginator("get_metric_data").paginate(
            MetricDataQueries=queries,
            StartTime=datetime.fromtimestamp(now - AGE_LOOKBACK_S, UTC),
            EndTime=datetime.fromtimestamp(now, UTC),
            ScanBy="TimestampDescending",
        )
        newest: dict[str, tuple[float, float]] = {}
        for page in pages:
            for series in page["MetricDataResults"]:
                name = names[int(series["Id"][1:])]
                for stamp, value in zip(series.get("Timestamps", []), series.get("Values", []), strict=False):
                    if name not in newest or stamp.timestamp() > newest[name][1]:
                        newest[name] = (max(0.0, float(value)), stamp.timestamp())
        return newest

    def _warn_once(self, key: str, what: str, message: str, *args: Any) -> None:
        if self._warned.get(key) != what:
            log.warning(message, *args)
            self._warned[key] = what
