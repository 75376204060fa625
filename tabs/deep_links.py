"""Links that open the app in a chosen state, for a class.

Query parameters read on page load (one private load event, registered by `finalize`):

    ?tab=lung_ct              select a tab (its TAB_ID, from app.TAB_MODULES)
    ?tab=lung_ct&example=2    ... and load the tab's 2nd example into its input (1 = first)
    ?quiz=K7PQ3M              open the Class quiz tab on that quiz's first case

Anything not understood (unknown tab, example out of range, unknown parameter) leaves the
page as it would open anyway, and a notice line names that part of the link and what is
valid. Nothing raises: a bad link never shows an error toast.

Tabs register what a link may load while they build (`example_target`, `quiz_target`), so
tab ids and example lists are read from the tab modules, never copied here.

Gradio's own gr.DeepLinkButton (header of the app) is the other kind of link: Gradio 6.31
snapshots the session's component values on the server (GET /gradio_api/deep_link writes
them under Gradio's upload folder, deep_links/<hash>/state.json) and copies the page URL with
`?deep_link=<hash>`; opening it serves the page with those values (inputs, settings, results).
The selected tab is part of that snapshot only because every tab's select event reports it
to the server (`track_selected_tab`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from tabs.i18n import translate

log = logging.getLogger(__name__)

_ATTR = "_medlab_deep_links"
# Query parameters Gradio itself uses: left alone, never reported as "not understood".
GRADIO_PARAMS = frozenset({"deep_link", "__sign", "__theme", "view", "lang", "logs", "share", "page"})


@dataclass(frozen=True)
class ExampleTarget:
    tab_id: str
    component: Any
    examples: tuple[str, ...]  # file paths, in the order the tab's Examples show them
    labels: tuple[str, ...]


@dataclass(frozen=True)
class QuizTarget:
    code: Any
    index: Any
    browser_state: Any
    browser_id: Any
    ensure_browser_id: Callable[[Any], tuple[str, str]]
    follow: Callable[[Any], None]  # chains the quiz's own events after the load event (given its dependency)


def _registry() -> dict[str, Any]:
    root = gr.context.Context.root_block
    if root is None:
        raise RuntimeError("deep links must be registered while building a gr.Blocks")
    if not hasattr(root, _ATTR):
        setattr(root, _ATTR, {"examples": {}, "quiz": None})
    return getattr(root, _ATTR)


def example_target(tab_id: str, component: Any, examples: Sequence[str], labels: Sequence[str]) -> None:
    """`?tab=<tab_id>&example=N` loads examples[N-1] into `component`."""
    _registry()["examples"][tab_id] = ExampleTarget(tab_id, component, tuple(examples), tuple(labels))


def quiz_target(target: QuizTarget) -> None:
    _registry()["quiz"] = target


def track_selected_tab(tabs: gr.Tabs, tab: gr.Tab, tab_id: str) -> None:
    """Tell the server which tab is selected, so gr.DeepLinkButton's snapshot includes it."""
    tab.select(lambda: gr.Tabs(selected=tab_id), None, tabs, api_visibility="private", queue=False,
               show_progress="hidden")


@dataclass
class Parsed:
    tab: str | None = None
    example: tuple[ExampleTarget, int] | None = None
    quiz: str | None = None
    notes: list[str] | None = None
    opened: list[str] | None = None


def parse(params: dict[str, str], tab_titles: dict[str, str], targets: dict[str, ExampleTarget],
          quiz_enabled: bool) -> Parsed:
    """What the link asks for, and a note for every part that is not understood."""
    out = Parsed(notes=[], opened=[])
    notes, opened = out.notes, out.opened
    tab = (params.get("tab") or "").strip()
    example = (params.get("example") or "").strip()
    quiz = (params.get("quiz") or "").strip()
    if tab:
        if tab in tab_titles:
            out.tab = tab
            opened.append(translate("runtime.link_opened_tab", title=translate(tab_titles[tab])))
        else:
            notes.append(translate("runtime.link_unknown_tab", tab=tab[:40], valid=", ".join(tab_titles)))
    if example:
        target = targets.get(out.tab or "")
        if not tab:
            notes.append(translate("runtime.link_example_without_tab", valid=", ".join(targets)))
        elif out.tab is None:
            pass  # the unknown tab is already reported
        elif target is None or not target.examples:
            notes.append(translate("runtime.link_no_examples", tab=out.tab, valid=", ".join(targets)))
        elif not example.isdigit() or not 1 <= int(example) <= len(target.examples):
            notes.append(translate("runtime.link_bad_example", example=example[:20], tab=out.tab, n=len(target.examples)))
        else:
            n = int(example)
            out.example = (target, n - 1)
            opened.append(translate("runtime.link_opened_example", n=n, label=translate(target.labels[n - 1])))
    if quiz:
        if quiz_enabled:
            from medlab.classroom.quiz import QuizError, default_store

            try:
                out.quiz = default_store().get(quiz).code
                out.tab = out.tab or "quiz"
                opened.append(translate("runtime.link_opened_quiz", code=out.quiz))
            except QuizError as exc:  # bad code, expired: said in the notice, the page opens anyway
                notes.append(translate("runtime.link_bad_quiz", reason=str(exc)))
        else:
            notes.append(translate("runtime.link_no_quiz"))
    unknown = [k for k in params if k not in ("tab", "example", "quiz") and k not in GRADIO_PARAMS]
    if unknown:
        notes.append(translate("runtime.link_unknown_params", params=", ".join(sorted(unknown)[:5])))
    return out


def notice_markdown(parsed: Parsed) -> str:
    lines = []
    if parsed.notes:
        lines.append("⚠️ " + translate("runtime.link_not_understood") + " " + " ".join(parsed.notes))
    if parsed.opened:
        lines.append("🔗 " + " · ".join(parsed.opened))
    return "\n\n".join(lines)


def finalize(demo: gr.Blocks, tabs: gr.Tabs, notice: gr.Markdown, tab_titles: dict[str, str]) -> None:
    """Register the private page-load event that applies the link's query parameters."""
    registry = getattr(demo, _ATTR, {"examples": {}, "quiz": None})
    targets: dict[str, ExampleTarget] = registry["examples"]
    quiz: QuizTarget | None = registry["quiz"]
    components = [t.component for t in targets.values()]
    quiz_outputs = [quiz.code, quiz.index, quiz.browser_state, quiz.browser_id] if quiz else []
    inputs = [quiz.browser_state] if quiz else []

    def apply_link(stored: Any = None, request: gr.Request = None) -> list[Any]:  # type: ignore[assignment]
        try:
            params = {str(k): str(v) for k, v in dict(request.query_params or {}).items()}
            parsed = parse(params, tab_titles, targets, quiz is not None)
        except Exception as exc:  # noqa: BLE001 - a link must never break the page
            log.warning("could not read the page's link: %s", exc)
            parsed = Parsed(notes=[translate("runtime.link_unreadable")], opened=[])
        values: list[Any] = [gr.Tabs(selected=parsed.tab) if parsed.tab else gr.update(), notice_markdown(parsed)]
        for target in targets.values():
            chosen = parsed.example is not None and parsed.example[0] is target
            values.append(target.examples[parsed.example[1]] if chosen else gr.update())
        if quiz:
            values += [parsed.quiz if parsed.quiz else gr.update(), 0 if parsed.quiz else gr.update()]
            values += list(quiz.ensure_browser_id(stored))
        return values

    dep = demo.load(apply_link, inputs=inputs, outputs=[tabs, notice, *components, *quiz_outputs],
                    api_visibility="private", queue=False, show_progress="hidden")
    if quiz:
        quiz.follow(dep)
