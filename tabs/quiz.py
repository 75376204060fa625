"""Class quiz tab ("guess first"): an educator creates a quiz on a tab's case set and gets a
code (for the students) and a secret (for the tally, shown once); students open the code or
a `?quiz=CODE` link, commit a guess per case, then see the model's answer, its explanation
and the class's guesses so far. Engine: medlab.classroom (SQLite under MEDLAB_DATA_DIR).

API: /quiz_create, /quiz_case, /quiz_guess, /quiz_reveal, /quiz_results. The guess is pure
SQLite (its own lane); the reveal and the educator's tally run the case's model (GPU lane,
once per quiz and case: the answer is stored)."""

from __future__ import annotations

import secrets
import threading
from pathlib import Path
from typing import Any

import gradio as gr

from tabs import deep_links
from tabs.common import Lane, disclaimer, model_event, progress_callback, ui_errors
from tabs.i18n import translate

TITLE = "Class quiz"
TAB_ID = "quiz"

BROWSER_STORAGE_KEY = "medlab-quiz-browser"
# BrowserState encrypts what it keeps in localStorage with this secret. The value is an
# anonymous random id (not a credential): a fixed secret keeps it readable across restarts,
# so a student stays one student (and keeps one guess per case) when the Space restarts.
BROWSER_STORAGE_SECRET = "medlab-quiz-anonymous-browser-id"
# Two lanes of their own: a guess (one SQLite commit) never waits behind reveals and case views.
GUESS_LANE = ("quiz_guess", 8)  # short write transactions, serialised by SQLite itself
READ_LANE = ("quiz_read", 8)  # case views and reveals: SQLite reads and stored answers
HEADERS = ["case", "title", "guesses", "class guesses", "model's answer", "reference label",
           "students = reference", "model = reference", "students = model"]

_answer_locks: dict[tuple[str, str], threading.Lock] = {}
_answer_locks_guard = threading.Lock()
# The reveal is a quiz-lane event: 40 students reading stored answers must not queue behind the
# 2 model slots. The one model run per case (when the educator has not warmed the quiz) takes
# one of these slots, as many as the GPU lane has, inside spaces.GPU on ZeroGPU.
_MODEL_SLOTS = threading.BoundedSemaphore(Lane.GPU.limit)
ANSWER_GPU_SECONDS = 30


def _store() -> Any:
    from medlab.classroom.quiz import default_store

    return default_store()


_quiz_cases: dict[str, dict[str, Any]] = {}  # quiz code -> {case id: Case}, fixed for the quiz's life


def _case(quiz: Any, index: Any) -> Any:
    """The quiz's case (its choices read from the engine once per quiz and process, so a model
    switched mid-quiz does not change the answers students choose from)."""
    from medlab.classroom.cases import case_set

    case_id = _store().case_index(quiz, index)
    cases = _quiz_cases.get(quiz.code)
    if cases is None or case_id not in cases:
        cases = _quiz_cases[quiz.code] = {c.case_id: c for c in case_set(quiz.case_set)}
        if len(_quiz_cases) > 2000:
            _quiz_cases.clear()
    if case_id not in cases:
        from medlab.classroom.cases import get_case

        return get_case(case_id)  # raises with the unknown id
    return cases[case_id]


def _origin(request: gr.Request | None) -> str:
    """The page's own address as the browser sees it (behind a proxy: the forwarded host)."""
    if request is None:
        return ""
    try:
        headers = request.headers
        host = headers.get("x-forwarded-host") or headers.get("host") or ""
        proto = headers.get("x-forwarded-proto") or ("https" if str(headers.get("origin", "")).startswith("https") else "http")
        origin = headers.get("origin")
        if origin and not headers.get("x-forwarded-host"):
            return origin.rstrip("/")
        return f"{proto.split(',')[0].strip()}://{host.split(',')[0].strip()}" if host else ""
    except Exception:  # noqa: BLE001 - a request without headers: a relative link still works
        return ""


