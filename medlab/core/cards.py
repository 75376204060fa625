"""Model cards for the UI: the registry card plus the evaluation report that the training
scripts write next to the weights (evaluation.json, model_card.md and PNG plots)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from medlab.core.config import load_settings
from medlab.core.errors import MedlabError
from medlab.core.registry import get_spec, resolve_source
from medlab.core.status import availability, hub_cached_snapshot

log = logging.getLogger(__name__)

REPORT_FILE = "evaluation.json"
CARD_SECTION_FILE = "model_card.md"


def report_dir(key: str) -> Path | None:
    """Folder holding the evaluation report for the configured weights of `key`, if any:
    the local model dir, the cached Hub snapshot, or MEDLAB_DATA_DIR/reports/<key>."""
    candidates: list[Path] = []
    try:
        source = resolve_source(key)
        if source.is_local:
            candidates.append(Path(source.location))
        else:
            snap = hub_cached_snapshot(source.location, source.revision)
            if snap is not None:
                candidates.append(snap)
    except MedlabError:
        pass
    candidates.append(load_settings().data_dir / "reports" / key)
    for folder in candidates:
        if (folder / REPORT_FILE).is_file() or (folder / CARD_SECTION_FILE).is_file():
            return folder
    return None


def evaluation_report(key: str) -> dict[str, Any] | None:
    folder = report_dir(key)
    if folder is None or not (folder / REPORT_FILE).is_file():
        return None
    try:
        return json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("unreadable evaluation report for %s: %s", key, exc)
        return None


def evaluation_plots(key: str) -> list[Path]:
    folder = report_dir(key)
    if folder is None:
        return []
    plots = folder / "plots"
    search = plots if plots.is_dir() else folder
    return sorted(p for p in search.glob("*.png") if p.is_file())


def card_markdown(key: str) -> str:
    """Markdown for the model card accordion of a tab."""
    spec = get_spec(key)
    avail = availability(key)
    lines = [f"**{spec.title}**", "", spec.card, ""]
    lines.append(f"- **Source:** `{avail.source}` ({avail.origin})")
    lines.append(f"- **Licence:** {spec.licence}")
    if spec.community:
        lines.append("- **Validation:** community checkpoint; nobody has independently validated it.")
    lines.append(f"- **Memory (default weights):** ~{spec.memory_gb:g} GB, {spec.dtype}")
    lines.append(f"- **Status here:** {avail.status}" + (f" — {avail.reason}" if avail.reason else ""))
    if avail.status == "unavailable" and avail.fix:
        lines.append(f"- **How to fix:** {avail.fix}")
    folder = report_dir(key)
    if folder is not None and (folder / CARD_SECTION_FILE).is_file():
        lines += ["", "---", "", (folder / CARD_SECTION_FILE).read_text(encoding="utf-8")]
    elif folder is None:
        lines += ["", "_No evaluation report next to these weights. `python -m training.evaluate_classifier` "
                  "(or the task's evaluate script) writes one._"]
    return "\n".join(lines)
