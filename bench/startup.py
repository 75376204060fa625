"""Cold start: process start -> first HTTP 200, Medical AI Lab vs a bare Blocks app with the
same number of tabs, alternating runs so both see the same machine state."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def time_to_http_200(cmd: list[str], port: int, env: dict[str, str], timeout: float = 120.0) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{cmd} did not answer within {timeout}s")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def measure(repeats: int = 5) -> dict:
    import app

    ntabs = len(app.TAB_MODULES)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    runs: dict[str, list[float]] = {"app": [], "bare": []}
    for _ in range(repeats):
        port = _free_port()
        runs["bare"].append(time_to_http_200([sys.executable, "bench/bare_app.py", str(port), str(ntabs)], port, env))
        port = _free_port()
        runs["app"].append(time_to_http_200([sys.executable, "app.py", "--port", str(port)], port, env))
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "tabs": ntabs,
        "repeats": repeats,
        "app_s": runs["app"],
        "bare_s": runs["bare"],
        "app_median_s": med["app"],
        "bare_median_s": med["bare"],
        "ratio": med["app"] / med["bare"],
        "target": 1.3,
    }


if __name__ == "__main__":
    result = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
    print(json.dumps(result, indent=2))
