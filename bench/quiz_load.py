"""Section 13: a class quiz under load. The whole app runs in a process of its own (as
`python app.py` would); a 10-case Lung CT quiz is created through /quiz_create; 40 simulated
students, each a separate OS process with its own gradio_client, start together and, case by
case, open the case (/quiz_case), commit a guess (/quiz_guess) and reveal the model's answer
(/quiz_reveal). Then the guesses are counted in the app's SQLite file.

What is timed: "per guess" is the client's round trip of /quiz_guess (the SQLite commit with
synchronous=FULL, through Gradio's queue); the reveal is timed separately, since the model's
answers are computed once per case (real-size random-weight EfficientNet-B1 + Grad-CAM;
quick: tiny) by the educator's first look at the tally before class, and every reveal reads
the stored answer.

    python -m bench.quiz_load STUDENT URL CODE N_CASES START_FILE   # one student (internal)"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, WORK, Row, SectionResult, check, loadavg, summary

STUDENTS, CASES = 40, 10
QUICK_STUDENTS, QUICK_CASES = 6, 3
GUESS_P95_TARGET_MS = 1000.0  # a student presses "Commit my guess": under a second, even at p95
REPLY = "@@"

SERVER = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
import app
from bench.startup import _free_port
demo = app.build_app()
port = _free_port()
demo.launch(prevent_thread_lock=True, quiet=True, **app.launch_kwargs("127.0.0.1", port, False))
print("@@" + f"http://127.0.0.1:{port}/", flush=True)
sys.stdin.read()  # serve until the parent closes stdin
demo.close()
"""


def _student(index: int, url: str, code: str, n_cases: int, start_file: str) -> int:
    """One student: wait for the start, then open, guess and reveal each case in turn."""
    from gradio_client import Client

    for attempt in range(5):  # 40 clients starting on a loaded 2-core box: /config can be slow
        try:
            client = Client(url, verbose=False, download_files=tempfile.mkdtemp(prefix="bench-quiz-"),
                            httpx_kwargs={"timeout": 300})
            break
        except Exception:  # noqa: BLE001 - retried, then raised
            if attempt == 4:
                raise
            time.sleep(2 + attempt * 3)
    browser = f"bench-student-{index:03d}"
    print(REPLY + json.dumps({"ready": True}), flush=True)
    while not os.path.exists(start_file):
        time.sleep(0.02)
    for case in range(n_cases):
        record: dict[str, Any] = {"case": case}
        try:
            _, _, _, _, info = client.predict(code, case, browser, api_name="/quiz_case")
            choice = info["choices"][(index + case) % len(info["choices"])]
            t = time.perf_counter()
            _, stored = client.predict(code, case, choice, browser, api_name="/quiz_guess")
            record["guess_s"] = time.perf_counter() - t
            record["stored"] = stored["case_id"] == info["case_id"] and stored["guess"] == choice
            t = time.perf_counter()
            client.predict(code, case, browser, api_name="/quiz_reveal")
            record["reveal_s"] = time.perf_counter() - t
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            record["error"] = f"{type(exc).__name__}: {exc}"[:300]
        print(REPLY + json.dumps(record), flush=True)
    return 0


def _start_server(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(ROOT)], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(REPLY):
            return proc, line[len(REPLY):].strip()
    raise RuntimeError(f"the app exited with {proc.wait()} before serving")


