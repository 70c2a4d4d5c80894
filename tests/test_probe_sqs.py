"""The SQS probe against moto: in-process for the probe's reads, a moto server for real Celery workers.

Celery producers publish through kombu's real SQS transport in every test; the worker tests run
real prefork workers whose SQS transport (boto3 + pycurl) talks to a moto server on loopback.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest
import redis
from apps.probe_app import DONE, RELEASE, STARTED, make_app
from apps.workers import WorkerProcess
from botocore.awsrequest import AWSResponse
from celery_apps import celery_worker
from conftest import redis_url_for
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu import Connection, pools
from moto import mock_aws
from moto.core import enable_iam_authentication
from moto_aws import REGION, aws_env, client, count_calls, free_port, moto_server
from waiting import wait_until

from celery_autoscaler.cli import main as cli_main
from celery_autoscaler.config import BrokerConfig, ConfigError
from celery_autoscaler.probe import BrokerUnavailableError, probe_for
from celery_autoscaler.probe.sqs import AGE_LOOKBACK_S, AGE_METRIC, AGE_REFRESH_S, SqsProbe, sqs_queue_name

SETTINGS = BrokerConfig(region=REGION)
ACCOUNT = "123456789012"  # moto's


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto in this process, with fake credentials and no endpoint overrides.

    kombu keeps producers' connections (and their SQS queue URLs) in process-wide pools keyed by the
    broker URL: they are reset with moto, so no test publishes to a queue URL of an earlier one.
    """
    aws_env(monkeypatch)
    pools.reset()
    with mock_aws():
        yield
    pools.reset()


def producer(*, prefix: str = "") -> Any:
    """A real Celery producer on kombu's SQS transport (it creates each queue on first publish)."""
    options = {"region": REGION, "queue_name_prefix": prefix}
    return make_app("sqs://", transport_options=options, stamp_header=None)


def publish_age(name: str, seconds: float, at: float) -> None:
    """The datapoint SQS itself publishes to CloudWatch for a queue every minute."""
    client("cloudwatch").put_metric_data(
        Namespace="AWS/SQS",
        MetricData=[
            {
                "MetricName": AGE_METRIC,
                "Dimensions": [{"Name": "QueueName", "Value": name}],
                "Timestamp": datetime.fromtimestamp(at, UTC),
                "Value": seconds,
                "Unit": "Seconds",
            }
        ],
    )


@pytest.fixture(scope="module")
def kombu_channel() -> Iterator[Any]:
    """kombu's own SQS channel, for its naming rule (predefined queues: no AWS call is made)."""
    options = {"region": REGION, "predefined_queues": {"q": {"url": f"https://sqs/{ACCOUNT}/q"}}}
    with Connection("sqs://", transport_options=options) as connection:
        yield connection.default_channel


@settings(max_examples=300, deadline=None)
@given(
    queue=st.text(min_size=1, max_size=40),
    prefix=st.sampled_from(["", "dev-", "app.v2:", "team_a/"]),
    fifo=st.booleans(),
)
def test_queue_names_are_kombus(kombu_channel: Any, queue: str, prefix: str, fifo: bool) -> None:
    name = queue + ".fifo" if fifo else queue
    kombu_channel.__dict__["queue_name_prefix"] = prefix  # kombu reads its transport option once
    assert sqs_queue_name(name, prefix) == kombu_channel.canonical_queue_name(name)


def test_counts_of_waiting_in_flight_and_delayed_messages(aws: None) -> None:
    app = producer()
    for i in range(5):
        app.send_task("probe.block", args=(f"t{i}",), queue="jobs.high")
    app.send_task("probe.block", args=("later",), queue="jobs.high", delay_seconds=120)
    app.send_task("probe.noop", queue="celery")
    sqs = client("sqs")
    url = sqs.get_queue_url(QueueName="jobs-high")["QueueUrl"]  # kombu's name for the queue
    sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2, VisibilityTimeout=300)  # what a worker holds

    measured = SqsProbe(SETTINGS, url="sqs://").measure(["jobs.high", "celery"])

    high = measured.queues["jobs.high"]
    assert (high.waiting, high.unacked, high.scheduled, high.declared, high.error) == (3, 2, 1, True, None)
    assert (measured.queues["celery"].waiting, measured.queues["celery"].unacked) == (1, 0)
    assert measured.unacked_total == 2