def new_browser_id() -> str:
    return "b-" + secrets.token_urlsafe(16)


# -- educator -----------------------------------------------------------------------------------
@ui_errors
def quiz_create(case_set: str = "lung_ct", hours: float = 24.0, request: gr.Request = None) -> tuple[str, dict[str, Any]]:
    """Create a class quiz on one tab's case set and return its code, the student link and the educator secret.

    The secret is shown only in this reply (the server keeps a hash of it): it is needed for /quiz_results.
    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        case_set: which example set to quiz on: "lung_ct" (default, 10 cases), "skin" or "pathology".
        hours: how long students may guess, in hours (default 24; at most 336).

    Returns:
        created: Markdown with the code, the student link and the educator secret
        quiz: JSON {"code", "secret", "student_link", "case_set", "cases", "expires"}
    """
    import time

    from medlab.classroom.cases import case_set as cases_of

    cases = cases_of(case_set)
    made = _store().create(case_set, [c.case_id for c in cases], hours)
    code = made.quiz.code
    link = f"{_origin(request)}/?quiz={code}"
    expires = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(made.quiz.expires))
    md = translate("runtime.quiz_created", code=code, link=link, secret=made.secret, n=len(cases), expires=expires)
    return md, {"code": code, "secret": made.secret, "student_link": link, "case_set": case_set,
                "cases": [c.case_id for c in cases], "expires": made.quiz.expires}


def _percent(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "–"


@ui_errors
def quiz_results(code: str, secret: str = "", progress: gr.Progress = gr.Progress()) -> tuple[str, Any, dict[str, Any]]:
    """The educator's tally of a quiz: per case, the class's guesses vs the model's answer vs the reference label.

    Needs the educator secret shown when the quiz was created. Runs the model for cases nobody has revealed yet.
    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        code: the quiz code (6 characters).
        secret: the educator secret of that quiz.

    Returns:
        overview: Markdown summary (students, guesses, expiry)
        tally: table, one row per case
        tally_json: the same as JSON
    """
    import time

    store = _store()
    quiz = store.check_secret(code, secret)
    rows, out = [], []
    for row in store.tally(quiz):
        case = _case(quiz, row["case"])
        answer = _model_answer(quiz, case, progress, in_gpu_event=True)["answer"]
        dist, n = row["distribution"], row["n"]
        ref = case.reference
        dist_text = " · ".join(f"{g} {k}" for g, k in sorted(dist.items(), key=lambda kv: -kv[1])) or "–"
        no_ref = translate("runtime.quiz_no_reference")
        rows.append([row["case"] + 1, case.title, n, dist_text, answer, ref if ref is not None else no_ref,
                     _percent(dist.get(ref, 0), n) if ref is not None else "–",
                     ("yes" if answer == ref else "no") if ref is not None else "–",
                     _percent(dist.get(answer, 0), n)])
        out.append({"case": row["case"], "case_id": case.case_id, "title": case.title, "n": n, "distribution": dist,
                    "model_answer": answer, "reference": ref, "reference_source": case.reference_source,
                    "students_right": dist.get(ref, 0) if ref is not None else None,
                    "model_right": (answer == ref) if ref is not None else None,
                    "students_agree_with_model": dist.get(answer, 0)})
    expired = quiz.expired(store.clock())
    md = translate("runtime.quiz_overview", code=quiz.code, students=store.students(quiz),
                   guesses=sum(r["n"] for r in out), n=len(out),
                   state=translate("runtime.quiz_state_expired") if expired else translate("runtime.quiz_state_open"),
                   expires=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(quiz.expires)))
    table = gr.Dataframe(value=rows, headers=[translate(h) for h in HEADERS])
    return md, table, {"code": quiz.code, "students": store.students(quiz), "expired": expired, "cases": out}


# -- the model's answer, once per quiz and case ---------------------------------------------------
def _answer_dir(code: str) -> Path:
    from medlab.core.config import load_settings

    return load_settings().data_dir / "classroom" / "answers" / code


