"""The class quiz ("guess first"): quizzes, anonymous guesses and tallies in SQLite.

No accounts and no names: a student is an anonymous per-browser id. An educator creates a
quiz on a case set and gets a short code (for the students) and a secret (for the tally),
shown once; only a SHA-256 of the secret is stored and it is compared with
hmac.compare_digest.

Durability: WAL journal with synchronous=FULL. In WAL mode a transaction is committed once
its frames are in the -wal file; a process killed with SIGKILL after commit() returned loses
nothing even with NORMAL (the OS holds the written pages). FULL also fsyncs the WAL on every
commit, so a committed guess survives a power cut or a VM reset too; it costs one fsync per
guess (milliseconds), which a class of 40 to 200 students never notices.

Rate limit: a sliding window per browser id (default 10 guess attempts per 10 s), kept in
memory in this process. A flood is rejected before the database is touched, so it costs
neither disk writes nor a lock; the app serves from one process, and a restart forgetting the
window is harmless (the UNIQUE constraint still allows one guess per case)."""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlab.core.errors import InputError, MedlabError

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I (read aloud, typed from a board)
CODE_LENGTH = 6
DEFAULT_HOURS = 24.0
MAX_HOURS = 24.0 * 14
MAX_STUDENTS = 200
RATE_LIMIT = (10, 10.0)  # guess attempts per browser per seconds
MAX_ACTIVE_QUIZZES = 1000  # unexpired quizzes at once: creating more is refused (disk, abuse)
BROWSER_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS quizzes (
    code TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    case_set TEXT NOT NULL,
    case_ids TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS guesses (
    quiz TEXT NOT NULL REFERENCES quizzes(code),
    case_id TEXT NOT NULL,
    browser_id TEXT NOT NULL,
    guess TEXT NOT NULL,
    time REAL NOT NULL,
    UNIQUE (quiz, case_id, browser_id)
);
CREATE INDEX IF NOT EXISTS guesses_by_quiz_browser ON guesses (quiz, browser_id);
CREATE TABLE IF NOT EXISTS answers (
    quiz TEXT NOT NULL REFERENCES quizzes(code),
    case_id TEXT NOT NULL,
    answer TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (quiz, case_id)
);
"""


# -- errors: each message says what happened and what to do ------------------------------------
class QuizError(InputError):
    """Base of every quiz refusal (bad code, expired, second guess, full, flood)."""


class BadQuizCodeError(QuizError):
    """The code is malformed or names no quiz."""


class QuizExpiredError(QuizError):
    """The quiz is past its expiry time."""


class AlreadyGuessedError(QuizError):
    """This browser has already committed a guess for this case."""


class QuizFullError(QuizError):
    """The quiz already has the maximum number of students."""


class RateLimitedError(QuizError):
    """Too many guess attempts from one browser in a short time."""


class BadSecretError(QuizError):
    """The educator secret does not match the quiz."""


class NotGuessedYetError(QuizError):
    """The model's answer is shown only after this browser committed its guess."""


class QuizStorageError(MedlabError):
    """The quiz database cannot be written (disk full, permissions)."""


def normalise_code(code: str | None) -> str:
    """Upper-case, without spaces or dashes; BadQuizCodeError when it cannot be a code."""
    text = re.sub(r"[\s-]+", "", str(code or "")).upper()
    if not text:
        raise BadQuizCodeError("No quiz code was given. Type the 6-character code your educator shows.")
    if len(text) != CODE_LENGTH or any(c not in CODE_ALPHABET for c in text):
        raise BadQuizCodeError(
            f"{str(code).strip()[:20]!r} is not a quiz code: codes have {CODE_LENGTH} characters from "
            f"{CODE_ALPHABET} (no 0, O, 1 or I). Check the code on the board.")
    return text


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def check_browser_id(browser_id: str | None) -> str:
    value = str(browser_id or "").strip()
    if not BROWSER_ID.match(value):
        raise InputError("A browser id is needed: 8 to 64 letters, digits, '-' or '_' (the page makes one; API "
                         "callers pass their own random one, the same for every guess of one student).")
    return value


@dataclass(frozen=True)
class Quiz:
    code: str
    case_set: str
    case_ids: tuple[str, ...]
    created: float
    expires: float

    def expired(self, now: float) -> bool:
        return now >= self.expires


@dataclass(frozen=True)
class Created:
    quiz: Quiz
    secret: str  # shown once; only its hash is stored


class SlidingWindow:
    """At most `limit` events per `seconds` per key (in memory, thread-safe)."""

    def __init__(self, limit: int, seconds: float, clock: Callable[[], float]) -> None:
        self.limit, self.seconds, self.clock = limit, seconds, clock
        self._events: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> float:
        """0 when allowed (and counted); else the seconds to wait."""
        now = self.clock()
        with self._lock:
            q = self._events.setdefault(key, collections.deque())
            while q and q[0] <= now - self.seconds:
                q.popleft()
            if len(q) >= self.limit:
                return max(0.1, q[0] + self.seconds - now)
            q.append(now)
            if len(self._events) > 10_000:  # forget idle browsers
                for k in [k for k, v in self._events.items() if not v or v[-1] <= now - self.seconds]:
                    del self._events[k]
            return 0.0


class QuizStore:
    """Quizzes and guesses in one SQLite file (WAL, synchronous=FULL). Thread-safe: one
    connection per thread; every write is one short IMMEDIATE transaction."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time,
                 max_students: int = MAX_STUDENTS, rate_limit: tuple[int, float] = RATE_LIMIT) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.max_students = max_students
        self.window = SlidingWindow(rate_limit[0], rate_limit[1], clock)
        self._local = threading.local()
        self._con().executescript(SCHEMA)

    # -- connections --------------------------------------------------------------------------
    def _con(self) -> sqlite3.Connection:
        """This thread's connection (autocommit: a read is its own snapshot; WAL readers never
        wait for the writer)."""
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("PRAGMA busy_timeout=30000")
            self._local.con = con
        return con

    def _read(self) -> _Read:
        return _Read(self._con())

    def _write(self) -> _Transaction:
        """`with self._write() as con:` = one BEGIN IMMEDIATE ... COMMIT: check-then-insert
        (the student cap) cannot interleave with another writer."""
        return _Transaction(self._con())

    # -- quizzes ------------------------------------------------------------------------------
    def create(self, case_set: str, case_ids: Sequence[str], hours: float = DEFAULT_HOURS) -> Created:
        try:
            hours = float(hours)
        except (TypeError, ValueError):
            raise InputError(f"Expiry must be a number of hours, not {hours!r}.") from None
        if not 0 < hours <= MAX_HOURS:
            raise InputError(f"Expiry must be more than 0 and at most {MAX_HOURS:g} hours (got {hours:g}).")
        ids = tuple(str(c) for c in case_ids)
        if not ids:
            raise InputError("A quiz needs at least one case.")
        if len(set(ids)) != len(ids):
            raise InputError("A case appears twice in the quiz.")
        now = self.clock()
        secret = secrets.token_urlsafe(12)
        with self._write() as con:
            active = con.execute("SELECT COUNT(*) FROM quizzes WHERE expires > ?", (now,)).fetchone()[0]
            if active >= MAX_ACTIVE_QUIZZES:
                raise QuizFullError(f"{active} quizzes are running on this server, the most it keeps at once; "
                                    "try again when one has expired.")
            for _ in range(20):
                code = new_code()
                if con.execute("SELECT 1 FROM quizzes WHERE code = ?", (code,)).fetchone() is None:
                    break
            else:  # 32**6 codes: only reachable with a broken random source
                raise QuizStorageError("Could not find a free quiz code.")
            con.execute("INSERT INTO quizzes VALUES (?, ?, ?, ?, ?, ?)",
                        (code, secret_hash(secret), case_set, json.dumps(ids), now, now + hours * 3600.0))
        return Created(Quiz(code, case_set, ids, now, now + hours * 3600.0), secret)

    def get(self, code: str | None, *, allow_expired: bool = False) -> Quiz:
        norm = normalise_code(code)
        with self._read() as con:
            row = con.execute("SELECT code, case_set, case_ids, created, expires FROM quizzes WHERE code = ?",
                              (norm,)).fetchone()
        if row is None:
            raise BadQuizCodeError(f"No quiz has the code {norm}. Check the code on the board (it may be from "
                                   "another server or mistyped).")
        quiz = Quiz(row[0], row[1], tuple(json.loads(row[2])), row[3], row[4])
        if not allow_expired and quiz.expired(self.clock()):
            raise QuizExpiredError(f"Quiz {norm} expired at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(quiz.expires))}. "
                                   "Ask your educator for a new code.")
        return quiz

    def check_secret(self, code: str | None, secret: str | None) -> Quiz:
        quiz = self.get(code, allow_expired=True)  # the tally stays readable after the class
        with self._read() as con:
            stored = con.execute("SELECT secret_hash FROM quizzes WHERE code = ?", (quiz.code,)).fetchone()[0]
        if not hmac.compare_digest(stored, secret_hash(str(secret or "").strip())):
            raise BadSecretError(f"That is not the educator secret of quiz {quiz.code}. It was shown once, when the "
                                 "quiz was created.")
        return quiz

    # -- guesses ------------------------------------------------------------------------------
    def case_index(self, quiz: Quiz, index: Any) -> str:
        try:
            i = int(index)
        except (TypeError, ValueError):
            raise InputError(f"Case number must be a whole number, not {index!r}.") from None
        if not 0 <= i < len(quiz.case_ids):
            raise InputError(f"Quiz {quiz.code} has cases 0 to {len(quiz.case_ids) - 1}; there is no case {i}.")
        return quiz.case_ids[i]

    def guess(self, code: str | None, index: Any, browser_id: str | None, guess: str,
              choices: Sequence[str] | None = None) -> dict[str, Any]:
        """Commit one guess. Returns {"case_id", "guess", "n_guesses"} once it is durable."""
        browser = check_browser_id(browser_id)
        wait = self.window.allow(browser)
        if wait:
            raise RateLimitedError(f"Too many guesses from this browser: at most {self.window.limit} per "
                                   f"{self.window.seconds:g} s. Wait {wait:.0f} s; nothing was stored.")
        quiz = self.get(code)
        case_id = self.case_index(quiz, index)
        guess = str(guess or "").strip()
        if not guess:
            raise InputError("Choose an answer before committing your guess.")
        if choices is not None and guess not in choices:
            raise InputError(f"{guess[:40]!r} is not one of this case's answers: {', '.join(choices)}.")
        now = self.clock()
        try:
            with self._write() as con:
                known = con.execute("SELECT 1 FROM guesses WHERE quiz = ? AND browser_id = ? LIMIT 1",
                                    (quiz.code, browser)).fetchone()
                if known is None:
                    students = con.execute("SELECT COUNT(DISTINCT browser_id) FROM guesses WHERE quiz = ?",
                                           (quiz.code,)).fetchone()[0]
                    if students >= self.max_students:
                        raise QuizFullError(f"Quiz {quiz.code} already has {students} students, the most one quiz "
                                            "takes. Watch a classmate's screen, or ask for a second quiz.")
                try:
                    con.execute("INSERT INTO guesses VALUES (?, ?, ?, ?, ?)", (quiz.code, case_id, browser, guess, now))
                except sqlite3.IntegrityError:
                    raise AlreadyGuessedError(f"You already committed a guess for case {int(index) + 1} of quiz "
                                              f"{quiz.code}; one guess per case. Your first guess stands.") from None
                n = con.execute("SELECT COUNT(*) FROM guesses WHERE quiz = ? AND case_id = ?",
                                (quiz.code, case_id)).fetchone()[0]
        except sqlite3.OperationalError as exc:
            raise QuizStorageError(f"The quiz database could not store the guess ({exc}). Try again.") from exc
        return {"quiz": quiz.code, "case": int(index), "case_id": case_id, "guess": guess, "n_guesses": n}

    def guess_of(self, quiz: Quiz, case_id: str, browser_id: str | None) -> str | None:
        browser = check_browser_id(browser_id)
        with self._read() as con:
            row = con.execute("SELECT guess FROM guesses WHERE quiz = ? AND case_id = ? AND browser_id = ?",
                              (quiz.code, case_id, browser)).fetchone()
        return row[0] if row else None

    def distribution(self, quiz: Quiz, case_id: str) -> dict[str, int]:
        with self._read() as con:
            rows = con.execute("SELECT guess, COUNT(*) FROM guesses WHERE quiz = ? AND case_id = ? GROUP BY guess",
                               (quiz.code, case_id)).fetchall()
        return {g: n for g, n in rows}

    def students(self, quiz: Quiz) -> int:
        with self._read() as con:
            return con.execute("SELECT COUNT(DISTINCT browser_id) FROM guesses WHERE quiz = ?",
                               (quiz.code,)).fetchone()[0]

    def count_guesses(self, code: str) -> int:
        with self._read() as con:
            return con.execute("SELECT COUNT(*) FROM guesses WHERE quiz = ?", (normalise_code(code),)).fetchone()[0]

    # -- the model's answers (computed once per quiz and case, on first reveal) -----------------
    def answer(self, quiz: Quiz, case_id: str) -> tuple[str, dict[str, Any]] | None:
        with self._read() as con:
            row = con.execute("SELECT answer, detail FROM answers WHERE quiz = ? AND case_id = ?",
                              (quiz.code, case_id)).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def store_answer(self, quiz: Quiz, case_id: str, answer: str, detail: dict[str, Any]) -> None:
        with self._write() as con:
            con.execute("INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?)",
                        (quiz.code, case_id, answer, json.dumps(detail, default=str)))

    def tally(self, quiz: Quiz) -> list[dict[str, Any]]:
        """Per case, in quiz order: {"case", "case_id", "n", "distribution"}."""
        return [{"case": i, "case_id": cid, "distribution": (d := self.distribution(quiz, cid)), "n": sum(d.values())}
                for i, cid in enumerate(quiz.case_ids)]


class _Read:
    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def __enter__(self) -> sqlite3.Connection:
        return self.con

    def __exit__(self, *_: Any) -> None:
        return None


class _Transaction:
    """`with store._connect() as con:` = one BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def __enter__(self) -> sqlite3.Connection:
        self.con.execute("BEGIN IMMEDIATE")
        return self.con

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.con.execute("ROLLBACK" if exc_type else "COMMIT")


_STORE: QuizStore | None = None
_STORE_LOCK = threading.Lock()


def default_store() -> QuizStore:
    """The app's store: MEDLAB_DATA_DIR/classroom/quiz.sqlite3 (re-opened when the dir changes)."""
    global _STORE
    from medlab.core.config import load_settings

    path = load_settings().data_dir / "classroom" / "quiz.sqlite3"
    with _STORE_LOCK:
        if _STORE is None or _STORE.path != path:
            _STORE = QuizStore(path)
        return _STORE
