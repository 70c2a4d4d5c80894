#!/usr/bin/env python
"""Benchmark the probes: time of one tick for 10, 100 and 1000 queues (median of N runs): Redis, RabbitMQ, SQS.

Redis: writes Celery-shaped messages under a fresh key prefix (so it never touches a real queue, even
on db 0), measures, prints a table and deletes its keys. RabbitMQ: declares the queues in a vhost of
its own, holds one message of each unacknowledged and, for the second column, publishes stamped
waiting messages; the vhost is deleted after. SQS: a moto server on loopback, in a process of its own
(every GetQueueAttributes is one HTTP request, as on AWS; moto's own time per request is in the numbers,
SQS's network latency is not). A number, not a test: CI never asserts on it.

    python scripts/bench_probe.py [--redis-url redis://127.0.0.1:6379/2] [--runs 21] [--broker redis|rabbitmq|sqs|all]

It starts a redis-server without ``--redis-url``, and always a RabbitMQ node of its own with the
management plugin, on free loopback ports (tests/brokers.py), and stops them after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from celery_autoscaler.config import DEFAULT_PRIORITY_SEP, BrokerConfig
from celery_autoscaler.probe.rabbitmq import COUNT_QUERY, RabbitMQProbe
from celery_autoscaler.probe.redis import RedisProbe

TESTS = Path(__file__).resolve().parent.parent / "tests"

QUEUE_COUNTS = (10, 100, 1000)
PRIORITY_KEYS = ("", f"{DEFAULT_PRIORITY_SEP}3", f"{DEFAULT_PRIORITY_SEP}9")
"""Where the messages of each queue go: the bare list and two of kombu's default priority sub-lists."""


