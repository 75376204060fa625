"""Section 1: cold start (process start -> first HTTP 200) of app.py vs a bare Gradio Blocks
with the same number of tabs (bench/startup.py), alternating runs."""

from __future__ import annotations

import time

from bench.common import Row, SectionResult, check, loadavg, summary


def run(quick: bool = False) -> SectionResult:
    from bench import startup

    res = SectionResult(1, "Cold start: app vs bare Blocks with the same number of tabs")
    started = time.perf_counter()
    m = startup.measure(1 if quick else 3)
    app_s, bare_s = summary(m["app_s"]), summary(m["bare_s"])
    res.details = m
    res.load["end"] = loadavg()
    res.tables.append({"title": f"Process start -> HTTP 200, {m['repeats']} alternating runs, {m['tabs']} tabs (ms)",
                       "columns": ["app", "median", "p95", "min"],
                       "rows": [["app.py (Medical AI Lab)", app_s["median_ms"], app_s["p95_ms"], app_s["min_ms"]],
                                ["bare Blocks (bench/bare_app.py)", bare_s["median_ms"], bare_s["p95_ms"],
                                 bare_s["min_ms"]]]})
    ratio = m["ratio"]
    res.rows.append(Row("cold start app / bare Blocks (median)", round(ratio, 3), "x", "<= 1.3x",
                        check(ratio, "<=", 1.3),
                        f"{app_s['median_ms'] / 1000:.2f} s vs {bare_s['median_ms'] / 1000:.2f} s; "
                        f"p95 ratio {app_s['p95_ms'] / bare_s['p95_ms']:.2f}x"))
    res.seconds = time.perf_counter() - started
    return res