def test_queue_name_prefix_is_the_transports(aws: None) -> None:
    producer(prefix="dev-").send_task("probe.noop", queue="jobs")
    assert client("sqs").list_queues()["QueueUrls"] == [f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/dev-jobs"]

    prefixed = SqsProbe(BrokerConfig(region=REGION, queue_name_prefix="dev-"), url="sqs://").measure(["jobs"])
    unprefixed = SqsProbe(SETTINGS, url="sqs://").measure(["jobs"])

    assert (prefixed.queues["jobs"].waiting, prefixed.queues["jobs"].declared) == (1, True)
    assert unprefixed.queues["jobs"].declared is False
    assert unprefixed.queues["jobs"].error == "SQS queue 'jobs' does not exist"


def test_a_missing_queue_is_unreadable_alone_and_found_once_created(
    aws: None, caplog: pytest.LogCaptureFixture
) -> None:
    producer().send_task("probe.noop", queue="present")
    probe = SqsProbe(SETTINGS, url="sqs://")

    with caplog.at_level(logging.WARNING, logger="celery_autoscaler.probe.sqs"):
        first = probe.measure(["present", "absent"])
        probe.measure(["present", "absent"])
    assert first.queues["present"].waiting == 1
    assert (first.queues["absent"].declared, first.queues["absent"].error) == (
        False,
        "SQS queue 'absent' does not exist",
    )
    assert first.queues["absent"].unacked is None
    assert len([r for r in caplog.records if "'absent'" in r.getMessage()]) == 1  # once, not every tick

    producer().send_task("probe.noop", queue="absent")
    again = probe.measure(["present", "absent"])
    assert (again.queues["absent"].waiting, again.queues["absent"].declared, again.queues["absent"].error) == (
        1,
        True,
        None,
    )


def test_queue_urls_are_resolved_once_and_again_when_the_queue_is_gone(aws: None) -> None:
    app = producer()
    for queue in ("a", "b"):
        app.send_task("probe.noop", queue=queue)
    sqs = client("sqs")
    resolved = count_calls(sqs, "GetQueueUrl")
    read = count_calls(sqs, "GetQueueAttributes")
    probe = SqsProbe(SETTINGS, sqs=sqs)

    for _ in range(3):
        assert probe.measure(["a", "b"]).queues["a"].waiting == 1
    assert (len(resolved), len(read)) == (2, 6)  # one GetQueueAttributes per queue per tick

    sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName="a")["QueueUrl"])
    resolved.clear()
    gone = probe.measure(["a", "b"])
    assert (gone.queues["a"].declared, gone.queues["b"].waiting) == (False, 1)
    assert [call["QueueName"] for call in resolved] == ["a"]  # the cached URL failed: resolved again

    sqs.send_message(QueueUrl=sqs.create_queue(QueueName="a")["QueueUrl"], MessageBody="x")
    assert probe.measure(["a", "b"]).queues["a"].waiting == 1


def test_age_comes_from_cloudwatch_at_most_once_a_minute_and_is_carried_forward(aws: None) -> None:
    app = producer()
    app.send_task("probe.noop", queue="busy.q")
    app.send_task("probe.noop", queue="stale")
    client("sqs").create_queue(QueueName="idle")
    now = time.time()
    publish_age("busy-q", 40.0, now - 180)
    publish_age("busy-q", 75.0, now - 60)
    publish_age("idle", 500.0, now - 60)  # an empty queue has no waiting age, whatever the metric says
    publish_age("stale", 900.0, now - AGE_LOOKBACK_S - 120)  # too old to mean anything now
    offset = [0.0]
    cloudwatch = client("cloudwatch")
    reads = count_calls(cloudwatch, "GetMetricData")
    probe = SqsProbe(SETTINGS, url="sqs://", cloudwatch=cloudwatch, clock=lambda: time.time() + offset[0])
    queues = ["busy.q", "idle", "stale"]

    first = probe.measure(queues)
    assert first.queues["busy.q"].oldest_age_s == 75.0
    assert first.queues["idle"].oldest_age_s is None
    assert first.queues["stale"].oldest_age_s is None
    assert len(reads) == 1
    assert sorted(q["MetricStat"]["Metric"]["Dimensions"][0]["Value"] for q in reads[0]["MetricDataQueries"]) == [
        "busy-q",
        "stale",
    ]  # only queues with messages waiting

    publish_age("busy-q", 130.0, now)
    offset[0] = AGE_REFRESH_S / 2
    assert probe.measure(queues).queues["busy.q"].oldest_age_s == 75.0  # carried forward
    assert len(reads) == 1

    offset[0] = AGE_REFRESH_S + 1
    assert probe.measure(queues).queues["busy.q"].oldest_age_s == 130.0
    assert len(reads) == 2


