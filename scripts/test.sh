#!/usr/bin/env bash
# One command: install the app + test dependencies into .venv (and Debian's chromium for
# the browser tests if it is missing: a hard dependency, so no chromium = a failed run) and
# run the whole test suite offline.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh requirements-dev.txt
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian chromium for the browser test..."
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing and this user cannot apt-get install it: install Debian's chromium, then rerun" >&2
    exit 1
  fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False MEDLAB_DEVICE=cpu
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = "5" ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