def run(quick: bool = False) -> SectionResult:
    from gradio_client import Client

    from bench.models import build_all

    res = SectionResult(13, "Class quiz: 40 students through a 10-case quiz on the running app")
    n_students, n_cases = (QUICK_STUDENTS, QUICK_CASES) if quick else (STUDENTS, CASES)
    scale = "tiny" if quick else "real"
    models = build_all(WORK / "models", scale, names=("lung-effnet-b1",))
    data_dir = Path(tempfile.mkdtemp(prefix="bench-quiz-data-"))
    env = {**os.environ, **models, "MEDLAB_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    server, url = _start_server(env)
    students: list[subprocess.Popen] = []
    try:
        educator = Client(url, verbose=False)
        _, quiz = educator.predict("lung_ct", 24, api_name="/quiz_create")
        code = quiz["code"]
        # Before class the educator opens the tally once (About: "Running a lesson"): that runs
        # the model on every case and stores its answers, so no student waits for a model load.
        t = time.perf_counter()
        educator.predict(code, quiz["secret"], api_name="/quiz_results")
        warm_s = round(time.perf_counter() - t, 1)
        start_file = str(data_dir / "start")
        stderr_log = open(data_dir / "students.log", "w")  # noqa: SIM115 - closed with the students
        for i in range(n_students):
            students.append(subprocess.Popen(
                [sys.executable, "-m", "bench.quiz_load", str(i), url, code, str(n_cases), start_file], cwd=ROOT,
                env=env, stdout=subprocess.PIPE, stderr=stderr_log, text=True))
        for p in students:  # every client connected before anyone starts
            line = p.stdout.readline() if p.stdout else ""
            while line and not line.startswith(REPLY):
                line = p.stdout.readline()
        load_before = loadavg()
        began = time.perf_counter()
        Path(start_file).touch()
        records: list[dict[str, Any]] = []
        for p in students:
            out, _ = p.communicate(timeout=900)
            records += [json.loads(ln[len(REPLY):]) for ln in out.splitlines() if ln.startswith(REPLY)]
        wall = time.perf_counter() - began
    finally:
        for p in students:
            if p.poll() is None:
                p.kill()
        if server.stdin:
            server.stdin.close()
        if students:
            stderr_log.close()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()

    db = data_dir / "classroom" / "quiz.sqlite3"
    con = sqlite3.connect(db)
    try:
        stored_rows = con.execute("SELECT COUNT(*), COUNT(DISTINCT browser_id) FROM guesses WHERE quiz = ?",
                                  (code,)).fetchone()
        journal = con.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        con.close()
    expected = n_students * n_cases
    confirmed = sum(1 for r in records if r.get("stored"))
    errors = [r["error"] for r in records if "error" in r]
    lost = confirmed - min(confirmed, stored_rows[0])  # confirmed to a student but not in the db
    guess = summary([r["guess_s"] for r in records if "guess_s" in r])
    reveal = summary([r["reveal_s"] for r in records if "reveal_s" in r])
    res.rows += [
        Row(f"p95 per guess, {n_students} students at once (/quiz_guess round trip)", guess["p95_ms"], "ms",
            f"<= {GUESS_P95_TARGET_MS:g} ms", check(guess["p95_ms"], "<=", GUESS_P95_TARGET_MS),
            f"median {guess['median_ms']} ms over {guess['n']} guesses"),
        Row("guesses stored in SQLite", stored_rows[0], "", f"= {expected} ({n_students} x {n_cases})",
            stored_rows[0] == expected, f"{stored_rows[1]} distinct students; {len(errors)} calls failed"),
        Row("lost guesses (confirmed to a student, missing from the db)", lost, "", "= 0", lost == 0),
        Row("p95 per reveal (the model's stored answer, Grad-CAM, class guesses)", reveal["p95_ms"], "ms", "", None,
            f"median {reveal['median_ms']} ms"),
    ]
    res.details = {"students": n_students, "cases": n_cases, "guess": guess, "reveal": reveal, "wall_s": round(wall, 1),
                   "expected": expected, "stored": stored_rows[0], "confirmed": confirmed, "errors": errors[:5],
                   "journal_mode": journal, "warm_tally_s": warm_s, "lung_model": models, "load_before": load_before}
    res.load = {"before": load_before, "after": loadavg()}
    res.notes.append(f"The educator's first tally (before class) ran the model on the {CASES} cases and stored the "
                     f"answers: {warm_s} s; the students' reveals then read them.")
    res.notes.append(f"{n_students} student processes (own gradio_client each) started together on the app's own "
                     f"process; {wall:.1f} s for the whole quiz; lung model: {scale}-size random weights.")
    if not records:
        res.status = "error"
        log_text = (data_dir / "students.log").read_text(errors="replace")[-2000:]
        res.notes.append("no student reported anything; their stderr ends: " + log_text)
    elif errors or stored_rows[0] != expected:
        res.status = "partial"
        res.notes.append("failed calls: " + "; ".join(errors[:3]))
    return res


if __name__ == "__main__":
    if len(sys.argv) == 6:
        sys.exit(_student(int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
    from bench.common import apply_env

    apply_env()
    print(json.dumps(run("--quick" in sys.argv).to_dict(), indent=1, default=str))