def test_many_queues_are_read_in_one_tick_and_ages_in_pages(aws: None) -> None:
    sqs = client("sqs")
    names = [f"q{i}" for i in range(600)]
    for name in names:
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="x")
    cloudwatch = client("cloudwatch")
    reads = count_calls(cloudwatch, "GetMetricData")
    publish_age("q599", 12.0, time.time() - 60)

    measured = SqsProbe(SETTINGS, url="sqs://", cloudwatch=cloudwatch).measure(names)

    assert sum(q.waiting for q in measured.queues.values()) == 600
    assert [len(call["MetricDataQueries"]) for call in reads] == [500, 100]  # GetMetricData's limit per call
    assert measured.queues["q599"].oldest_age_s == 12.0


def test_a_denied_queue_is_unreadable_alone(aws: None) -> None:
    app = producer()
    for queue in ("allowed", "denied"):
        app.send_task("probe.noop", queue=queue)
    iam = client("iam")
    iam.create_user(UserName="scaler")
    statements = [
        # moto checks GetQueueUrl against "*" only (it takes the queue from QueueUrl); AWS scopes it by queue.
        {"Effect": "Allow", "Action": "sqs:GetQueueUrl", "Resource": "*"},
        {"Effect": "Allow", "Action": "sqs:GetQueueAttributes", "Resource": f"arn:aws:sqs:{REGION}:{ACCOUNT}:allowed"},
    ]
    policy = json.dumps({"Version": "2012-10-17", "Statement": statements})
    iam.put_user_policy(UserName="scaler", PolicyName="probe", PolicyDocument=policy)
    key = iam.create_access_key(UserName="scaler")["AccessKey"]
    url = f"sqs://{quote(key['AccessKeyId'], safe='')}:{quote(key['SecretAccessKey'], safe='')}@"

    with enable_iam_authentication():
        measured = SqsProbe(SETTINGS, url=url).measure(["allowed", "denied"])

    assert (measured.queues["allowed"].waiting, measured.queues["allowed"].error) == (1, None)
    denied = measured.queues["denied"]
    assert denied.error is not None
    assert denied.error.startswith("GetQueueAttributes: ")
    assert (denied.declared, denied.unacked) == (True, None)  # refused, not missing
    assert measured.unacked_total == 0
    assert measured.queues["allowed"].oldest_age_s is None  # GetMetricData was denied too: age unknown


def aws_error(request: Any, status: int, json_type: str, query_code: str) -> AWSResponse:
    """An error answer of SQS's JSON protocol, as AWS sends it (with the query-compatible code)."""
    body = json.dumps({"__type": f"com.amazonaws.sqs#{json_type}", "message": "refused"}).encode()
    return AWSResponse(request.url, status, {"x-amzn-query-error": f"{query_code};Sender"}, _Raw(body))


