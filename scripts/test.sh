#!/usr/bin/env bash
# One command: install the app + test dependencies into .venv (and Debian's chromium for
# the browser tests if it is missing: a hard dependency, so no chromium = a failed run) and
# run the whole test suite offline.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh requirements-dev.txt
# Debian packages the browser tests need: chromium (hard dependency) and a CJK font so the
# zh-CN screenshots show characters, not boxes.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || missing+=(fonts-wqy-microhei)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages for the browser tests: ${missing[*]}"
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "${missing[*]} missing and this user cannot apt-get install: install them, then rerun" >&2
    exit 1
  fi
fi
# The accessibility tests' engine: axe-core, bundled in the pinned PyPI package
# axe-playwright-python (requirements-dev.txt, installed above). A hard dependency like
# chromium: without it the run fails here instead of the tests being skipped.
.venv/bin/python -c "import axe_playwright_python, pathlib; assert (pathlib.Path(axe_playwright_python.__file__).parent / 'axe.min.js').is_file()" \
  || { echo "axe-playwright-python (axe-core) is missing from .venv: pip install -r requirements-dev.txt" >&2; exit 1; }
# Lint first: the whole repository, tests included (rules in ruff.toml). A finding fails the run.
.venv/bin/ruff check .
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
