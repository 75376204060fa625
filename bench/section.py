"""Run ONE benchmark section in this (fresh) process and write its result as JSON.

    python -m bench.section NAME OUT.json [--quick] [--budget SECONDS]

`python -m bench` runs every section this way, each in its own process, so that models,
servers and memory of one section never disturb the timings of the next."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback

from bench.common import ROOT, SectionResult, apply_env

SECTIONS: dict[str, tuple[int, str]] = {
    # name: (number, title)
    "startup": (1, "Cold start: app vs bare Blocks with the same number of tabs"),
    "tabs": (2, "Per-tab handler overhead: API call vs raw forward (warm models)"),
    "gradcam": (3, "Grad-CAM overlay cost vs a plain forward (EfficientNet-B1)"),
    "search": (4, "Pathology search latency vs N (text encoding excluded)"),
    "retrieval": (5, "Assistant retrieval: app vs document 000's re-embed-per-question approach"),
    "index": (6, "Pathology index build throughput vs the encoder alone"),
    "cache": (7, "Model cache: warm switching, single-flight cold loads, peak RSS under the budget"),
    "captioner": (8, "CPU captioner (SmolVLM-500M-shaped Idefics3): time to first token, tokens/s"),
}


def run_section(name: str, quick: bool, budget: float) -> SectionResult:
    if name == "startup":
        from bench import startup_section

        return startup_section.run(quick)
    if name == "tabs":
        from bench import tabs_latency

        return tabs_latency.run(quick)
    if name == "gradcam":
        from bench import gradcam_cost

        return gradcam_cost.run(quick)
    if name == "search":
        from bench import search

        return search.run(quick, budget_s=budget)
    if name == "retrieval":
        from bench import retrieval

        return retrieval.run(quick)
    if name == "index":
        from bench import index_build

        return index_build.run(quick)
    if name == "cache":
        from bench import cache_behaviour

        return cache_behaviour.run(quick)
    if name == "captioner":
        from bench import captioner

        return captioner.run(quick)
    raise SystemExit(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")


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
        number, title = SECTIONS[args.name]
        result = SectionResult(number, title, status="error",
                               notes=[f"{type(exc).__name__}: {exc}", traceback.format_exc()[-3000:]])
    result.seconds = round(time.perf_counter() - started, 1)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result.to_dict(), f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
