"""Run ONE benchmark section in this (fresh) process and write its result as JSON.

    python -m bench.section NAME OUT.json [--quick] [--budget SECONDS]

`python -m bench` runs every section this way, each in its own process, so that models,
servers and memory of one section never disturb the timings of the next."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
import traceback
from dataclasses import dataclass

from bench.common import ROOT, SectionResult, apply_env


@dataclass(frozen=True)
class Section:
    number: int
    title: str
    module: str  # bench.<module>.run(quick[, budget_s]) returns a SectionResult
    takes_budget: bool = False


SECTIONS: dict[str, Section] = {
    "startup": Section(1, "Cold start: app vs bare Blocks with the same number of tabs", "startup_section"),
    "tabs": Section(2, "Per-tab handler overhead: API call vs raw forward + no-op round trip (warm models)", "tabs_latency"),
    "gradcam": Section(3, "Grad-CAM overlay cost vs a plain forward (EfficientNet-B1)", "gradcam_cost"),
    "search": Section(4, "Vector search at scale: recall@8 beside latency (text encoding excluded)", "search", True),
    "retrieval": Section(5, "Assistant retrieval: app vs document 000's re-embed-per-question approach", "retrieval"),
    "index": Section(6, "Pathology index build throughput vs the encoder alone", "index_build"),
    "cache": Section(7, "Model cache: warm switching, single-flight cold loads, peak RSS under the budget", "cache_behaviour"),
    "assistant": Section(8, "Assistant: answers what the notes cover, declines what they do not", "assistant_eval"),
    "teach": Section(9, "Teach a classifier: time to teach, feature-extraction rate vs raw forward", "teach"),
    "captioner": Section(10, "CPU captioner (SmolVLM-500M-shaped Idefics3): time to first token, tokens/s", "captioner"),
    "stress": Section(11, "Failure lab: an 8-step stress sweep vs one plain forward, per tab", "stress_cost"),
    "explain": Section(12, "Second explanation: Captum occlusion (and IG) vs one plain forward", "explain_cost"),
    "quiz": Section(13, "Class quiz: 40 students through a 10-case quiz on the running app", "quiz_load"),
    "classroom": Section(14, "A classroom on the free CPU Space: 40 students, every tab, 16 GB budget", "classroom_load"),
}


def run_section(name: str, quick: bool, budget: float) -> SectionResult:
    if name not in SECTIONS:
        raise SystemExit(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
    section = SECTIONS[name]
    module = importlib.import_module(f"bench.{section.module}")
    result = module.run(quick, budget_s=budget) if section.takes_budget else module.run(quick)
    result.id, result.title = section.number, section.title  # the table numbers the sections
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("name", choices=list(SECTIONS))
    parser.add_argument("out")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--budget", type=float, default=480.0)
    args = parser.parse_args(argv)
    apply_env()
    sys.path.insert(0, str(ROOT))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        result = run_section(args.name, args.quick, args.budget)
    except Exception as exc:  # noqa: BLE001 - a failed section is reported, the run goes on
        section = SECTIONS[args.name]
        result = SectionResult(section.number, section.title, status="error",
                               notes=[f"{type(exc).__name__}: {exc}", traceback.format_exc()[-3000:]])
    result.seconds = round(time.perf_counter() - started, 1)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result.to_dict(), f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
