"""python -m bench [--quick] [--out DIR] [--only NAME ...] [--total-budget SECONDS]

Runs every benchmark section, each in its own fresh process (bench/section.py), and writes
DIR/results.json and DIR/results.md (DIR defaults to bench/). See bench/README.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BASE_ENV, ROOT, WORK, loadavg
from bench.section import SECTIONS

# Run order: the search section goes last and gets whatever time is left (its stores are
# persistent and resumable, see bench/search.py).
ORDER = ("startup", "gradcam", "tabs", "stress", "explain", "retrieval", "assistant", "index", "cache", "teach", "captioner",
         "quiz", "classroom", "search")
# Rough full-run seconds per section on the 2-core box, to leave room for the ones after.
EXPECTED = {"startup": 100, "gradcam": 60, "tabs": 250, "retrieval": 120, "assistant": 60, "index": 90, "cache": 90,
            "teach": 240, "captioner": 150, "stress": 90, "explain": 90, "quiz": 120, "classroom": 650, "search": 90}

SPIN_PROBE = r"""
import time, torch
torch.set_num_threads(2)
a = torch.randn(512, 512)
for _ in range(5): a @ a
t = time.perf_counter()
for _ in range(40): a @ a
print((time.perf_counter() - t) / 40 * 1000)
"""


def spin_probe() -> dict[str, Any]:
    """ms per 512x512 matmul with 2 torch threads, libgomp spinning (default) vs sleeping."""
    out: dict[str, Any] = {}
    for policy in ("ACTIVE", "PASSIVE"):
        env = {**os.environ, "OMP_WAIT_POLICY": policy}
        try:
            proc = subprocess.run([sys.executable, "-c", SPIN_PROBE], env=env, capture_output=True, text=True,
                                  timeout=120)
            out[policy] = round(float(proc.stdout.strip().splitlines()[-1]), 2)
        except (subprocess.SubprocessError, ValueError, IndexError) as exc:
            out[policy] = f"failed: {exc}"
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        import psutil

        info["ram_gib"] = round(psutil.virtual_memory().total / 1024**3, 1)
    except Exception:  # noqa: BLE001
        pass
    try:
        from importlib.metadata import version

        info["versions"] = {p: version(p) for p in ("torch", "transformers", "gradio", "gradio_client", "chromadb",
                                                     "sentence-transformers", "grad-cam")}
    except Exception:  # noqa: BLE001
        pass
    return info


def run_section(name: str, quick: bool, timeout: float, budget: float, out_dir: Path) -> dict[str, Any]:
    out = out_dir / f"{name}.json"
    cmd = [sys.executable, "-m", "bench.section", name, str(out), "--budget", str(int(budget))]
    if quick:
        cmd.append("--quick")
    env = {**os.environ, **{k: v for k, v in BASE_ENV.items() if k not in os.environ}}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    started = time.perf_counter()
    log_path = out_dir / f"{name}.log"
    number, title = SECTIONS[name].number, SECTIONS[name].title
    try:
        with open(log_path, "w") as log:
            subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False)
        result = json.loads(out.read_text())
    except subprocess.TimeoutExpired:
        result = {"id": number, "title": title, "status": "error", "rows": [], "tables": [],
                  "notes": [f"timed out after {timeout:.0f} s (the run's total budget)"], "details": {}}
    except (OSError, ValueError) as exc:
        tail = log_path.read_text()[-2000:] if log_path.exists() else ""
        result = {"id": number, "title": title, "status": "error", "rows": [], "tables": [],
                  "notes": [f"section process failed ({exc})", tail], "details": {}}
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    return result


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def verdict(met: Any) -> str:
    return {True: "✅ met", False: "❌ missed", None: "– n/a"}[met]


def summary_rows(sections: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for s in sections:
        if not s.get("rows"):
            rows.append([s["id"], s["title"], "–", "–", f"⚠️ {s.get('status')}", (s.get("notes") or [""])[0][:200]])
        for r in s.get("rows", []):
            value = r["value"]
            shown = f"{_fmt(value)}{r['unit'] if r['unit'] == 'x' else ' ' + r['unit'] if r['unit'] else ''}"
            rows.append([s["id"], r["measure"], shown, r["target"], verdict(r["met"]), r.get("note", "")])
    return rows


def write_markdown(path: Path, meta: dict[str, Any], sections: list[dict[str, Any]]) -> None:
    lines = [
        "# Medical AI Lab — benchmark results",
        "",
        f"Generated by `python -m bench{' --quick' if meta['quick'] else ''}` on {meta['started']} "
        f"(wall time {meta['wall_seconds'] / 60:.1f} min).",
        "",
    ]
    for rerun in meta.get("reruns", []):
        lines += [f"Sections {', '.join(rerun['sections'])} were re-run alone on {rerun['started']} "
                  f"({rerun['wall_seconds'] / 60:.1f} min) and merged in.", ""]
    if meta["quick"]:
        lines += ["> **Quick smoke run**: tiny models, small N, 1–3 repeats. The numbers only show that the "
                  "pipeline works; they say nothing about performance.", ""]
    m = meta["machine"]
    lines += [
        f"Machine: {m.get('cpu', '?')}, {m.get('cpus')} CPUs, {m.get('ram_gib', '?')} GiB RAM, no GPU; "
        f"{', '.join(f'{k} {v}' for k, v in (m.get('versions') or {}).items())}.",
        f"Load average at start {meta['load_start']}, at end {meta['load_end']} (the box is shared: other "
        "processes ran during the benchmark, so absolute times are noisy; every ratio compares variants "
        "measured interleaved in the same process).",
        f"Environment of every section process: {', '.join(f'{k}={v}' for k, v in BASE_ENV.items())}.",
        f"Spin-wait probe (ms per 512x512 matmul, 2 torch threads, under this load): libgomp default "
        f"(ACTIVE) {meta['spin_probe'].get('ACTIVE')} vs PASSIVE {meta['spin_probe'].get('PASSIVE')}.",
        "",
        "Models: real-size architectures with random weights built from configs (nothing downloaded): "
        "ViT-B/16 @224 (skin, 7 HAM10000 labels), EfficientNet-B1 @240 (lung CT, 3 IQ-OTH/NCCD labels), "
        "FLAN-T5-base shape (impression), CLIP ViT-B/32 (PLIP); the real all-MiniLM-L6-v2 (assistant)."
        if not meta["quick"] else "Models: tiny versions of the same families.",
        "",
        "## Summary",
        "",
    ]
    lines += _table(["#", "measure", "value", "target", "result", "note"], summary_rows(sections))
    for s in sections:
        lines += ["", f"## {s['id']}. {s['title']}", "",
                  f"Status: {s.get('status')}; section wall time {s.get('wall_seconds', s.get('seconds'))} s."]
        for t in s.get("tables", []):
            lines += ["", f"**{t['title']}**", ""]
            lines += _table(t["columns"], t["rows"])
        for n in s.get("notes", []):
            lines += ["", ("- " + n) if "\n" not in n else "```\n" + n + "\n```"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def merge_warm_switching(sections: list[dict[str, Any]]) -> None:
    """Section 2 measured warm tab switching through the live app; report it in section 7."""
    by_name = {s["id"]: s for s in sections}
    tabs, cache = by_name.get(2), by_name.get(7)
    if not tabs or not cache:
        return
    ws = (tabs.get("details") or {}).get("warm_switching")
    if not ws:
        return
    loads = ws["loads_after"] - ws["loads_before"]
    cache["rows"] = [r for r in cache.get("rows", []) if "warm tabs through the API" not in r["measure"]]
    cache["rows"].insert(0, {
        "measure": f"loads while switching between 4 warm tabs through the API ({ws['switches']} calls)",
        "value": loads, "unit": "loads", "target": "= 0", "met": loads == 0,
        "note": "measured in section 2's live app (cache stats before/after)"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny models, small N, 1-3 repeats")
    parser.add_argument("--out", default=str(ROOT / "bench"), help="folder for results.json / results.md")
    parser.add_argument("--only", nargs="*", choices=list(SECTIONS), help="run only these sections")
    parser.add_argument("--merge", action="store_true",
                        help="with --only: replace those sections in the existing results.json/.md of --out")
    parser.add_argument("--sections-from", nargs="*", metavar="JSON",
                        help="with --merge: merge these section results (written by `python -m bench.section NAME "
                             "OUT.json`, e.g. a long search-store build) instead of running sections")
    parser.add_argument("--total-budget", type=float, default=None,
                        help="seconds for the whole run (default 2700 full, 300 quick); the search section "
                             "gets what the others leave")
    args = parser.parse_args(argv)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="bench-run-", dir=WORK))
    total = args.total_budget or (300.0 if args.quick else 2700.0)
    started_wall = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.perf_counter()
    meta: dict[str, Any] = {"quick": args.quick, "started": started_wall, "machine": machine(),
                            "load_start": loadavg(), "logs": str(logs)}
    names = [n for n in ORDER if not args.only or n in args.only]
    sections = []
    if args.sections_from:
        by_id = {section.number: name for name, section in SECTIONS.items()}
        for path in args.sections_from:
            result = json.loads(Path(path).read_text())
            result.setdefault("wall_seconds", result.get("seconds"))
            sections.append(result)
        names = [by_id[s["id"]] for s in sections]
    for i, name in enumerate([] if args.sections_from else names):
        elapsed = time.perf_counter() - t0
        later = sum(EXPECTED[n] for n in names[i + 1:]) * (0.2 if args.quick else 1.0)
        remaining = total - elapsed
        timeout = max(60.0, remaining - later)
        # the search section builds and measures as many stores as the rest of the run allows
        budget = max(30.0, remaining - 60.0) if name == "search" else 480.0
        print(f"[bench] {name}: starting ({elapsed:.0f} s elapsed, timeout {timeout:.0f} s)", flush=True)
        result = run_section(name, args.quick, timeout, budget, logs)
        print(f"[bench] {name}: {result.get('status')} in {result.get('wall_seconds')} s", flush=True)
        sections.append(result)
    # libgomp spin-wait probe: informative only, so it runs last and only if time is left.
    left = total - (time.perf_counter() - t0)
    meta["spin_probe"] = spin_probe() if left > 60 and not args.sections_from else {
        "ACTIVE": "skipped", "PASSIVE": "skipped"}
    meta["wall_seconds"] = round(time.perf_counter() - t0, 1) if not args.sections_from else round(
        sum(float(s.get("seconds") or 0) for s in sections), 1)
    meta["load_end"] = loadavg()
    previous = out_dir / "results.json"
    if args.merge and previous.exists():
        old = json.loads(previous.read_text())
        fresh = {s["id"] for s in sections}
        sections += [s for s in old["sections"] if s["id"] not in fresh]
        rerun = {"sections": names, "started": started_wall, "wall_seconds": meta["wall_seconds"],
                 "load_start": meta["load_start"], "load_end": meta["load_end"]}
        meta = old["run"]
        meta.setdefault("reruns", []).append(rerun)
        for s in sections:
            if s["id"] in fresh:
                s.setdefault("notes", []).append(
                    (f"Run alone with `python -m bench.section {' '.join(names)}` and merged at {started_wall}, "
                     if args.sections_from else
                     f"Re-run alone at {started_wall} (`python -m bench --only {' '.join(names)} --merge`), ") +
                    (f"load averages while it ran: {s.get('load')}." if args.sections_from else
                     f"load average {rerun['load_start']} -> {rerun['load_end']}."))
    sections.sort(key=lambda s: s["id"])
    merge_warm_switching(sections)
    (out_dir / "results.json").write_text(json.dumps({"run": meta, "sections": sections}, indent=1, default=str))
    write_markdown(out_dir / "results.md", meta, sections)
    print(f"[bench] wrote {out_dir / 'results.md'} and results.json in {meta['wall_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
