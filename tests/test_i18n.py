"""The UI translation table (locales/*.json, tabs/i18n.py): it covers every string the built
app shows, every language is complete, errors are translated by class for the page only, and
the API keeps stable English."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from gradio.i18n import I18nData

from medlab.core.errors import ImageTooSmallError, InputError, MedlabError, ModelUnavailableError
from tabs import i18n
from tests.conftest import applied_env

LOCALES = Path(__file__).resolve().parent.parent / "locales"
EN = json.loads((LOCALES / "en.json").read_text(encoding="utf-8"))
ZH = json.loads((LOCALES / "zh-CN.json").read_text(encoding="utf-8"))
# Keys whose Chinese text is, on purpose, the English one (a name or a parameter).
SAME_IN_EVERY_LANGUAGE = {"pathology.label.plip", "radiograph.label.min_p"}
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def demo(tiny_model_env: dict[str, str]) -> Iterator[gr.Blocks]:
    """The app as the live tests build it: every model configured, so panels that only exist
    with a model (e.g. the LoRA adapter's card) are built too."""
    import app

    with applied_env(tiny_model_env):
        yield app.build_app()


def fake_request(accept_language: str | None, user: str = "app") -> SimpleNamespace:
    headers = {"x-gradio-user": user}
    if accept_language is not None:
        headers["accept-language"] = accept_language
    return SimpleNamespace(headers=headers)


# -- coverage -------------------------------------------------------------------------------
def test_table_covers_every_ui_string_of_the_built_app(demo: gr.Blocks) -> None:
    """A label, button, heading... added to a tab without an en.json entry fails here; the
    message lists them (`python app.py --missing-translations` prints the same list)."""
    assert i18n.missing(demo) == []
    keys = []
    for block in demo.blocks.values():
        for attr in ("label", "info", "placeholder", "value"):
            value = getattr(block, attr, None)
            if isinstance(value, I18nData):
                keys.append(value.key)
        for choice in getattr(block, "choices", None) or []:
            if isinstance(choice, (tuple, list)) and isinstance(choice[0], I18nData):
                keys.append(choice[0].key)
    # Every key the page asks for has text in every language.
    assert keys and not [k for k in keys if k not in EN or k not in ZH]
    # Each tab's title and its disclaimer went through the table.
    tabs = [b for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    assert len(tabs) == 8 and all(isinstance(t.label, I18nData) for t in tabs)


def test_every_language_is_complete_and_really_translated() -> None:
    assert set(ZH) == set(EN)
    assert not [k for k, v in ZH.items() if not v.strip()]
    untranslated = [k for k in ZH if k not in SAME_IN_EVERY_LANGUAGE and not CJK.search(ZH[k])]
    assert untranslated == []
    # Run-time templates keep their fields ({title}, {reason}...), so str.format works in both.
    def fields(text: str) -> set[str]:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name}

    for key in EN:
        if key.split(".")[0] in ("runtime", "error"):
            assert fields(EN[key]) == fields(ZH[key]), key
    assert fields(EN["runtime.banner_unavailable"]) == {"title", "reason", "fix"}


def test_disclaimer_is_translated_on_every_tab(demo: gr.Blocks) -> None:
    from medlab import DISCLAIMER

    key = i18n.key_for(f"> ⚠️ **{DISCLAIMER}**")
    assert key is not None and "不能用于诊断" in ZH[key] and "仅供教学使用" in ZH[key]
    uses = [b for b in demo.blocks.values() if isinstance(b.__dict__.get("value"), I18nData) and b.value.key == key]
    assert len(uses) == 8  # one per tab (the class quiz included)


def test_choices_keep_their_engine_values(demo: gr.Blocks) -> None:
    windows = [b for b in demo.blocks.values()
               if isinstance(b, gr.Dropdown) and any(c[1] == "mediastinal" for c in b.choices)]
    assert len(windows) == 1
    assert [c[1] for c in windows[0].choices] == ["lung", "mediastinal", "bone", "auto"]
    assert all(isinstance(c[0], I18nData) for c in windows[0].choices)
    assert ZH[windows[0].choices[1][0].key] == "纵隔窗"


def test_api_description_stays_english(demo: gr.Blocks) -> None:
    info = demo.get_api_info()
    text = json.dumps(info, ensure_ascii=False)
    assert "translation_metadata" not in text and "__i18n__" not in text
    ask = info["named_endpoints"]["/assistant_ask"]
    assert ask["parameters"][0]["label"] == "Your question"


def test_gradio_i18n_holds_every_locale_as_written() -> None:
    """The frontend (svelte-i18n) shows a message that has no values as written: '{label}' and
    quotes go through unescaped (the zh-CN browser test sees them literally)."""
    messages = i18n.gradio_i18n().translations_dict
    assert messages == {"en": EN, "zh-CN": ZH}


def test_examples_headers_and_labels_follow_the_page(demo: gr.Blocks) -> None:
    """Gradio's frontend does not translate gr.Examples' headers and sample labels: the page-load
    event sends them translated to a Chinese page, and changes nothing for an English one."""
    from gradio.context import LocalContext

    lung = next(b for b in demo.blocks.values() if isinstance(b, gr.Dataset)
                and (b.sample_labels or [""])[0].startswith("chest CT slice"))
    report = next(b for b in demo.blocks.values() if isinstance(b, gr.Dataset) and len(b.headers) == 2)
    token = LocalContext.request.set(fake_request("zh-CN"))
    try:
        labels = i18n._dataset_update(lung)["sample_labels"]
        headers = i18n._dataset_update(report)["headers"]
    finally:
        LocalContext.request.reset(token)
    assert labels == [ZH[i18n.key_for(t)] for t in lung.sample_labels] and labels[0].startswith("胸部 CT 切片")
    assert headers == [ZH["impression.label.findings_or_a_whole_report"],
                       ZH["impression.label.reference_impression_optional_for_rouge"]]
    token = LocalContext.request.set(fake_request("en-US"))
    try:
        assert i18n._dataset_update(lung) == gr.update()
    finally:
        LocalContext.request.reset(token)


# -- run-time text --------------------------------------------------------------------------
@pytest.mark.parametrize(("header", "user", "expected"), [
    ("zh-CN,zh;q=0.9,en;q=0.8", "app", "zh-CN"),
    ("zh-cn", "app", "zh-CN"),
    ("en-US,en;q=0.9", "app", "en"),
    ("fr-FR,fr;q=0.9", "app", "en"),
    (None, "app", "en"),
    ("zh-CN,zh;q=0.9", "api", "en"),  # gradio_client: stable English whatever its locale
    ("zh-CN", "mcp", "en"),
])
def test_request_locale(header: str | None, user: str, expected: str) -> None:
    assert i18n.request_locale(fake_request(header, user)) == expected


def test_translate_by_key_or_english_text() -> None:
    zh = fake_request("zh-CN")
    assert i18n.translate("The model card could not be read.", zh) == "无法读取模型卡。"
    assert i18n.translate("runtime.model_card_unreadable", fake_request("en")) == "The model card could not be read."
    assert i18n.translate("not in the table", zh) == "not in the table"
    banner = i18n.translate("runtime.banner_downloadable", zh, title="PLIP", reason="is downloaded on first use")
    assert banner == "ℹ️ **PLIP** 需要下载：is downloaded on first use。"


def test_error_messages_are_translated_by_class() -> None:
    exc = ImageTooSmallError("The image is 4x4 pixels; at least 32x32 is needed.")
    zh = fake_request("zh-CN")
    assert i18n.error_message(exc, fake_request("zh-CN", "api")) == str(exc)
    assert i18n.error_message(exc, fake_request("en-GB")) == str(exc)
    assert i18n.error_message(exc, zh) == f"{ZH['error.ImageTooSmallError']}\n\n详细信息（英文原文）：{exc}"

    class NewInputKind(InputError):  # no entry of its own: its nearest translated base class
        pass

    assert i18n.error_message(NewInputKind("x"), zh).startswith(ZH["error.InputError"])
    unavailable = ModelUnavailableError("plip", "weights missing", "set MEDLAB_MODEL_PLIP")
    assert i18n.error_message(unavailable, zh).startswith("此模型目前无法在本服务器上运行。")


def test_every_engine_error_class_has_a_translation() -> None:
    """Each MedlabError subclass the engine defines (core.errors and the modules' own) has an
    error.<Class> entry, so the page never falls back to a generic headline for a known kind."""
    import importlib
    import pkgutil

    import medlab

    for info in pkgutil.walk_packages(medlab.__path__, "medlab."):
        importlib.import_module(info.name)

    def subclasses(cls: type) -> set[type]:
        found = set(cls.__subclasses__())
        return found.union(*(subclasses(c) for c in found)) if found else found

    engine = {c for c in subclasses(MedlabError) if c.__module__.startswith("medlab.")}
    assert len(engine) >= 15
    assert sorted(c.__name__ for c in engine if f"error.{c.__name__}" not in EN) == []


def test_the_ui_error_boundary_translates_for_the_page_only() -> None:
    from gradio.context import LocalContext

    from tabs.common import ui_errors

    @ui_errors
    def handler() -> None:
        raise ImageTooSmallError("too small")

    @ui_errors
    def crashes() -> None:
        raise ZeroDivisionError("boom")

    for request, expected in [
        (fake_request("zh-CN"), f"{ZH['error.ImageTooSmallError']}\n\n详细信息（英文原文）：too small"),
        (fake_request("zh-CN", "api"), "too small"),
    ]:
        token = LocalContext.request.set(request)
        try:
            with pytest.raises(gr.Error) as caught:
                handler()
            assert caught.value.message == expected
            with pytest.raises(gr.Error) as caught:
                crashes()
            english = "Something went wrong (ZeroDivisionError). The error was logged; please try another input."
            assert caught.value.message == (english if request.headers["x-gradio-user"] == "api"
                                            else "出现意外错误（ZeroDivisionError）。错误已记录；请换一个输入再试。")
        finally:
            LocalContext.request.reset(token)


# The Chinese text adds a note to these two (UI language, what stays English): one more <em>
# and one more <strong> than the English.
EXTRA_MARKUP = {"app.md.medical_ai_lab_educational_use_only": {"<em>": 1},
                "about.md.medical_ai_lab_try_five_medical": {"<strong>": 1}}


def test_translations_keep_the_markdown_structure() -> None:
    """Bold, italics, code, headings, tables and lists survive translation. CommonMark does not
    close ** after full-width punctuation followed by a CJK character (**所见（Findings）**写),
    which would show literal asterisks: rendering both languages catches it."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark").enable("table")
    for key, text in EN.items():
        english, chinese = md.render(text), md.render(ZH[key])
        for tag in ("<strong>", "<em>", "<code>", "<h3>", "<h4>", "<table>", "<li>", "<blockquote>"):
            expected = english.count(tag) + EXTRA_MARKUP.get(key, {}).get(tag, 0)
            assert chinese.count(tag) == expected, (key, tag)
        assert "**" not in re.sub(r"<code>.*?</code>", "", chinese), key


def test_engine_text_copied_into_the_table_matches_the_engine() -> None:
    """The empty-index help is engine text that the pathology tab translates: en.json holds it
    word for word, so an edit to the engine's sentence shows up here."""
    from medlab.retrieval.image_index import EMPTY_INDEX_HELP

    assert EN["runtime.pathology_empty_index"] == EMPTY_INDEX_HELP + " Or press **Index the example tiles**."


@pytest.mark.parametrize(("request_", "chinese"), [
    (fake_request("zh-CN,zh;q=0.9"), True),
    (fake_request("zh-CN,zh;q=0.9", user="api"), False),  # gradio_client keeps the English text
    (None, False),
])
def test_run_time_text_of_the_tabs_follows_the_page(request_: SimpleNamespace | None, chinese: bool) -> None:
    """Text the handlers build at run time (read from the request context, as Gradio sets it
    for every event) is Chinese for a zh-CN page and exactly the old English otherwise."""
    from gradio.context import LocalContext

    from tabs import about, lung_ct, pathology, teach

    token = LocalContext.request.set(request_)
    try:
        texts = {
            "cancel": teach.teach_cancel(request_),
            "status": pathology._status([], '"mucus"', "plip"),
            "matches": pathology._status([object()] * 3, "x", "plip"),
            "headline": i18n.translate("runtime.off_domain_headline"),
            "rows": about._device_table({"cache": {"devices": {"cpu": {
                "budget_gb": None, "used_gb": 0.0, "peak_gb": 0.0, "models": []}}}})[0][1],
        }
    finally:
        LocalContext.request.reset(token)
    assert lung_ct.translate is i18n.translate  # the tab uses the shared translator
    if chinese:
        assert all(CJK.search(t) for t in texts.values()), texts
    else:
        assert texts == {
            "cancel": "Nothing is being taught in this session.",
            "status": 'No results for "mucus".',
            "matches": f"3 best matches for x with **{pathology._model_name('plip')}** "
                       "(cosine similarity, 1 = identical direction).",
            "headline": "### ⚠️ Off-domain input: prediction shown for illustration only",
            "rows": "not known yet",
        }
