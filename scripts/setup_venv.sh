#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the given requirements file into it. Idempotent:
# pip skips what is already installed, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
REQ="${1:-requirements.txt}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$REQ" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
