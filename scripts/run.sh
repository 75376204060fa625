#!/usr/bin/env bash
# One command: install the app's dependencies into .venv and start the app.
#   bash scripts/run.sh [--host 0.0.0.0] [--port 7860] [--share]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh requirements.txt
export GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python app.py "$@"