class _Raw:
    """The raw body botocore reads from a response."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def test_a_throttled_queue_is_retried_a_bounded_number_of_times_then_unreadable_alone(aws: None) -> None:
    app = producer()
    for queue in ("calm", "hot"):
        app.send_task("probe.noop", queue=queue)
    probe = SqsProbe(SETTINGS, url="sqs://")
    hot_url = probe.sqs.get_queue_url(QueueName="hot")["QueueUrl"]
    attempts: list[str] = []

    def throttle(request: Any, **_: Any) -> AWSResponse | None:
        if json.loads(request.body)["QueueUrl"] != hot_url:
            return None
        attempts.append(hot_url)
        return aws_error(request, 400, "ThrottlingException", "RequestThrottled")

    probe.sqs.meta.events.register_first("before-send.sqs.GetQueueAttributes", throttle)
    measured = probe.measure(["calm", "hot"])

    assert measured.queues["calm"].waiting == 1
    assert measured.queues["hot"].error == "GetQueueAttributes: RequestThrottled"
    assert len(attempts) == 3  # the client's bounded retries, then the queue alone is unreadable


def test_rejected_credentials_make_the_broker_unavailable(aws: None) -> None:
    producer().send_task("probe.noop", queue="a")
    probe = SqsProbe(SETTINGS, url="sqs://")

    def reject(request: Any, **_: Any) -> AWSResponse:
        return aws_error(request, 403, "UnrecognizedClientException", "InvalidClientTokenId")

    probe.sqs.meta.events.register_first("before-send.sqs", reject)

    with pytest.raises(BrokerUnavailableError, match=r"credentials rejected \(InvalidClientTokenId\)"):
        probe.measure(["a"])


def test_unreachable_sqs_makes_the_broker_unavailable() -> None:
    probe = SqsProbe(BrokerConfig(region=REGION, socket_timeout_s=1), url=f"sqs://k:s@127.0.0.1:{free_port()}")
    with pytest.raises(BrokerUnavailableError, match="cannot read SQS"):
        probe.measure(["a", "b"])
    probe.close()


def test_the_factory_picks_the_sqs_probe_and_rejects_a_bad_port() -> None:
    probe = probe_for(SETTINGS, "sqs://")
    assert isinstance(probe, SqsProbe)
    probe.close()
    with pytest.raises(ConfigError, match=r"broker\.url"):
        probe_for(SETTINGS, "sqs://host:99999")


def test_measure_prints_the_same_json_on_sqs(aws: None, capsys: pytest.CaptureFixture[str]) -> None:
    app = producer(prefix="dev.")
    for _ in range(2):
        app.send_task("probe.noop", queue="jobs.high")
    args = ["measure", "--broker-url", "sqs://", "--region", REGION, "--queue-name-prefix", "dev.", "--json"]

    assert cli_main([*args, "--queue", "jobs.high"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document == {
        "queues": {"jobs.high": {"waiting": 2, "unacked": 0, "oldest_age_s": None, "declared": True, "error": None}},
        "unacked_total": 0,
    }
    assert cli_main([*args, "--queue", "jobs.low"]) == 1  # a queue that does not exist is unreadable
    assert "does not exist" in capsys.readouterr().err


# --- real Celery workers on a moto server ----------------------------------------------------------


@contextmanager
def sqs_worker(
    broker_url: str, signals: redis.Redis, queues: list[str], *, acks_late: bool, **options: Any
) -> Iterator[WorkerProcess]:
    """A prefork worker (concurrency 2, prefetch multiplier 1) on SQS, signalling through Redis."""
    db = int(signals.connection_pool.connection_kwargs["db"])
    env = {
        "PROBE_APP_BROKER_URL": broker_url,
        "PROBE_APP_SIGNAL_URL": redis_url_for(db),
        "PROBE_APP_ACKS_LATE": "1" if acks_late else "0",
        "PROBE_APP_TRANSPORT_OPTIONS": json.dumps({"region": REGION, **WORKER_OPTIONS, **options}),
        "AWS_DEFAULT_REGION": REGION,
    }
    with celery_worker("apps.probe_app", queues, concurrency=2, env=env) as worker:
        try:
            yield worker
        finally:  # a failed test must not leave tasks blocking the worker's warm shutdown
            signals.rpush(RELEASE, *["go"] * 20)


WORKER_OPTIONS = {"wait_time_seconds": 1, "polling_interval": 0.1}
"""Short polls, so the worker picks up messages within a second of the test publishing them."""


@pytest.fixture
def moto_sqs(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto server for producers, workers and the probe alike: its sqs:// URL (kombu's form)."""
    aws_env(monkeypatch)
    with moto_server() as endpoint:
        yield f"sqs://testing:testing@{endpoint.removeprefix('http://')}"


def counts(probe: SqsProbe, queue: str) -> tuple[int, int | None]:
    q = probe.measure([queue]).queues[queue]
    return q.waiting, q.unacked


@pytest.mark.redis_db(5)
@pytest.mark.parametrize("acks_late", [False, True])
def test_in_flight_matches_what_a_real_worker_holds(redis_db: redis.Redis, moto_sqs: str, acks_late: bool) -> None:
    app = make_app(moto_sqs, acks_late=acks_late, transport_options={"region": REGION})
    for i in range(5):
        app.tasks["probe.block"].apply_async(args=[f"t{i}"], queue="work.sqs")
    # Concurrency 2, prefetch 2: two tasks run. acks_late=False deletes them from SQS on start, so two
    # more are received and reserved; acks_late=True keeps the running two in flight, filling the window.
    expected = (1, 2) if not acks_late else (3, 2)
    probe = SqsProbe(SETTINGS, url=moto_sqs)

    with sqs_worker(moto_sqs, redis_db, ["work.sqs"], acks_late=acks_late):
        wait_until(lambda: redis_db.llen(STARTED) == 2 and counts(probe, "work.sqs") == expected, what="two running")
        measured = probe.measure(["work.sqs"])
        assert (measured.queues["work.sqs"].waiting, measured.queues["work.sqs"].unacked) == expected
        assert measured.queues["work.sqs"].scheduled == 0
        assert measured.unacked_total == 2

        redis_db.rpush(RELEASE, *["go"] * 5)
        wait_until(lambda: redis_db.llen(DONE) == 5 and counts(probe, "work.sqs") == (0, 0), what="all done")


