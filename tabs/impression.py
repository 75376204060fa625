"""Findings -> impression tab (document 002): FLAN-T5 summarisation, ROUGE against a
reference, and batch evaluation of a CSV/JSONL file. UI only; the engine is medlab.generation.impression."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from medlab.generation.impression import (
    DEFAULT_BEAMS,
    DEFAULT_MAX_LENGTH,
    DOC_002_ROUGE,
    KEY,
    MAX_BEAMS,
    PROMPT,
    ImpressionSettings,
    ImpressionUpdate,
)
from medlab.generation.impression_batch import (
    MAX_BATCH_ROWS,
    ROW_HEADERS,
    SUMMARY_HEADERS,
)
from medlab.generation.metrics import ROUGE_TYPES
from tabs.common import (
    GpuDuration,
    Lane,
    availability_banner,
    disclaimer,
    lines_in_file,
    model_card,
    model_event,
    progress_callback,
    ui_errors,
)
from tabs.i18n import translate

log = logging.getLogger(__name__)

TITLE = "Findings → impression"
TAB_ID = "impression"
ASSETS = Path(__file__).resolve().parent.parent / "assets" / "impression"

INTRO = f"""
### Summarise the findings of a radiology report into its impression
Document 002 fine-tunes FLAN-T5 to write the **Impression** section from the **Findings**,
with the prompt *"{PROMPT.format(findings='…')}"*, and scores it with **ROUGE** (word overlap
with the radiologist's impression: 1 = identical words, 0 = none in common). Paste findings or
a whole report: the FINDINGS section is extracted and an IMPRESSION section, if present, becomes
the reference. ROUGE measures overlap, not correctness: a fluent impression that misses the one
finding that matters can still score well.
"""

BEAMS_INFO = ("Document 002 used 10 beams. With 1 beam (greedy) the text streams as it is written; "
              "beam search keeps several candidates and shows the best one when it finishes.")


def _doc_table() -> str:
    rows = "\n".join(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |"
                     for name, values in DOC_002_ROUGE.items())
    return ("| document 002 (FLAN-T5-XL) | " + " | ".join(ROUGE_TYPES) + " |\n|---|" + "---|" * len(ROUGE_TYPES)
            + "\n" + rows)


def _notes_markdown(update: ImpressionUpdate) -> str:
    lines = [f"- {n}" for n in update.notes]
    if update.done:
        if update.rouge:
            scores = ", ".join(f"{k} **{v:.3f}**" for k, v in update.rouge.items())
            lines.append(translate("runtime.impression_rouge", scores=scores))
        else:
            lines.append(translate("runtime.impression_no_reference"))
        lines.append(translate("runtime.impression_generated_in", seconds=f"{update.seconds:.1f}"))
    else:
        lines.append(translate("runtime.impression_writing"))
    return "\n".join(lines)


@ui_errors
def impression(
    findings: str,
    reference: str = "",
    num_beams: int = DEFAULT_BEAMS,
    max_length: int = DEFAULT_MAX_LENGTH,
    progress: gr.Progress = gr.Progress(),
) -> Iterator[tuple[str, dict[str, float] | None, str]]:
    """Write the impression (summary) of a radiology report's findings, scored with ROUGE when a reference is given.

    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        findings: the FINDINGS text, or a whole report (its FINDINGS section is used).
        reference: optional reference impression to score against with ROUGE; default "" (no score).
        num_beams: beam-search width, 1 to 10; default 4.
        max_length: longest impression in tokens, 8 to 256; default 80.

    Returns:
        impression: the generated impression (the last streamed value is the whole text)
        rouge: ROUGE F-measures (0 to 1) against the reference, or null without one
        notes: Markdown notes (section used, truncation, ROUGE, time taken)
    """
    from medlab.generation.impression import impression_stream

    settings = ImpressionSettings(num_beams, max_length)
    for update in impression_stream(findings, reference, settings, progress=progress_callback(progress)):
        yield update.text, update.rouge, _notes_markdown(update)


@ui_errors
def impression_batch(
    file: str | None,
    num_beams: int = DEFAULT_BEAMS,
    max_length: int = DEFAULT_MAX_LENGTH,
    progress: gr.Progress = gr.Progress(),
) -> tuple[Any, Any, Any, str, str]:
    """Generate and score impressions for a file of reports: per-row ROUGE, summary statistics and a CSV.

    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        file: .csv/.jsonl/.json, at most 200 rows: findings (+ impression or reference to score) (over MCP: a URL).
        num_beams: beam-search width, 1 to 10; default 4.
        max_length: longest impression in tokens, 8 to 256; default 80.

    Returns:
        summary: per ROUGE score over the scored rows: mean, std, min, quartiles, max and n
        plot: per-report ROUGE distribution
        rows: per-report table: row, findings, reference, generated, truncated and each ROUGE score
        csv: path of the downloadable results CSV
        notes: Markdown notes (rows generated and scored, skipped rows)
    """
    import pandas as pd

    from medlab.core.errors import InputError
    from medlab.generation.impression_batch import evaluate_batch, rouge_figure

    if not file:
        raise InputError("Please upload a .csv, .jsonl or .json file with a 'findings' column.")
    result = evaluate_batch(file, ImpressionSettings(num_beams, max_length), progress=progress_callback(progress))
    summary = pd.DataFrame(result.summary_table(), columns=SUMMARY_HEADERS)
    rows = pd.DataFrame(
        [[r[h] if h not in ROUGE_TYPES or r[h] is None else round(r[h], 4) for h in ROW_HEADERS] for r in result.rows],
        columns=ROW_HEADERS,
    )
    notes = [f"{len(result.rows)} impressions generated in {result.seconds:.1f} s; "
             f"{summary['n'].max() if len(summary) else 0} scored against a reference."] + result.notes
    figure = rouge_figure(result) if len(summary) else None
    return summary, figure, rows, str(result.csv_path), "\n".join(f"- {n}" for n in notes)


def _examples() -> list[list[str]]:
    try:
        data = json.loads((ASSETS / "examples.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("impression examples unavailable: %s", exc)
        return []
    return [[e["text"], e.get("reference", "")] for e in data]


def build() -> None:
    disclaimer()
    availability_banner(KEY)
    gr.Markdown(INTRO)
    with gr.Row():
        with gr.Column(scale=1):
            findings = gr.Textbox(label="Findings (or a whole report)", lines=8,
                                  placeholder="FINDINGS: The heart size is normal. The lungs are clear...")
            reference = gr.Textbox(value="", label="Reference impression (optional, for ROUGE)", lines=2)
            with gr.Accordion("Decoding settings", open=False):
                num_beams = gr.Slider(1, MAX_BEAMS, value=DEFAULT_BEAMS, step=1, label="Beams", info=BEAMS_INFO)
                max_length = gr.Slider(8, 256, value=DEFAULT_MAX_LENGTH, step=8, label="Max length (tokens)",
                                       info="Document 002: 80.")
            run = gr.Button("Generate impression", variant="primary")
        with gr.Column(scale=1):
            output = gr.Textbox(label="Generated impression", lines=4, buttons=["copy"])
            scores = gr.JSON(label="ROUGE vs reference (F-measure, 0-1)")
            notes = gr.Markdown()
            with gr.Accordion("What document 002 reported", open=False):
                gr.Markdown(_doc_table())
    examples = _examples()
    if examples:
        gr.Examples(examples, inputs=[findings, reference], label="Examples (synthetic reports written for this app)",
                    cache_examples=False)
    model_event(run.click, impression, inputs=[findings, reference, num_beams, max_length],
                outputs=[output, scores, notes], api_name="impression", gpu_duration=30)

    with gr.Accordion("Batch evaluation (CSV / JSONL)", open=False):
        gr.Markdown(
            f"Upload a `.csv`, `.jsonl` or `.json` file with a **findings** column and, to be scored, an "
            f"**impression** (or **reference**) column; a **report** column with FINDINGS:/IMPRESSION: "
            f"sections also works. Up to {MAX_BATCH_ROWS} rows. You get per-row ROUGE, the mean / std / "
            "quartile summary (as in document 002), a distribution plot and a CSV. Decoding uses the "
            "settings above."
        )
        with gr.Row():
            batch_file = gr.File(label="Findings file", file_types=[".csv", ".jsonl", ".json"], type="filepath")
            evaluate = gr.Button("Evaluate", variant="primary")
        sample = ASSETS / "example_batch.jsonl"
        if sample.is_file():
            gr.Examples([[str(sample)]], inputs=[batch_file], label="Example file (20 synthetic reports)",
                        cache_examples=False)
        batch_notes = gr.Markdown()
        summary = gr.Dataframe(headers=SUMMARY_HEADERS, label="Summary over reports", interactive=False)
        plot = gr.Plot(label="Per-report ROUGE distribution")
        table = gr.Dataframe(headers=ROW_HEADERS, label="Per-report results", interactive=False, wrap=True,
                             max_height=400)
        download = gr.File(label="Download results (CSV)", interactive=False)
    model_event(evaluate.click, impression_batch, inputs=[batch_file, num_beams, max_length],
                outputs=[summary, plot, table, download, batch_notes], api_name="impression_batch",
                lane=Lane.BULK, gpu_duration=GpuDuration(base=30, per="file", seconds_each=1.5, count=lines_in_file))
    model_card(KEY)
