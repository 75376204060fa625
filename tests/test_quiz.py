"""The class quiz engine (medlab.classroom.quiz): codes, the hashed secret, one guess per
case, expiry, the 200-student cap, the per-browser rate limit, the tally, kill -9."""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from medlab.classroom import quiz as q
from medlab.classroom.cases import case_set

ROOT = Path(__file__).resolve().parent.parent
CASES = [f"case-{i}" for i in range(10)]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> q.QuizStore:
    return q.QuizStore(tmp_path / "quiz.sqlite3", clock=clock)


def _rows(path: Path, sql: str, *args: object) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def test_codes_are_short_and_unambiguous(store: q.QuizStore) -> None:
    codes = {store.create("lung_ct", CASES).quiz.code for _ in range(50)}
    assert len(codes) == 50
    for code in codes:
        assert re.fullmatch(r"[A-HJ-NP-Z2-9]{6}", code), code
        assert not set(code) & set("01OI")
    one = next(iter(codes))
    assert store.get(one.lower()).code == one  # typed in lower case
    assert store.get(f"{one[:3]}-{one[3:]}").code == one  # or with a dash


def test_the_database_holds_only_a_hash_of_the_secret(store: q.QuizStore) -> None:
    made = store.create("lung_ct", CASES)
    assert len(made.secret) >= 16
    raw = store.path.read_bytes() + (Path(str(store.path) + "-wal").read_bytes()
                                     if Path(str(store.path) + "-wal").exists() else b"")
    assert made.secret.encode() not in raw
    stored = _rows(store.path, "SELECT secret_hash FROM quizzes WHERE code = ?", made.quiz.code)[0][0]
    assert stored == hashlib.sha256(made.secret.encode()).hexdigest()
    assert store.check_secret(made.quiz.code, made.secret).code == made.quiz.code
    with pytest.raises(q.BadSecretError, match="not the educator secret"):
        store.check_secret(made.quiz.code, made.secret + "x")
    with pytest.raises(q.BadSecretError):
        store.check_secret(made.quiz.code, "")


def test_second_guess_on_a_case_is_refused_and_changes_nothing(store: q.QuizStore) -> None:
    code = store.create("lung_ct", CASES).quiz.code
    assert store.guess(code, 0, "browser-aaaa", "benign")["n_guesses"] == 1
    with pytest.raises(q.AlreadyGuessedError, match="already committed a guess for case 1"):
        store.guess(code, 0, "browser-aaaa", "malignant")
    assert _rows(store.path, "SELECT guess FROM guesses WHERE quiz = ?", code) == [("benign",)]
    store.guess(code, 1, "browser-aaaa", "malignant")  # another case is fine
    assert store.count_guesses(code) == 2


def test_an_expired_quiz_refuses_guesses(store: q.QuizStore, clock: Clock) -> None:
    code = store.create("lung_ct", CASES, hours=1).quiz.code
    store.guess(code, 0, "browser-aaaa", "benign")
    clock.now += 3600 - 1
    store.guess(code, 1, "browser-aaaa", "benign")
    clock.now += 1
    with pytest.raises(q.QuizExpiredError, match="expired"):
        store.guess(code, 2, "browser-aaaa", "benign")
    assert store.count_guesses(code) == 2


def test_expired_quiz_tally_still_readable_with_the_secret(store: q.QuizStore, clock: Clock) -> None:
    made = store.create("lung_ct", CASES, hours=0.5)
    store.guess(made.quiz.code, 0, "browser-aaaa", "benign")
    clock.now += 7200
    quiz = store.check_secret(made.quiz.code, made.secret)
    assert store.tally(quiz)[0]["distribution"] == {"benign": 1}


def test_default_expiry_is_24_hours(store: q.QuizStore, clock: Clock) -> None:
    quiz = store.create("lung_ct", CASES).quiz
    assert quiz.expires - quiz.created == 24 * 3600


def test_the_201st_student_is_refused(store: q.QuizStore, clock: Clock) -> None:
    code = store.create("lung_ct", CASES).quiz.code
    for i in range(200):
        store.guess(code, 0, f"student-{i:04d}", "benign")
    with pytest.raises(q.QuizFullError, match="200 students"):
        store.guess(code, 0, "student-9999", "benign")
    assert store.count_guesses(code) == 200
    store.guess(code, 1, "student-0007", "normal")  # students already in go on
    assert store.count_guesses(code) == 201


def test_a_flood_of_guesses_is_rate_limited_and_nothing_stored(store: q.QuizStore, clock: Clock) -> None:
    code = store.create("lung_ct", CASES).quiz.code
    limit, seconds = q.RATE_LIMIT
    refused = 0
    for _ in range(limit):  # the allowed burst (each of them an AlreadyGuessed after the first)
        try:
            store.guess(code, 0, "flooder-1", "benign")
        except q.AlreadyGuessedError:
            pass
    for i in range(50):
        with pytest.raises(q.RateLimitedError, match="Too many guesses"):
            store.guess(code, 1 + i % 9, "flooder-1", "benign")
        refused += 1
    assert refused == 50
    assert _rows(store.path, "SELECT case_id FROM guesses WHERE browser_id = 'flooder-1'") == [("case-0",)]
    store.guess(code, 1, "another-browser", "benign")  # per browser: others are not affected
    clock.now += seconds
    store.guess(code, 1, "flooder-1", "benign")  # after the window, the flooder may guess again
    assert store.count_guesses(code) == 3