def _model_answer(quiz: Any, case: Any, progress: Any = None, in_gpu_event: bool = False) -> dict[str, Any]:
    """{"answer", "probabilities", "explanation", "overlay" (path or None)}: stored on first use."""
    store = _store()
    cached = store.answer(quiz, case.case_id)
    if cached is not None:
        return cached[1]
    with _answer_locks_guard:
        lock = _answer_locks.setdefault((quiz.code, case.case_id), threading.Lock())
    with lock:  # single flight: 40 students revealing at once run the model once
        cached = store.answer(quiz, case.case_id)
        if cached is not None:
            return cached[1]
        from medlab.classroom.cases import model_answer
        from medlab.core.zerogpu import gpu

        report = progress_callback(progress) if isinstance(progress, gr.Progress) else None
        with _MODEL_SLOTS:
            run = model_answer if in_gpu_event else gpu(ANSWER_GPU_SECONDS)(model_answer)  # never nested
            result = run(case, progress=report)
        overlay = None
        if result.overlay is not None:
            folder = _answer_dir(quiz.code)
            folder.mkdir(parents=True, exist_ok=True)
            overlay = folder / f"{case.case_id}.png"
            result.overlay.save(overlay, format="PNG")
        detail = {"answer": result.answer, "probabilities": result.probabilities, "explanation": result.explanation,
                  "overlay": str(overlay) if overlay else None}
        store.store_answer(quiz, case.case_id, result.answer, detail)
        return detail


# -- students -----------------------------------------------------------------------------------
def served_folders(data_dir: Path) -> list[Path]:
    """Folders of the data dir whose files the quiz returns: the case images (rendered from
    assets/) and the stored Grad-CAM overlays of those cases; no user data lives there."""
    return [data_dir / "classroom" / "cases", data_dir / "classroom" / "answers"]


@ui_errors
def quiz_case(code: str, index: float = 0, browser_id: str = "") -> tuple[Any, ...]:
    """Show one case of a class quiz: the image, the question and the answer choices (not the model's answer).

    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        code: the quiz code (6 characters) from the educator.
        index: which case, from 0 (default 0).
        browser_id: this student's anonymous id (any random 8-64 letters/digits, the same for every call); optional here.

    Returns:
        progress: Markdown: case n of N, and the guess already committed, if any
        image: the case image
        question: Markdown with the question and where the image comes from
        choices: the answer choices (a radio)
        case: JSON {"code", "index", "n_cases", "case_id", "title", "choices", "your_guess"}
    """
    from medlab.classroom.cases import case_image_path

    store = _store()
    quiz = store.get(code)
    i = int(index or 0)
    case = _case(quiz, i)
    mine = store.guess_of(quiz, case.case_id, browser_id) if browser_id else None
    head = translate("runtime.quiz_case_of", i=i + 1, n=len(quiz.case_ids), code=quiz.code)
    if mine is not None:
        head += " " + translate("runtime.quiz_already", guess=mine)
    question = f"**{case.title}.** {case.question}\n\n*{case.teaching_point}* ({case.attribution})"
    radio = gr.Radio(choices=list(case.choices), value=mine, interactive=mine is None)
    return head, str(case_image_path(case)), question, radio, {
        "code": quiz.code, "index": i, "n_cases": len(quiz.case_ids), "case_id": case.case_id, "title": case.title,
        "choices": list(case.choices), "your_guess": mine}


@ui_errors
def quiz_guess(code: str, index: float = 0, guess: str = "", browser_id: str = "") -> tuple[str, dict[str, Any]]:
    """Commit this student's guess for one case of a class quiz (one guess per case; it cannot be changed).

    Refused with a clear message, storing nothing, for a bad code, an expired quiz, a second guess on the same case,
    a full quiz (200 students) or a flood of guesses from one browser.
    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        code: the quiz code (6 characters).
        index: which case, from 0 (default 0).
        guess: one of the case's answer choices (see /quiz_case).
        browser_id: this student's anonymous id: 8-64 letters, digits, '-' or '_', the same for every guess.

    Returns:
        status: Markdown confirming the stored guess
        stored: JSON {"quiz", "case", "case_id", "guess", "n_guesses"}
    """
    store = _store()
    quiz = store.get(code)
    case = _case(quiz, index)
    stored = store.guess(quiz.code, index, browser_id, guess, choices=case.choices)
    return translate("runtime.quiz_guess_stored", guess=stored["guess"], n=stored["n_guesses"]), stored