@pytest.mark.redis_db(5)
def test_eta_tasks_a_worker_holds_are_in_flight_and_a_killed_workers_return_after_the_visibility_timeout(
    redis_db: redis.Redis, moto_sqs: str
) -> None:
    visibility = {"visibility_timeout": 30}
    app = make_app(moto_sqs, acks_late=True, transport_options={"region": REGION, **visibility})
    for i in range(3):
        app.tasks["probe.block"].apply_async(args=[f"eta{i}"], queue="eta.sqs", countdown=600)
    app.tasks["probe.block"].apply_async(args=["delayed"], queue="eta.sqs", delay_seconds=600)
    probe = SqsProbe(SETTINGS, url=moto_sqs)

    with sqs_worker(moto_sqs, redis_db, ["eta.sqs"], acks_late=True, **visibility) as worker:
        # The worker holds the three ETA messages in memory (received, not deleted): SQS sees them in
        # flight, not delayed. Only the message sent with an SQS delay counts as scheduled.
        wait_until(lambda: counts(probe, "eta.sqs") == (0, 3), what="the ETA messages held")
        assert probe.measure(["eta.sqs"]).queues["eta.sqs"].scheduled == 1
        assert redis_db.llen(STARTED) == 0

        worker.sigkill()
        assert counts(probe, "eta.sqs") == (0, 3)  # still invisible: SQS does not know the worker died
        wait_until(lambda: counts(probe, "eta.sqs") == (3, 0), timeout=120, what="visibility timeout")


WORKER_ACTIONS = [
    "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",  # the redrive policy, read when a message is rejected
    "sqs:ReceiveMessage",
    "sqs:SendMessage",
]
"""What the module's task role allows on its queues (tests/module.tftest.hcl asserts the same list)."""


def iam_user_url(endpoint: str, name: str, statements: list[dict[str, Any]]) -> str:
    """An IAM user allowed ``statements``, as kombu's sqs:// URL with its keys (moto server)."""
    iam = client("iam", endpoint)
    iam.create_user(UserName=name)
    policy = json.dumps({"Version": "2012-10-17", "Statement": statements})
    iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=policy)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    keys = f"{quote(key['AccessKeyId'], safe='')}:{quote(key['SecretAccessKey'], safe='')}"
    return f"sqs://{keys}@{endpoint.removeprefix('http://')}"


@pytest.mark.redis_db(5)
def test_a_worker_configured_as_the_module_does_runs_with_exactly_the_modules_permissions(
    redis_db: redis.Redis, moto_sqs: str
) -> None:
    """Queues made beforehand, predefined_queues by kombu's names, a prefix, and IAM enforced by moto."""
    endpoint = "http://" + moto_sqs.rsplit("@", 1)[1]
    sqs = client("sqs", endpoint)
    url = sqs.create_queue(QueueName="dev-jobs-sqs", Attributes={"VisibilityTimeout": "600"})["QueueUrl"]
    arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:dev-jobs-sqs"
    options = {"region": REGION, "queue_name_prefix": "dev.", "predefined_queues": {"dev-jobs-sqs": {"url": url}}}
    worker_url = iam_user_url(endpoint, "worker", [{"Effect": "Allow", "Action": WORKER_ACTIONS, "Resource": [arn]}])
    scaler_url = iam_user_url(
        endpoint,
        "scaler",
        [
            {"Effect": "Allow", "Action": ["sqs:GetQueueAttributes"], "Resource": [arn]},
            {"Effect": "Allow", "Action": ["sqs:GetQueueUrl"], "Resource": "*"},  # moto checks it against * only
        ],
    )
    probe = SqsProbe(BrokerConfig(region=REGION, queue_name_prefix="dev."), url=scaler_url)

    with enable_iam_authentication():
        app = make_app(worker_url, acks_late=True, transport_options=options)
        for i in range(3):
            app.tasks["probe.block"].apply_async(args=[f"t{i}"], queue="jobs.sqs")
        with sqs_worker(worker_url, redis_db, ["jobs.sqs"], acks_late=True, **options):
            wait_until(lambda: redis_db.llen(STARTED) == 2 and counts(probe, "jobs.sqs") == (1, 2), what="two running")
            redis_db.rpush(RELEASE, *["go"] * 3)
            wait_until(lambda: redis_db.llen(DONE) == 3 and counts(probe, "jobs.sqs") == (0, 0), what="all done")
        app.close()