@pytest.mark.parametrize("code, message", [("", "No quiz code"), ("ABC", "is not a quiz code"),
                                           ("ABCDE0", "is not a quiz code"), ("ZZZZZZ", "No quiz has the code ZZZZZZ")])
def test_bad_codes_get_a_clear_message(store: q.QuizStore, code: str, message: str) -> None:
    with pytest.raises(q.BadQuizCodeError, match=message):
        store.guess(code, 0, "browser-aaaa", "benign")
    assert _rows(store.path, "SELECT COUNT(*) FROM guesses") == [(0,)]


def test_bad_case_choice_or_browser_id_change_nothing(store: q.QuizStore) -> None:
    code = store.create("lung_ct", CASES).quiz.code
    with pytest.raises(q.InputError, match="cases 0 to 9"):
        store.guess(code, 10, "browser-aaaa", "benign")
    with pytest.raises(q.InputError, match="not one of this case's answers"):
        store.guess(code, 0, "browser-aaaa", "tumour", choices=("benign", "malignant"))
    with pytest.raises(q.InputError, match="browser id"):
        store.guess(code, 0, "x", "benign")
    assert store.count_guesses(code) == 0


def test_tally_equals_an_independent_count(store: q.QuizStore, clock: Clock) -> None:
    made = store.create("lung_ct", CASES)
    rng = random.Random(3)
    choices = ["benign", "malignant", "normal"]
    expected: dict[str, Counter] = {c: Counter() for c in CASES}
    for s in range(40):
        clock.now += 11  # keep each student under the rate limit
        for i, cid in enumerate(CASES):
            if rng.random() < 0.8:
                g = rng.choice(choices)
                store.guess(made.quiz.code, i, f"student-{s:03d}", g)
                expected[cid][g] += 1
            if i == 4:
                clock.now += 11
    tally = store.tally(store.check_secret(made.quiz.code, made.secret))
    assert [row["case_id"] for row in tally] == CASES
    for row in tally:
        assert row["distribution"] == dict(expected[row["case_id"]])
        assert row["n"] == sum(expected[row["case_id"]].values())
    assert store.students(made.quiz) == 40


def test_case_sets_are_honest_about_reference_labels() -> None:
    from medlab.vision import lung_ct

    lung = case_set("lung_ct")
    assert len(lung) >= 10 and all(c.path.is_file() for c in lung)
    assert all(set(lung_ct.classes()) <= set(c.choices) for c in lung)
    refs = {c.case_id: c.reference for c in lung}
    assert refs["lung-cat"] == "not a CT slice (off-domain)"
    assert all(v is None for k, v in refs.items() if k != "lung-cat")  # the slice's diagnosis is not known
    for name in ("skin", "pathology"):
        assert all(c.reference is None or c.reference in c.choices for c in case_set(name))


KILL_SCRIPT = r"""
import sys
from medlab.classroom.quiz import QuizStore
store = QuizStore(sys.argv[1], max_students=10**6, rate_limit=(10**9, 1.0))  # no class-size limits
code = sys.argv[2]
i = 0
while True:
    store.guess(code, 0, f"student-{i:05d}", "benign")
    print(f"COMMITTED student-{i:05d}", flush=True)
    i += 1
"""


def test_kill_9_during_a_quiz_loses_no_committed_guess(tmp_path: Path) -> None:
    path = tmp_path / "quiz.sqlite3"
    store = q.QuizStore(path, max_students=10**6)
    code = store.create("lung_ct", CASES).quiz.code
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(path), code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert proc.stdout is not None
    reported = []
    deadline = time.time() + 120
    for line in proc.stdout:
        if line.startswith("COMMITTED "):
            reported.append(line.split()[1])
        if len(reported) >= 150 or time.time() > deadline:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # the rest of what it reported: the reader's own buffer first (communicate() would read the
    # pipe's file descriptor past it and lose lines already read ahead), then the pipe to its end
    reported += [ln.split()[1] for ln in proc.stdout if ln.startswith("COMMITTED ")]
    err = proc.stderr.read() if proc.stderr is not None else ""
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    assert len(reported) >= 50, err[-2000:]
    stored = {r[0] for r in _rows(path, "SELECT browser_id FROM guesses WHERE quiz = ?", code)}
    missing = set(reported) - stored
    assert not missing, f"lost {len(missing)} committed guesses"
    assert len(stored) - len(reported) in (0, 1)  # at most the one in flight, committed but not yet reported
    assert _rows(path, "PRAGMA integrity_check") == [("ok",)]


