"""Findings -> impression summarisation (document 002) with ROUGE against a reference.

Single requests stream when decoding is greedy (num_beams == 1): beam search only knows its
best sequence at the end, so with beams the text arrives in one piece (the UI shows
progress meanwhile). Batch evaluation reads a CSV/JSONL of findings (+ reference
impressions), generates in mini-batches and reports per-row ROUGE plus document 002's
mean / std / quartile summary."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medlab.core.progress import Progress
from medlab.core.errors import InputError, UnsupportedFileError
from medlab.generation.metrics import ROUGE_TYPES, rouge, summarize

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
MAX_BATCH_ROWS = 200
BATCH_SIZE = 8
FALLBACK_TOKEN_LIMIT = 512  # T5's usual input length when the tokenizer does not say

# Document 002's table (FLAN-T5-XL), for comparison in the UI.
DOC_002_ROUGE = {
    "pretrained, MIMIC-CXR dev": (0.2239, 0.1134, 0.1891, 0.1891),
    "fine-tuned, MIMIC-CXR dev": (0.6040, 0.4800, 0.5705, 0.5708),
    "pretrained, Open-I dev": (0.1583, 0.0599, 0.1391, 0.1393),
    "fine-tuned, Open-I dev": (0.4660, 0.3125, 0.4525, 0.4525),
}

FINDINGS_ALIASES = ("findings", "finding")
REFERENCE_ALIASES = ("impression", "impressions", "reference", "reference_impression", "target")
REPORT_ALIASES = ("report", "full_report", "text")

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


class BatchFileError(InputError):
    """A batch-evaluation file that cannot be used (columns, encoding, size)."""


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
    from medlab.core.loaders import get_model

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
    loaded = get_model(KEY, progress)
    encoded = encode(loaded, [parts.findings])
    if encoded.truncated(0):
        notes.append(truncation_notice(encoded.n_tokens[0], encoded.limit))
    started = time.perf_counter()
    generated = ""
    if settings.num_beams == 1:
        from medlab.generation.radiograph import stream_generate

        for generated in stream_generate(loaded.model, loaded.tokenizer, encoded.inputs,
                                         settings.generate_kwargs(), cancel=cancel):
            yield ImpressionUpdate(generated, False, parts.findings, ref, None, list(notes))
    else:
        if progress is not None:
            progress(0.5, f"Beam search with {settings.num_beams} beams (the text appears when it finishes)")
        generated = _generate(loaded, encoded, settings)[0]
    generated = generated.strip()
    scores = rouge(generated, ref) if ref else None
    yield ImpressionUpdate(generated, True, parts.findings, ref, scores, notes, time.perf_counter() - started)


def _generate(loaded: Any, encoded: Encoded, settings: ImpressionSettings) -> list[str]:
    import torch

    with torch.inference_mode():
        out = loaded.model.generate(**encoded.inputs, **settings.generate_kwargs())
    return [t.strip() for t in loaded.tokenizer.batch_decode(out, skip_special_tokens=True)]


def generate_impression(text: str, reference: str | None = None, settings: ImpressionSettings | None = None) -> ImpressionUpdate:
    """The final result of impression_stream (non-streamed convenience wrapper)."""
    final = None
    for final in impression_stream(text, reference, settings):
        pass
    assert final is not None
    return final


# -- batch evaluation ---------------------------------------------------------------------
@dataclass(frozen=True)
class BatchRow:
    row: int  # 1-based data row number in the file
    findings: str
    reference: str | None


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BatchFileError(
            f"{name} is not UTF-8 text (byte 0x{raw[exc.start]:02X} at position {exc.start} cannot be decoded). "
            "Save it as UTF-8 (in Excel: 'CSV UTF-8 (comma delimited)')."
        ) from None


def _pick(columns: Sequence[str], aliases: Sequence[str]) -> str | None:
    normalised = {c.strip().lower().replace(" ", "_"): c for c in columns}
    return next((normalised[a] for a in aliases if a in normalised), None)


def _records(text: str, suffix: str, name: str) -> tuple[list[str], list[dict[str, Any]]]:
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        columns = [c for c in (reader.fieldnames or []) if c is not None]
        try:
            records = [dict(r) for r in reader]
        except csv.Error as exc:
            raise BatchFileError(f"{name} is not a valid CSV file ({exc}).") from None
        return columns, records
    records = []
    if suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise BatchFileError(f"{name} is not valid JSON ({exc}).") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise BatchFileError(f"{name} must hold a JSON list of objects such as "
                                 '[{"findings": "...", "impression": "..."}].')
        records = data
    else:  # .jsonl
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise BatchFileError(f"Line {lineno} of {name} is not valid JSON ({exc.msg}).") from None
            if not isinstance(obj, dict):
                raise BatchFileError(f"Line {lineno} of {name} is not a JSON object.")
            records.append(obj)
    columns: list[str] = []
    for r in records:
        columns += [k for k in r if k not in columns]
    return columns, records


def read_batch_file(path: str | Path, max_rows: int = MAX_BATCH_ROWS) -> tuple[list[BatchRow], list[str]]:
    """Rows of findings (+ optional references) from a CSV, JSONL or JSON file, and notes."""
    from medlab.io.imaging import check_file_size

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json"):
        raise UnsupportedFileError(f"{p.name}: batch evaluation reads .csv, .jsonl or .json files.")
    check_file_size(p)
    columns, records = _records(_decode(p.read_bytes(), p.name), suffix, p.name)
    findings_col = _pick(columns, FINDINGS_ALIASES)
    reference_col = _pick(columns, REFERENCE_ALIASES)
    report_col = _pick(columns, REPORT_ALIASES) if findings_col is None else None
    if findings_col is None and report_col is None:
        found = ", ".join(repr(c) for c in columns) or "none"
        raise BatchFileError(
            f"{p.name} has no findings column. Columns found: {found}. Expected: 'findings' (required) "
            "and 'impression' or 'reference' (optional), or a 'report' column holding whole reports with "
            "FINDINGS: / IMPRESSION: sections."
        )
    if len(records) > max_rows:
        raise BatchFileError(
            f"{p.name} has {len(records):,} rows; the limit here is {max_rows} per batch (generation runs on "
            "this machine). Split the file or evaluate a sample."
        )
    rows: list[BatchRow] = []
    skipped: list[int] = []
    for i, rec in enumerate(records, 1):
        ref = str(rec.get(reference_col) or "").strip() if reference_col else ""
        if findings_col is not None:
            findings = str(rec.get(findings_col) or "").strip()
        else:
            parts = split_report(str(rec.get(report_col) or ""))
            findings, ref = parts.findings, ref or (parts.impression or "")
        if not findings:
            skipped.append(i)
            continue
        rows.append(BatchRow(i, findings[:MAX_TEXT_CHARS], ref or None))
    if not rows:
        raise BatchFileError(f"{p.name} has no rows with findings text.")
    notes = []
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (" ..." if len(skipped) > 10 else "")
        notes.append(f"Skipped {len(skipped)} row(s) with empty findings: {shown}.")
    if reference_col is None and report_col is None:
        notes.append("No 'impression'/'reference' column: impressions are generated but not scored.")
    return rows, notes


@dataclass
class BatchResult:
    rows: list[dict[str, Any]]  # row, findings, reference, generated, truncated, rouge1..rougeLsum
    summary: dict[str, dict[str, float]]  # medlab.generation.metrics.summarize over the scored rows
    csv_path: Path
    notes: list[str]
    seconds: float

    def summary_table(self) -> list[list[Any]]:
        """[metric, mean, std, min, q1, median, q3, max, n] rows, rounded for display."""
        out = []
        for name in ROUGE_TYPES:
            s = self.summary.get(name)
            if s:
                out.append([name] + [round(s[k], 4) for k in ("mean", "std", "min", "q1", "median", "q3", "max")]
                           + [int(s["n"])])
        return out


SUMMARY_HEADERS = ["metric", "mean", "std", "min", "q1", "median", "q3", "max", "n"]
ROW_HEADERS = ["row", "findings", "reference", "generated", "truncated", *ROUGE_TYPES]


def evaluate_batch(
    path: str | Path,
    settings: ImpressionSettings | None = None,
    progress: Progress | None = None,
    max_rows: int = MAX_BATCH_ROWS,
    output_dir: Path | None = None,
) -> BatchResult:
    """Generate an impression per row, score it against its reference, summarise, save CSV."""
    from medlab.core.loaders import get_model

    settings = (settings or ImpressionSettings()).validated()
    report = progress or (lambda fraction, message: None)
    rows, notes = read_batch_file(path, max_rows)
    loaded = get_model(KEY, progress)
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    truncated = 0
    for start in range(0, len(rows), BATCH_SIZE):
        chunk = rows[start:start + BATCH_SIZE]
        report(start / len(rows), f"Generating impressions {start + 1}-{start + len(chunk)} of {len(rows)}")
        encoded = encode(loaded, [r.findings for r in chunk])
        generated = _generate(loaded, encoded, settings)
        for j, (row, text) in enumerate(zip(chunk, generated)):
            cut = encoded.truncated(j)
            truncated += cut
            record: dict[str, Any] = {"row": row.row, "findings": row.findings, "reference": row.reference or "",
                                      "generated": text, "truncated": cut}
            scores = rouge(text, row.reference) if row.reference else {}
            record.update({name: scores.get(name) for name in ROUGE_TYPES})
            results.append(record)
    report(1.0, "Scoring")
    scored = [r for r in results if r["rouge1"] is not None]
    summary = summarize([{n: r[n] for n in ROUGE_TYPES} for r in scored])
    if truncated:
        notes.append(f"{truncated} row(s) were longer than the model's input limit and were truncated.")
    csv_path = _write_csv(results, output_dir)
    seconds = time.perf_counter() - started
    log.info("batch of %d impressions in %.1fs (%d scored)", len(results), seconds, len(scored))
    return BatchResult(results, summary, csv_path, notes, seconds)


def _write_csv(rows: list[dict[str, Any]], output_dir: Path | None) -> Path:
    folder = output_dir or Path(tempfile.gettempdir()) / "medlab-impression"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"impression_batch_{time.strftime('%Y%m%d-%H%M%S')}_{uuid.uuid4().hex[:8]}.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=ROW_HEADERS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in ROW_HEADERS})
    return path


def rouge_figure(result: BatchResult) -> Any:
    """Per-report ROUGE distributions (one histogram per type, mean marked), like doc 002."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # not pyplot: nothing global to close

    fig = Figure(figsize=(11, 3), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(ROUGE_TYPES), sharey=True)
    for ax, name in zip(axes, ROUGE_TYPES):
        values = [r[name] for r in result.rows if r.get(name) is not None]
        ax.hist(values, bins=10, range=(0.0, 1.0), color="#4f46e5", alpha=0.8)
        if values:
            mean = sum(values) / len(values)
            ax.axvline(mean, color="#d97706", linestyle="--", label=f"mean {mean:.3f}")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_title(name)
        ax.set_xlabel("F-measure")
    axes[0].set_ylabel("reports")
    fig.suptitle("Per-report ROUGE against the reference impressions")
    return fig
