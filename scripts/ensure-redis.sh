#!/usr/bin/env bash
# Start Redis on loopback when none answers; install it from apt when the binary is missing.
set -euo pipefail
port="${REDIS_PORT:-6379}"
if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
  exit 0
fi
if ! command -v redis-server >/dev/null; then
  echo "redis-server missing: installing it with apt" >&2
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq redis-server >/dev/null
fi
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
  --dir /tmp --logfile /tmp/redis-"$port".log
for _ in $(seq 50); do
  redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && exit 0
  sleep 0.2
done
echo "redis on 127.0.0.1:$port did not answer" >&2
exit 1
