"""Findings -> impression summarisation (document 002) with ROUGE against a reference.

Single requests stream when decoding is greedy (num_beams == 1): beam search only knows its
best sequence at the end, so with beams the text arrives in one piece (the UI shows
progress meanwhile). Batch evaluation of a file is medlab.generation.impression_batch."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from medlab.core.errors import InputError
from medlab.core.progress import Progress
from medlab.generation.metrics import rouge

log = logging.getLogger(__name__)

KEY = "impression"
# Document 002's prompt, verbatim.
PROMPT = "Generate radiology report impressions based on the following findings. Findings: {findings}"
# Document 002 decoded with 10 beams and max_length 80; 4 beams keep a CPU responsive.
DEFAULT_BEAMS = 4
DEFAULT_MAX_LENGTH = 80
MAX_BEAMS = 10
MAX_LENGTH_LIMIT = 512
MAX_TEXT_CHARS = 20_000
FALLBACK_TOKEN_LIMIT = 512  # T5's usual input length when the tokenizer does not say

# Document 002's table (FLAN-T5-XL), for comparison in the UI.
DOC_002_ROUGE = {
    "pretrained, MIMIC-CXR dev": (0.2239, 0.1134, 0.1891, 0.1891),
    "fine-tuned, MIMIC-CXR dev": (0.6040, 0.4800, 0.5705, 0.5708),
    "pretrained, Open-I dev": (0.1583, 0.0599, 0.1391, 0.1393),
    "fine-tuned, Open-I dev": (0.4660, 0.3125, 0.4525, 0.4525),
}

_SECTION_NAMES = (
    "EXAMINATION", "EXAM", "INDICATION", "INDICATIONS", "HISTORY", "CLINICAL HISTORY", "COMPARISON",
    "COMPARISONS", "TECHNIQUE", "PROCEDURE", "FINDINGS", "FINDING", "IMPRESSION", "IMPRESSIONS",
    "CONCLUSION", "CONCLUSIONS", "RECOMMENDATION", "RECOMMENDATIONS", "NOTIFICATION", "WET READ",
    "REASON FOR EXAM", "REASON FOR EXAMINATION", "BACKGROUND", "SUMMARY",
)
_NAMES_RE = "|".join(sorted((re.escape(n) for n in _SECTION_NAMES), key=len, reverse=True))
# A section header followed by a colon: a known name at the start of a line (any case), or an
# upper-case one inside a line ("... clear. IMPRESSION: ..." - reports pasted as one line).
_HEADER = re.compile(
    r"(?m)(?:^[ \t]*(?P<a>(?i:" + _NAMES_RE + r"))|(?<=[\s.;])(?P<b>" + _NAMES_RE + r"))[ \t]*:"
)


@dataclass(frozen=True)
class ImpressionSettings:
    num_beams: int = DEFAULT_BEAMS
    max_length: int = DEFAULT_MAX_LENGTH

    def validated(self) -> ImpressionSettings:
        try:
            beams, length = int(self.num_beams), int(self.max_length)
        except (TypeError, ValueError):
            raise InputError("Beams and max length must be whole numbers.") from None
        if not 1 <= beams <= MAX_BEAMS:
            raise InputError(f"beams must be between 1 and {MAX_BEAMS} (got {beams}).")
        if not 2 <= length <= MAX_LENGTH_LIMIT:
            raise InputError(f"max length must be between 2 and {MAX_LENGTH_LIMIT} tokens (got {length}).")
        return replace(self, num_beams=beams, max_length=length)

    def generate_kwargs(self) -> dict[str, Any]:
        # max_length as in document 002 (it counts the decoder start token).
        kwargs: dict[str, Any] = {"max_length": self.max_length, "num_beams": self.num_beams, "do_sample": False}
        if self.num_beams > 1:
            kwargs["early_stopping"] = True
        return kwargs


@dataclass(frozen=True)
class ReportParts:
    findings: str
    impression: str | None
    sections: tuple[str, ...] = ()  # headers found, upper case, in order

    @property
    def extracted(self) -> bool:
        return "FINDINGS" in self.sections or "FINDING" in self.sections


def split_report(text: str) -> ReportParts:
    """FINDINGS and IMPRESSION sections of a pasted report.

    Without a FINDINGS header the text outside any IMPRESSION/CONCLUSION section is taken as
    the findings (plain findings text stays as it is)."""
    text = (text or "").replace("\r\n", "\n").replace("\r", "\n")
    matches = list(_HEADER.finditer(text))
    if not matches:
        return ReportParts(text.strip(), None)
    sections: dict[str, str] = {}
    order: list[str] = []
    for i, m in enumerate(matches):
        name = re.sub(r"\s+", " ", (m.group("a") or m.group("b")).upper())
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[m.end():end].strip()
        order.append(name)
        if body:
            sections[name] = (sections[name] + "\n" + body) if name in sections else body
    impression = next((sections[n] for n in ("IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS")
                       if n in sections), None)
    findings = sections.get("FINDINGS") or sections.get("FINDING")
    if findings is None:
        before = text[: matches[0].start()].strip()
        findings = before if before else ""
        if not findings and not any(n in order for n in ("IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS")):
            findings = text.strip()
    return ReportParts(findings.strip(), impression.strip() if impression else None, tuple(order))


def build_prompt(findings: str) -> str:
    return PROMPT.format(findings=" ".join(findings.split()))


# -- model inputs -------------------------------------------------------------------------
def token_limit(tokenizer: Any, model: Any = None) -> int:
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return limit
    n_pos = getattr(getattr(model, "config", None), "n_positions", None)
    return int(n_pos) if isinstance(n_pos, int) and 0 < n_pos < 1_000_000 else FALLBACK_TOKEN_LIMIT


@dataclass(frozen=True)
class Encoded:
    inputs: dict[str, Any]
    n_tokens: list[int]  # prompt length per row before truncation
    limit: int

    def truncated(self, i: int = 0) -> bool:
        return self.n_tokens[i] > self.limit


def encode(loaded: Any, findings: Sequence[str]) -> Encoded:
    """Tokenise document 002's prompt for each findings text, truncating at the model limit."""
    tokenizer = loaded.tokenizer
    limit = token_limit(tokenizer, loaded.model)
    prompts = [build_prompt(f) for f in findings]
    n_tokens = [len(ids) for ids in tokenizer(prompts, truncation=False)["input_ids"]]
    batch = tokenizer(prompts, truncation=True, max_length=limit, padding=True, return_tensors="pt")
    inputs = {k: v.to(loaded.device) for k, v in batch.items()}
    return Encoded(inputs, n_tokens, limit)