def celery_message(queue: str, published_at: float) -> bytes:
    """A message shaped like Celery's protocol 2 on Redis, with the publish-time header."""
    task_id = str(uuid.uuid4())
    return json.dumps(
        {
            "body": "W1tdLCB7fSwgeyJjYWxsYmFja3MiOiBudWxsfV0=",
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"lang": "py", "task": "bench.noop", "id": task_id, "eta": None, "x_published_at": published_at},
            "properties": {
                "correlation_id": task_id,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "delivery_mode": 2,
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    ).encode()


def counting_client(url: str) -> tuple[redis.Redis, list[int]]:
    """A client that counts round trips: one per command or pipeline sent."""
    sent = [0]

    class CountingConnection(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            sent[0] += 1
            super().send_packed_command(command, check_health)

    return redis.Redis.from_url(url, connection_class=CountingConnection), sent


def fill(client: redis.Redis, prefix: str, queues: list[str], per_queue: int) -> None:
    """``per_queue`` waiting messages spread over the sub-lists, and one in-flight message per queue."""
    now = time.time()
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            for i in range(per_queue):
                pipe.lpush(f"{prefix}{queue}{PRIORITY_KEYS[i % len(PRIORITY_KEYS)]}", celery_message(queue, now - i))
            held = json.loads(celery_message(queue, now))
            pipe.hset(f"{prefix}unacked", str(uuid.uuid4()), json.dumps([held, "", queue]))
        pipe.execute()


def median_ms(runs: int, action: Callable[[], object]) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def bench(url: str, queue_count: int, per_queue: int, runs: int) -> tuple[float, float, int, int]:
    """(every-tick ms, scan-tick ms, round trips of an every-tick, round trips of a scan tick)."""
    prefix = f"bench-probe-{uuid.uuid4().hex[:8]}:"
    client, sent = counting_client(url)
    queues = [f"q{i:04d}" for i in range(queue_count)]
    settings = BrokerConfig(key_prefix=prefix, unacked_scan_interval_s=1e9)
    try:
        fill(client, prefix, queues, per_queue)
        probe = RedisProbe(settings, client=client)
        client.ping()
        sent[0] = 0
        probe.measure(queues)  # the first tick also scans the unacked hash
        scan_trips, sent[0] = sent[0], 0
        probe.measure(queues)
        tick_trips = sent[0]
        tick_ms = median_ms(runs, lambda: probe.measure(queues))
        scan_ms = median_ms(max(3, runs // 4), lambda: RedisProbe(settings, client=client).measure(queues))
        return tick_ms, scan_ms, tick_trips, scan_trips
    finally:
        for batch in _batches(client.scan_iter(match=f"{prefix}*", count=1000), 500):
            client.unlink(*batch)
        client.close()


def _batches(keys: Any, size: int) -> Any:
    batch: list[bytes] = []
    for key in keys:
        batch.append(key)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def bench_rabbitmq(broker: Any, queue_count: int, per_queue: int, runs: int) -> tuple[float, float, int]:
    """(ms of a tick with nothing waiting: one request, ms with every queue waiting: two, listing bytes)."""
    from kombu import Connection, Exchange, Producer, Queue

    vhost = f"bench-{uuid.uuid4().hex[:8]}"
    broker.management_request("PUT", f"/api/vhosts/{vhost}", {})
    everything = {"configure": ".*", "write": ".*", "read": ".*"}
    broker.management_request("PUT", f"/api/permissions/{vhost}/{broker.user}", everything)
    url = broker.amqp_url.rsplit("/", 2)[0] + f"/{vhost}"
    queues = [f"q{i:04d}" for i in range(queue_count)]
    probe = RabbitMQProbe.from_config(BrokerConfig(management_url=broker.management_url), url)
    try:
        with Connection(url) as connection:
            channel = connection.channel()
            producer = Producer(channel)
            for queue in queues:  # one message each, held unacknowledged by this channel
                Queue(queue, Exchange(queue), queue, channel=channel).declare()
                producer.publish({"n": 0}, exchange=queue, routing_key=queue, timestamp=int(time.time()))
            _wait(lambda: _listed(broker, vhost, "messages_ready") == queue_count)
            for queue in queues:
                channel.basic_get(queue, no_ack=False)
            _wait(lambda: probe.measure(queues).unacked_total == queue_count)
            held_ms = median_ms(runs, lambda: probe.measure(queues))
            for queue in queues:
                for _ in range(per_queue):
                    producer.publish({"n": 1}, exchange=queue, routing_key=queue, timestamp=int(time.time()))
            _wait(lambda: _listed(broker, vhost, "messages_ready") == queue_count * per_queue)
            waiting_ms = median_ms(runs, lambda: probe.measure(queues))
            size = len(
                json.dumps(broker.management_get(f"/api/queues/{vhost}?disable_stats=true&enable_queue_totals=true"))
            )
        return held_ms, waiting_ms, size
    finally:
        probe.close()
        broker.management_request("DELETE", f"/api/vhosts/{vhost}")


def _listed(broker: Any, vhost: str, column: str) -> int:
    rows = broker.management_get(f"/api/queues/{vhost}?{COUNT_QUERY}")
    return sum(int(row.get(column) or 0) for row in rows)


def _wait(condition: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("the broker did not reach the expected counts in time")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="a Redis to use (default: a private redis-server, stopped after)")
    parser.add_argument("--runs", type=int, default=21, help="ticks per size; the median is printed")
    parser.add_argument("--messages", type=int, default=3, help="waiting messages per queue")
    parser.add_argument("--broker", choices=("redis", "rabbitmq", "sqs", "all"), default="all")
    args = parser.parse_args()
    # The benchmark's queues are never declared by a Celery app: the probes' warnings say so for each.
    logging.getLogger("celery_autoscaler").setLevel(logging.ERROR)
    sys.path.insert(0, str(TESTS))
    from brokers import RabbitNode, RedisServer  # the tests' launchers

    redis_ms: dict[int, float] = {}
    with contextlib.ExitStack() as stack:
        if args.broker in ("redis", "all"):
            if args.redis_url is None:
                args.redis_url = stack.enter_context(RedisServer()).url(2)
            redis_ms = report(args)
        if args.broker in ("rabbitmq", "all"):
            node = RabbitNode()
            broker = node.start()
            stack.callback(node.stop)
            report_rabbitmq(args, broker, redis_ms)
        if args.broker in ("sqs", "all"):
            report_sqs(args, redis_ms)


def report(args: argparse.Namespace) -> dict[int, float]:
    """Fill, measure and clean up each size in turn on ``args.redis_url``; the tick ms by size."""
    print(f"Redis probe, {args.messages} waiting + 1 in-flight message per queue, median of {args.runs} ticks")
    print(f"{'queues':>7} {'keys':>6} {'tick ms':>9} {'trips':>6} {'scan tick ms':>13} {'trips':>6}")
    ticks = {}
    for count in QUEUE_COUNTS:
        tick_ms, scan_ms, tick_trips, scan_trips = bench(args.redis_url, count, args.messages, args.runs)
        ticks[count] = tick_ms
        keys = count * 10
        print(f"{count:>7} {keys:>6} {tick_ms:>9.2f} {tick_trips:>6} {scan_ms:>13.2f} {scan_trips:>6}")
    print("tick: LLEN + LINDEX -1 of every queue key and q{sep}1..9, HLEN unacked, in one pipeline.")
    print("scan tick: the same plus HSCAN of the unacked hash (every unacked_scan_interval_s).")
    return ticks


def report_rabbitmq(args: argparse.Namespace, broker: Any, redis_ms: dict[int, float]) -> None:
    """Each size in a vhost of its own on the private node, next to the Redis tick when it ran."""
    print()
    print(f"RabbitMQ probe (management API, one keep-alive connection), median of {args.runs} ticks")
    waiting = f"+{args.messages} waiting ms"
    print(f"{'queues':>7} {'1 unacked ms':>13} {waiting:>16} {'listing KB':>11} {'Redis tick ms':>14}")
    for count in QUEUE_COUNTS:
        held_ms, waiting_ms, size = bench_rabbitmq(broker, count, args.messages, args.runs)
        redis = f"{redis_ms[count]:.2f}" if count in redis_ms else "-"
        print(f"{count:>7} {held_ms:>13.2f} {waiting_ms:>16.2f} {size / 1024:>11.1f} {redis:>14}")
    print("1 unacked: nothing waits, so a tick is ONE request (the live queue listing of the vhost).")
    print("+waiting: classic queues wait, so the tick adds the stats-mode listing for head ages (two requests).")


def bench_sqs(endpoint: str, queue_count: int, per_queue: int, runs: int) -> tuple[float, float, float, float]:
    """(ms of the first tick: GetQueueUrl + GetQueueAttributes each, ms of a tick with URLs cached, the
    probe's own CPU ms in such a tick, ms of a tick that also reads the ages: one GetMetricData per 500
    waiting queues)."""
    import boto3

    from celery_autoscaler.probe.sqs import AGE_REFRESH_S, SqsProbe

    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=SQS_REGION, **MOTO_KEYS)
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    queues = [f"q{i:04d}" for i in range(queue_count)]
    urls = [sqs.create_queue(QueueName=f"{prefix}{queue}")["QueueUrl"] for queue in queues]
    for url in urls:
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": "{}"} for i in range(per_queue)])
    clock = [time.time()]
    settings = BrokerConfig(region=SQS_REGION, queue_name_prefix=prefix)
    url = f"sqs://bench:bench@{endpoint.removeprefix('http://')}"
    probes: list[Any] = []
    try:

        def first() -> None:
            probes.append(SqsProbe(settings, url=url, clock=lambda: clock[0]))
            probes[-1].measure(queues)

        first_ms = median_ms(max(3, runs // 4), first)
        probe = probes[-1]
        cached_ms = median_ms(runs, lambda: probe.measure(queues))  # ages read on the first tick: carried
        cpu = time.process_time()
        probe.measure(queues)
        cpu_ms = (time.process_time() - cpu) * 1000

        def with_ages() -> None:
            clock[0] += AGE_REFRESH_S
            probe.measure(queues)

        ages_ms = median_ms(max(3, runs // 4), with_ages)
        return first_ms, cached_ms, cpu_ms, ages_ms
    finally:
        for probe in probes:
            probe.close()
        for queue_url in urls:
            sqs.delete_queue(QueueUrl=queue_url)
        sqs.close()


SQS_REGION = "eu-west-1"
MOTO_KEYS = dict.fromkeys(("aws_access_key_id", "aws_secret_access_key"), "bench")  # moto takes any


def report_sqs(args: argparse.Namespace, redis_ms: dict[int, float]) -> None:
    """Each size on a moto server in a process of its own (CloudWatch there too), next to the Redis tick."""
    import os

    from emulator import EmulatorProcess  # the tests' launcher: moto in a process of its own

    print()
    print(f"SQS probe on moto (loopback HTTP), {args.messages} waiting per queue, median of {args.runs} ticks")
    header = ("queues", 7), ("first tick ms", 14), ("tick ms", 9), ("probe CPU ms", 13), ("tick + ages ms", 15)
    print(" ".join(f"{name:>{width}}" for name, width in header), f"{'Redis tick ms':>14}")
    with EmulatorProcess() as emulator:
        endpoint = emulator.endpoint
        os.environ["AWS_ENDPOINT_URL_CLOUDWATCH"] = endpoint  # the probe's CloudWatch client reads it
        for count in QUEUE_COUNTS:
            first_ms, cached_ms, cpu_ms, ages_ms = bench_sqs(endpoint, count, args.messages, args.runs)
            redis = f"{redis_ms[count]:.2f}" if count in redis_ms else "-"
            print(f"{count:>7} {first_ms:>14.1f} {cached_ms:>9.1f} {cpu_ms:>13.1f} {ages_ms:>15.1f} {redis:>14}")
    print("tick: one GetQueueAttributes per queue, 32 in parallel; the first tick resolves each URL too.")
    print("probe CPU: botocore's own work in that tick; the rest of the wall time is moto answering.")
    print("+ ages: once a minute, one GetMetricData per 500 queues with messages waiting.")


if __name__ == "__main__":
    main()