@ui_errors
def quiz_reveal(code: str, index: float = 0, browser_id: str = "", progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
    """After this student committed a guess: the model's answer for the case, its explanation and the class's guesses so far.

    Refused until this browser has committed its guess for the case (guess first).
    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        code: the quiz code (6 characters).
        index: which case, from 0 (default 0).
        browser_id: the same anonymous id the guess was committed with.

    Returns:
        answer: Markdown: your guess, the model's answer and its explanation
        probabilities: the model's probabilities
        overlay: the Grad-CAM overlay (lung cases) or null
        class_guesses: the class's guesses so far, as shares
        reveal: JSON {"your_guess", "model_answer", "probabilities", "distribution", "n_guesses"}
    """
    from medlab.classroom.quiz import NotGuessedYetError

    store = _store()
    quiz = store.get(code, allow_expired=True)  # a committed guess may still be revealed after the end
    case = _case(quiz, index)
    mine = store.guess_of(quiz, case.case_id, browser_id)
    if mine is None:
        raise NotGuessedYetError("Commit your guess first: the model's answer is shown only after you have guessed.")
    answer = _model_answer(quiz, case, progress)
    dist = store.distribution(quiz, case.case_id)
    n = sum(dist.values())
    verdict = translate("runtime.quiz_same" if mine == answer["answer"] else "runtime.quiz_different")
    ref = case.reference
    ref_text = translate("runtime.quiz_reference", ref=ref, source=case.reference_source) if ref is not None else \
        translate("runtime.quiz_no_reference_because", source=case.reference_source)
    md = translate("runtime.quiz_reveal", guess=mine, answer=answer["answer"], verdict=verdict) + "\n\n" + ref_text + \
        "\n\n" + answer["explanation"]
    shares = {g: k / n for g, k in dist.items()} if n else {}
    overlay = answer["overlay"] if answer.get("overlay") and Path(answer["overlay"]).is_file() else None
    return md, answer["probabilities"], overlay, shares, {
        "your_guess": mine, "model_answer": answer["answer"], "probabilities": answer["probabilities"],
        "reference": ref, "distribution": dist, "n_guesses": n}


# -- UI -----------------------------------------------------------------------------------------
def _ensure_browser_id(stored: str | None) -> tuple[str, str]:
    from medlab.classroom.quiz import BROWSER_ID

    value = stored if isinstance(stored, str) and BROWSER_ID.match(stored) else new_browser_id()
    return value, value


def _reveal_if_guessed(code: str, index: float, browser_id: str, case: dict[str, Any] | None,
                       progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
    """Back on a case this browser already guessed: show its answer again (never before a guess)."""
    if not isinstance(case, dict) or case.get("your_guess") is None or case.get("index") != int(index or 0):
        return tuple(gr.update() for _ in range(5))
    return quiz_reveal(code, index, browser_id, progress)


def _step(index: float, delta: int, summary: dict[str, Any] | None) -> float:
    n = int((summary or {}).get("n_cases") or 1)
    return float(min(max(int(index or 0) + delta, 0), n - 1))


def _clear_reveal() -> tuple[Any, ...]:
    return "", None, gr.Image(value=None, visible=False), None


def _show_reveal(md: str, probs: Any, overlay: Any, shares: Any, _summary: Any) -> Any:
    return gr.Image(visible=overlay is not None)


def build() -> None:
    from medlab.classroom.cases import case_set_names, describe

    disclaimer()
    gr.Markdown("### Class quiz: guess first\nYour educator shows a **quiz code** (or shares a link with it). For each "
                "case, **commit your guess before you see the model's answer**; then compare it with the model's "
                "answer, its explanation and what the class guessed. No names and no accounts: this browser gets an "
                "anonymous id.")
    browser_state = gr.BrowserState(None, storage_key=BROWSER_STORAGE_KEY, secret=BROWSER_STORAGE_SECRET)
    browser_id = gr.Textbox(visible=False, label="browser id", elem_id="quiz-browser-id")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            with gr.Row():
                code = gr.Textbox(label="Quiz code", placeholder="e.g. K7PQ3M", max_lines=1, elem_id="quiz-code", scale=3)
                open_btn = gr.Button("Open the quiz", variant="primary", elem_id="quiz-open", scale=1)
            index = gr.Number(value=0, precision=0, visible=False, label="case index", elem_id="quiz-index")
            status = gr.Markdown("", elem_id="quiz-status")
            with gr.Row(equal_height=False):
                with gr.Column():
                    image = gr.Image(label="Case", type="pil", interactive=False, height=320, elem_id="quiz-image")
                with gr.Column():
                    question = gr.Markdown("", elem_id="quiz-question")
                    choice = gr.Radio([], label="Your guess", elem_id="quiz-choice")
                    commit = gr.Button("Commit my guess", variant="primary", elem_id="quiz-commit")
                    stored = gr.Markdown("", elem_id="quiz-stored")
                    with gr.Row():
                        prev_btn = gr.Button("← Previous case", size="sm", elem_id="quiz-prev")
                        next_btn = gr.Button("Next case →", size="sm", elem_id="quiz-next")
            answer = gr.Markdown("", elem_id="quiz-answer")
            with gr.Row(equal_height=False):
                probs = gr.Label(label="The model's probabilities", num_top_classes=10, show_heading=False,
                                 elem_id="quiz-probs")
                shares = gr.Label(label="The class's guesses so far", num_top_classes=10, show_heading=False,
                                  elem_id="quiz-shares")
            overlay = gr.Image(label="Grad-CAM: where the model looked", type="pil", interactive=False, visible=False,
                               height=320, elem_id="quiz-overlay")
            with gr.Accordion("Case (JSON, as returned by /quiz_case)", open=False):
                case_json = gr.JSON(label="case")
                reveal_json = gr.JSON(label="reveal")
        with gr.Column(scale=2):
            with gr.Accordion("Educator: start a quiz", open=True, elem_id="quiz-educator"):
                sets = case_set_names()
                case_set = gr.Dropdown([(describe(s), s) for s in sets], value=sets[0], label="Case set (a tab's examples)",
                                       elem_id="quiz-case-set")
                hours = gr.Number(value=24, label="Open for (hours)", minimum=0.25, maximum=336, elem_id="quiz-hours")
                create = gr.Button("Create the quiz", variant="primary", elem_id="quiz-create")
                created = gr.Markdown("", elem_id="quiz-created")
                with gr.Accordion("Created quiz (JSON)", open=False):
                    created_json = gr.JSON(label="quiz")

    with gr.Accordion("Educator: the class's tally", open=True, elem_id="quiz-tally-box"):
        with gr.Row():
            tally_code = gr.Textbox(label="Quiz code", max_lines=1, elem_id="quiz-tally-code")
            secret = gr.Textbox(label="Educator secret", type="password", max_lines=1, elem_id="quiz-secret")
            show = gr.Button("Show the tally", elem_id="quiz-show-tally")
        overview = gr.Markdown("", elem_id="quiz-overview")
        tally = gr.Dataframe(headers=HEADERS, interactive=False, wrap=True, elem_id="quiz-tally",
                             column_widths=["5%", "19%", "7%", "17%", "16%", "12%", "8%", "8%", "8%"])
        with gr.Accordion("Tally (JSON, as returned by /quiz_results)", open=False):
            tally_json = gr.JSON(label="tally")

    case_outputs = [status, image, question, choice, case_json]
    reveal_outputs = [answer, probs, overlay, shares, reveal_json]
    lane = {"concurrency_id": READ_LANE[0], "concurrency_limit": READ_LANE[1]}
    guess_lane = {"concurrency_id": GUESS_LANE[0], "concurrency_limit": GUESS_LANE[1]}

    def open_case(trigger: Any, **kw: Any) -> Any:
        return trigger(_clear_reveal, None, [answer, probs, overlay, shares], api_visibility="private", queue=False,
                       show_progress="hidden").then(quiz_case, [code, index, browser_id], case_outputs, **kw)

    def then_reveal_if_guessed(dep: Any) -> None:
        again = dep.success(_reveal_if_guessed, [code, index, browser_id, case_json], reveal_outputs,
                            api_visibility="private", **lane)
        again.then(_show_reveal, reveal_outputs, overlay, api_visibility="private", queue=False)

    opened = open_case(open_btn.click, api_name="quiz_case", **lane)
    opened.then(lambda: "", None, stored, api_visibility="private", queue=False)
    then_reveal_if_guessed(opened)
    submitted = code.submit(lambda: 0, None, index, api_visibility="private", queue=False).then(
        _clear_reveal, None, [answer, probs, overlay, shares], api_visibility="private", queue=False).then(
        quiz_case, [code, index, browser_id], case_outputs, api_visibility="private", **lane)
    then_reveal_if_guessed(submitted)
    for btn, delta in ((prev_btn, -1), (next_btn, 1)):
        moved = btn.click(lambda i, s, d=delta: _step(i, d, s), [index, case_json], index, api_visibility="private",
                          queue=False).then(_clear_reveal, None, [answer, probs, overlay, shares],
                                            api_visibility="private", queue=False).then(
            quiz_case, [code, index, browser_id], case_outputs, api_visibility="private", **lane)
        moved.then(lambda: "", None, stored, api_visibility="private", queue=False)
        then_reveal_if_guessed(moved)
    guessed = commit.click(quiz_guess, [code, index, choice, browser_id], [stored, reveal_json], api_name="quiz_guess",
                           **guess_lane)
    guessed.success(lambda: gr.Radio(interactive=False), None, choice, api_visibility="private", queue=False)
    revealed = guessed.success(quiz_reveal, [code, index, browser_id], reveal_outputs, api_name="quiz_reveal", **lane)
    revealed.then(_show_reveal, reveal_outputs, overlay, api_visibility="private", queue=False)
    create.click(quiz_create, [case_set, hours], [created, created_json], api_name="quiz_create", **guess_lane).then(
        # the educator's own page: the tally form is filled in (the secret stays in a password field)
        lambda j: (j.get("code", ""), j.get("secret", "")) if isinstance(j, dict) else ("", ""), created_json,
        [tally_code, secret], api_visibility="private", queue=False)
    model_event(show.click, quiz_results, inputs=[tally_code, secret], outputs=[overview, tally, tally_json],
                api_name="quiz_results", gpu_duration=120)
    # ?quiz=CODE: the app's link handler fills the code (and the browser id), then this opens case 1
    def follow_link(load: Any) -> None:
        then_reveal_if_guessed(load.then(_open_from_link, [code, index, browser_id], case_outputs,
                                         api_visibility="private", show_progress="hidden", **lane))

    deep_links.quiz_target(deep_links.QuizTarget(code, index, browser_state, browser_id, _ensure_browser_id,
                                                 follow_link))


def _open_from_link(code: str, index: float, browser_id: str) -> tuple[Any, ...]:
    """After the page load: open the quiz the link named (validated by the link handler)."""
    if not code:
        return tuple(gr.update() for _ in range(5))
    try:
        return quiz_case(code, index, browser_id)
    except gr.Error as exc:  # expired between the two calls: said in the status line, no toast
        return (f"⚠️ {exc.message}", gr.update(), gr.update(), gr.update(), gr.update())