# -- the quiz endpoints through the live app (gradio_client) -------------------------------------
def _app_error(fn, *args, api_name: str) -> str:  # noqa: ANN001
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        fn(*args, api_name=api_name)
    return str(info.value)


def test_quiz_endpoints_are_documented_with_defaults(live_app) -> None:
    _, client = live_app
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    create = api["/quiz_create"]["parameters"]
    assert [p["parameter_name"] for p in create] == ["case_set", "hours"]
    assert [p["parameter_default"] for p in create] == ["lung_ct", 24]
    assert [p["parameter_name"] for p in api["/quiz_guess"]["parameters"]] == ["code", "index", "guess", "browser_id"]
    assert [p["parameter_name"] for p in api["/quiz_results"]["parameters"]] == ["code", "secret"]
    for name in ("/quiz_case", "/quiz_reveal"):
        assert [p["parameter_name"] for p in api[name]["parameters"]] == ["code", "index", "browser_id"]


def test_a_quiz_through_the_api(live_app) -> None:
    from medlab.classroom.cases import LUNG_DEFER, LUNG_OFF_DOMAIN, get_case, model_input
    from medlab.vision.lung_ct import classify_lung

    _, client = live_app
    md, quiz = client.predict("lung_ct", 2, api_name="/quiz_create")
    code, secret = quiz["code"], quiz["secret"]
    assert re.fullmatch(r"[A-HJ-NP-Z2-9]{6}", code) and secret in md and f"?quiz={code}" in quiz["student_link"]
    db = Path(os.environ["MEDLAB_DATA_DIR"]) / "classroom" / "quiz.sqlite3"
    assert _rows(db, "SELECT secret_hash FROM quizzes WHERE code = ?", code) == [(hashlib.sha256(secret.encode()).hexdigest(),)]
    assert quiz["expires"] - _rows(db, "SELECT created FROM quizzes WHERE code = ?", code)[0][0] == pytest.approx(7200)

    status, _, question, _, case = client.predict(code, 9, "student-api-1", api_name="/quiz_case")
    assert case["case_id"] == "lung-cat" and case["your_guess"] is None and "Case 10 of 10" in status
    # guess first: no answer before a guess
    assert "Commit your guess first" in _app_error(client.predict, code, 9, "student-api-1", api_name="/quiz_reveal")
    _, stored = client.predict(code, 9, "benign", "student-api-1", api_name="/quiz_guess")
    assert stored == {"quiz": code, "case": 9, "case_id": "lung-cat", "guess": "benign", "n_guesses": 1}
    assert "already committed" in _app_error(client.predict, code, 9, "normal", "student-api-1", api_name="/quiz_guess")
    client.predict(code, 9, LUNG_OFF_DOMAIN, "student-api-2", api_name="/quiz_guess")
    md, probs, overlay, shares, reveal = client.predict(code, 9, "student-api-1", api_name="/quiz_reveal")
    assert reveal["your_guess"] == "benign" and reveal["distribution"] == {"benign": 1, LUNG_OFF_DOMAIN: 1}
    assert reveal["reference"] == LUNG_OFF_DOMAIN and overlay  # the lung reveal carries the Grad-CAM
    # the model's answer is the engine's, computed here independently on the same input
    path, kwargs = model_input(get_case("lung-cat"))
    engine = classify_lung(path, **kwargs)
    expected = LUNG_OFF_DOMAIN if engine.gate.flagged else LUNG_DEFER if engine.defer.deferred else engine.defer.top_label
    assert reveal["model_answer"] == expected
    assert reveal["probabilities"] == pytest.approx(engine.probabilities, abs=1e-5)

    assert "not the educator secret" in _app_error(client.predict, code, "guess", api_name="/quiz_results")
    _, table, tally = client.predict(code, secret, api_name="/quiz_results")
    assert tally["students"] == 2 and len(tally["cases"]) == 10
    cat = tally["cases"][9]
    assert cat["n"] == 2 and cat["students_right"] == 1 and cat["model_answer"] == expected
    assert cat["model_right"] == (expected == LUNG_OFF_DOMAIN)
    assert all(c["reference"] is None and c["model_right"] is None for c in tally["cases"][:9])
    assert sum(c["n"] for c in tally["cases"]) == _rows(db, "SELECT COUNT(*) FROM guesses WHERE quiz = ?", code)[0][0]
    assert "no reference label" in str(table)


@pytest.mark.parametrize(("args", "message"), [
    (("ZZZZZZ", 0, "benign", "student-api-9"), "No quiz has the code ZZZZZZ"),
    (("hello", 0, "benign", "student-api-9"), "is not a quiz code"),
])
def test_bad_codes_through_the_api(live_app, args: tuple, message: str) -> None:
    _, client = live_app
    assert message in _app_error(client.predict, *args, api_name="/quiz_guess")
