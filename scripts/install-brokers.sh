#!/usr/bin/env bash
# Install the broker servers that the tests and the demo start privately (redis-server,
# rabbitmq-server) with apt when missing. It starts nothing: each test session, and the demo, runs
# its own on free loopback ports. Usage: scripts/install-brokers.sh [PACKAGE...] (default: both).
set -euo pipefail
packages=("$@")
[ $# -gt 0 ] || packages=(redis-server rabbitmq-server)
missing=()
for package in "${packages[@]}"; do
  # Debian keeps RabbitMQ's own scripts in /usr/lib/rabbitmq/bin (/usr/sbin holds su wrappers).
  command -v "$package" >/dev/null || [ -x "/usr/lib/rabbitmq/bin/$package" ] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing ${missing[*]} with apt" >&2
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
$sudo_cmd apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
