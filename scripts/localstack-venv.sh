#!/usr/bin/env bash
# Create .venv-localstack: LocalStack's free edition runs on the host without Docker, but needs its
# own Python >= 3.13 (2026.3.0 imports warnings.deprecated, new in 3.13, although its metadata says
# >= 3.12) and a few pins (measured in ../shared/reference/aws-emulators.md). Idempotent:
# a stamp named after the pins skips the ~30 s install once it is complete.
# Exit 3 when no Python >= 3.13 exists (the LocalStack tests then skip, saying so).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${LOCALSTACK_VENV:-.venv-localstack}"
pins=("localstack-core[runtime]==2026.3.0" "cbor2<6" "pyopenssl==25.1.0" "cryptography>=45.0.1,<46" "service-identity")
stamp="$venv/.installed-$(printf '%s\n' "${pins[@]}" | sha1sum | cut -c1-12)"
newer_than_3_12='import sys; sys.exit(sys.version_info < (3, 13))'
# Complete and on a new enough Python: nothing to do. Anything else is rebuilt, not patched.
if [ -f "$stamp" ] && "$venv/bin/python" -c "$newer_than_3_12" 2>/dev/null; then
  exit 0
fi

python=""
for candidate in "${LOCALSTACK_PYTHON:-}" python3.13 python3.14 \
    "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.14*/bin/python3.14; do
  [ -n "$candidate" ] || continue
  if command -v "$candidate" >/dev/null 2>&1 \
      && "$candidate" -c "$newer_than_3_12" 2>/dev/null; then
    python="$candidate"; break
  fi
done
if [ -z "$python" ]; then
  echo "no Python >= 3.13 found for LocalStack (set LOCALSTACK_PYTHON)" >&2
  exit 3
fi
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "${pins[@]}"
touch "$stamp"