def truncation_notice(n_tokens: int, limit: int) -> str:
    return (f"The prompt with these findings is {n_tokens} tokens; the model reads at most {limit}, so the "
            f"last {n_tokens - limit} tokens of the findings were cut off and not seen by the model.")


def check_text(text: str | None, what: str = "findings") -> str:
    value = (text or "").strip()
    if not value:
        raise InputError(f"Please paste the {what} (or a whole report with a FINDINGS: section).")
    if len(value) > MAX_TEXT_CHARS:
        raise InputError(f"The {what} are {len(value):,} characters; the limit is {MAX_TEXT_CHARS:,}.")
    return value


# -- single request -----------------------------------------------------------------------
@dataclass
class ImpressionUpdate:
    """One streamed state of a request: the text so far and, when done, the scores."""

    text: str
    done: bool
    findings: str
    reference: str | None = None
    rouge: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def impression_stream(
    text: str,
    reference: str | None = None,
    settings: ImpressionSettings | None = None,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> Iterator[ImpressionUpdate]:
    """Generate the impression for findings (or a whole report); stream when num_beams == 1."""
    from medlab.core.loaders import use_model

    settings = (settings or ImpressionSettings()).validated()
    parts = split_report(check_text(text))
    notes: list[str] = []
    if parts.extracted:
        notes.append("Used the FINDINGS section of the pasted report.")
    if not parts.findings:
        raise InputError("The text has no findings to summarise (only an IMPRESSION section was found).")
    ref = (reference or "").strip() or None
    if ref is None and parts.impression:
        ref = parts.impression
        notes.append("Used the report's IMPRESSION section as the reference for ROUGE.")
    with use_model(KEY, progress) as loaded:  # a lease: not evicted while generating
        encoded = encode(loaded, [parts.findings])
        if encoded.truncated(0):
            notes.append(truncation_notice(encoded.n_tokens[0], encoded.limit))
        started = time.perf_counter()
        generated = ""
        if settings.num_beams == 1:
            from medlab.generation.streaming import stream_generate

            for generated in stream_generate(loaded.model, loaded.tokenizer, encoded.inputs,
                                             settings.generate_kwargs(), cancel=cancel):
                yield ImpressionUpdate(generated, False, parts.findings, ref, None, list(notes))
        else:
            if progress is not None:
                progress(0.5, f"Beam search with {settings.num_beams} beams (the text appears when it finishes)")
            generated = generate_texts(loaded, encoded, settings)[0]
    generated = generated.strip()
    scores = rouge(generated, ref) if ref else None
    yield ImpressionUpdate(generated, True, parts.findings, ref, scores, notes, time.perf_counter() - started)


def generate_texts(loaded: Any, encoded: Encoded, settings: ImpressionSettings) -> list[str]:
    """The decoded impressions of an encoded batch (no streaming)."""
    import torch

    with torch.inference_mode():
        out = loaded.model.generate(**encoded.inputs, **settings.generate_kwargs())
    return [t.strip() for t in loaded.tokenizer.batch_decode(out, skip_special_tokens=True)]


def generate_impression(text: str, reference: str | None = None, settings: ImpressionSettings | None = None) -> ImpressionUpdate:
    """The final result of impression_stream (non-streamed convenience wrapper)."""
    final = None
    for final in impression_stream(text, reference, settings):  # noqa: B007 - the last update is the result
        pass
    assert final is not None
    return final


