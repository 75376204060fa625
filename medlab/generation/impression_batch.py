"""Batch evaluation of the findings -> impression model (document 002): read a CSV/JSONL/JSON
file of findings (+ reference impressions), generate in mini-batches, score each row with
ROUGE and summarise (mean / std / quartiles), save a CSV and draw the distributions."""

from __future__ import annotations

import csv
import io
import json
import logging
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlab.core.errors import InputError, UnsupportedFileError
from medlab.core.progress import Progress
from medlab.generation.impression import (
    KEY,
    MAX_TEXT_CHARS,
    ImpressionSettings,
    encode,
    generate_texts,
    split_report,
)
from medlab.generation.metrics import ROUGE_TYPES, rouge, summarize

log = logging.getLogger(__name__)

MAX_BATCH_ROWS = 200
BATCH_SIZE = 8
FINDINGS_ALIASES = ("findings", "finding")
REFERENCE_ALIASES = ("impression", "impressions", "reference", "reference_impression", "target")
REPORT_ALIASES = ("report", "full_report", "text")


class BatchFileError(InputError):
    """A batch-evaluation file that cannot be used (columns, encoding, size)."""


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
    from medlab.core.loaders import use_model

    settings = (settings or ImpressionSettings()).validated()
    report = progress or (lambda fraction, message: None)
    rows, notes = read_batch_file(path, max_rows)
    with use_model(KEY, progress) as loaded:  # a lease for the whole batch
        started = time.perf_counter()
        results: list[dict[str, Any]] = []
        truncated = 0
        for start in range(0, len(rows), BATCH_SIZE):
            chunk = rows[start:start + BATCH_SIZE]
            report(start / len(rows), f"Generating impressions {start + 1}-{start + len(chunk)} of {len(rows)}")
            encoded = encode(loaded, [r.findings for r in chunk])
            generated = generate_texts(loaded, encoded, settings)
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
