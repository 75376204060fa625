"""Section 14: a classroom on the free CPU Space (16 GB RAM, 2 vCPUs).

40 simulated students, each an OS process of its own with its own gradio_client (like 40
browsers), use the live app for 5 minutes: each picks a tab by a seeded weighted mix, sends
the tab's API call with example inputs from assets/, reads the answer, thinks (exponential,
mean 15 s) and picks again. The app runs in a process of its own, as `app.py` would, on the
real-size random-weight checkpoints of bench/models.py (ViT-B/16 skin, EfficientNet-B1 lung
CT, FLAN-T5-base-shaped impression, CLIP ViT-B/32 PLIP), the SmolVLM-500M-shaped captioner of
bench/captioner.py (the CPU default), the real MiniLM assistant over the shipped notes and a
pathology index of generated tiles; the cache budget is the one a 16 GB Space should set.

Measured: latency p50/p95 per tab (submit -> result, in the student's process), queue wait
(submit -> the server's "process_starts" message, from gradio_client's status updates),
failed requests (any exception, error status or malformed answer), peak RSS of the app process
(psutil, children included, sampled every 0.25 s) and loads / evictions per model (the cache's
stats). The same class is then run against a second configuration of the one lane every model
event shares (MEDLAB_GPU_LANE_CONCURRENCY=4 instead of 2) and both are reported side by side.

    python -m bench --only classroom                 # alone, into bench/results.*
    python -m bench.section classroom /tmp/c.json    # alone, raw JSON
    python -m bench.classroom_load serve|student ... # the two helper processes (used by run)

Knobs (environment): MEDLAB_BENCH_CLASSROOM_STUDENTS (40), MEDLAB_BENCH_CLASSROOM_SECONDS (300,
the main run), MEDLAB_BENCH_CLASSROOM_ALT_SECONDS (120, the alternative lane setting),
MEDLAB_BENCH_CLASSROOM_THINK_S (15, mean think time). --quick: 4 students, 10 s + 6 s, tiny
models, think time 2 s."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import BASE_ENV, ROOT, WORK, Row, SectionResult, loadavg, percentile

log = logging.getLogger(__name__)

REPLY = "@@"  # protocol lines between the parent and its helper processes
_PROTO: Any = None  # a helper process's real stdout (main() points sys.stdout at stderr)


def _reply(obj: Any) -> None:
    out = _PROTO or sys.stdout
    out.write(REPLY + json.dumps(obj, default=str) + "\n")
    out.flush()

# What a class does in a practical session: the imaging tabs most, then the text tabs; the
# captioner least (it is the slowest, and the tab says so). Weights sum to 100.
MIX: dict[str, int] = {"skin": 25, "lung": 20, "impression": 15, "pathology": 15, "assistant": 15, "caption": 10}
API = {"skin": "/skin_classify", "lung": "/lung_classify", "impression": "/impression",
       "pathology": "/pathology_search", "assistant": "/assistant_ask", "caption": "/radiograph_caption"}
CAPTION_TOKENS = 32  # a short description (the tab's default is 128; the API's minimum 16)
QUICK_CAPTION_TOKENS = 16
# A 16 GB Space: the cache may hold 10 GB of weights. The process needs the rest: Python +
# torch + gradio + chroma, activations of the requests running at once (captioner prefill,
# T5 beam search, Grad-CAM), a load's transient copy (the bfloat16 captioner file is read and
# converted to float32) and allocator fragmentation. Measured (2026-12-02, 10 students, every
# model loaded): peak RSS 5.5-5.7 GiB for 3.7 GiB of weights, i.e. ~2 GiB beyond the cache, so
# a full 10 GB cache peaks near 12 GiB and leaves ~4 GiB for more concurrency and the Space.
SPACE_RAM_GB = 16.0
MEMORY_BUDGET_GB = 10.0
ALT_LANE = 4  # the alternative MEDLAB_GPU_LANE_CONCURRENCY
TILES = 500  # pathology index size (generated H&E-like tiles, indexed once, kept in bench/_work)
FAST_TABS = ("pathology", "assistant")  # text-encoder tabs: tens of ms of model work


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


# -- inputs -----------------------------------------------------------------------------------
def _inputs() -> dict[str, list[Any]]:
    """Example inputs per tab (plain values; file paths are marked as ("file", path))."""
    assets = ROOT / "assets"
    findings = [json.loads(line)["findings"] for line in (assets / "impression" / "example_batch.jsonl")
                .read_text(encoding="utf-8").splitlines() if line.strip()]
    questions = [json.loads(line)["question"] for line in (ROOT / "knowledge" / "eval" / "questions.jsonl")
                 .read_text(encoding="utf-8").splitlines() if line.strip()]
    return {
        "skin": [str(assets / "skin" / "synthetic_lesion.png")] * 9 + [str(assets / "skin" / "offdomain_cat_chelsea.jpg")],
        "lung": [str(assets / "lung" / "ct_small_lung_window.png"), str(assets / "lung" / "CT_small.dcm")],
        "impression": findings,
        "pathology": ["An H&E image of colorectal adenocarcinoma epithelium with glands", "tumour stroma",
                      "adipose tissue", "lymphocytes and debris", "smooth muscle", "normal colon mucosa",
                      "mucus", "necrosis"],
        "assistant": questions,
        "caption": [str(assets / "radiograph" / "synthetic_chest_phantom.png"),
                    str(assets / "radiograph" / "ct_small_axial_lung_window.png")],
    }


def _call(client: Any, tab: str, value: Any, caption_tokens: int) -> Any:
    """Submit one request the way the tab's button would (the API's defaults otherwise)."""
    from gradio_client import handle_file

    api = API[tab]
    if tab in ("skin", "lung"):
        return client.submit(handle_file(value), api_name=api)
    if tab == "caption":
        return client.submit(handle_file(value), max_new_tokens=caption_tokens, api_name=api)
    if tab == "pathology":
        return client.submit(value, 8, "plip", api_name=api)
    return client.submit(value, api_name=api)  # impression (4 beams, max_length 80), assistant


def _check(tab: str, result: Any) -> None:
    """The answer is well formed (not only 'no exception')."""
    if tab == "skin":
        assert 0.0 <= result[4]["malignant_probability"] <= 1.0
    elif tab == "lung":
        assert len(result[0]["confidences"]) == 3 and Path(result[1]).is_file()
    elif tab == "pathology":
        assert isinstance(result[0], list) and result[0]
    elif tab == "assistant":
        assert isinstance(result[0], str) and result[0].strip()
    elif tab == "impression":  # random weights: the text may decode to nothing (special tokens only)
        assert isinstance(result[0], str) and isinstance(result[2], str)
    elif tab == "caption":
        assert isinstance(result, str)


# -- the student process --------------------------------------------------------------------
def _record_status_history() -> None:
    """Keep every status update of a job (gradio_client keeps only the latest): the time of
    the server's process_starts message gives the queue wait exactly, however brief."""
    from gradio_client import utils

    if getattr(utils.JobStatus, "_medlab_history", False):
        return

    def setattr_(self: Any, name: str, value: Any) -> None:
        if name == "latest_status":
            self.__dict__.setdefault("history", []).append((value.code.value, value.time.timestamp()
                                                            if value.time else time.time()))
        object.__setattr__(self, name, value)

    utils.JobStatus.__setattr__ = setattr_  # type: ignore[method-assign]
    utils.JobStatus._medlab_history = True  # type: ignore[attr-defined]


def student(url: str, seed: int, out_path: str, think_s: float, caption_tokens: int) -> int:
    from gradio_client import Client

    _record_status_history()
    rng = random.Random(seed)
    inputs = _inputs()
    tabs, weights = list(MIX), list(MIX.values())
    client = Client(url, verbose=False, download_files=tempfile.mkdtemp(prefix="bench-student-"))
    _reply({"ready": True})
    go = json.loads(sys.stdin.readline())
    start, end = float(go["start"]), float(go["end"])
    # students do not all click at the same instant: the first request after one think time
    time.sleep(max(0.0, start - time.time()) + rng.uniform(0.0, think_s))
    with open(out_path, "w", encoding="utf-8") as out:
        while time.time() < end:
            tab = rng.choices(tabs, weights)[0]
            value = rng.choice(inputs[tab])
            t0 = time.time()
            rec: dict[str, Any] = {"tab": tab, "seed": seed, "t0": t0}
            job = None
            try:
                job = _call(client, tab, value, caption_tokens)
                result = job.result(timeout=900)
                _check(tab, result)
                rec["ok"] = True
            except Exception as exc:  # noqa: BLE001 - every failure is counted, with its message
                rec["ok"] = False
                rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
            t1 = time.time()
            rec["latency_s"] = t1 - t0
            history = getattr(job.communicator.job, "history", []) if job is not None and job.communicator else []
            started = next((t for code, t in history if code in ("PROCESSING", "ITERATING", "PROGRESS")), None)
            rec["wait_s"] = (started - t0) if started is not None else None
            rec["statuses"] = sorted({code for code, _ in history})
            out.write(json.dumps(rec) + "\n")
            out.flush()
            time.sleep(max(0.0, min(rng.expovariate(1.0 / think_s), end - time.time())))
    client.close()
    return 0


# -- the app process ------------------------------------------------------------------------
def serve() -> int:
    """Build and launch the app (as app.py does, no share), print its URL, then answer
    'stats' on stdin with the cache stats until 'stop' or EOF."""
    logging.basicConfig(level=logging.WARNING)
    import app as app_module
    from bench.tabs_latency import _launch_retrying
    from medlab.core.config import load_settings
    from medlab.core.loaders import get_cache

    demo = app_module.build_app()
    extra = {k: v for k, v in app_module.launch_kwargs("127.0.0.1", 0, False).items()
             if k not in ("server_name", "server_port", "share")}
    port = _launch_retrying(demo, **extra)
    settings = load_settings()
    _reply({"url": f"http://127.0.0.1:{port}/", "budget_gb": settings.memory_budget_gb,
            "gpu_lane": settings.gpu_lane_concurrency})
    for line in sys.stdin:
        if line.strip() == "stats":
            _reply(get_cache().stats())
        elif line.strip() == "stop":
            break
    demo.close()
    return 0


def prepare() -> int:
    """One-off set-up in a process of its own (persistent under MEDLAB_DATA_DIR): the
    pathology index of the generated tiles and the assistant's store of the shipped notes.
    The app then starts with cold models, as a Space does after start-up."""
    from medlab.retrieval import image_index, knowledge_store

    t0 = time.perf_counter()
    report = image_index.index_folder(sys.argv[2], key="plip")
    knowledge_store.ensure_ingested()
    count = image_index.image_collection("plip").count()
    _reply({"seconds": round(time.perf_counter() - t0, 1), "index_count": count, "index_report": report.summary()})
    return 0


class _Proc:
    """A helper process spoken to by lines: REPLY-prefixed JSON back, anything else ignored."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path | None = None) -> None:
        self.log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.classroom_load", *args], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     bufsize=1)

    def read(self, timeout: float) -> dict[str, Any]:
        box: list[Any] = []

        def reader() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith(REPLY):
                    box.append(json.loads(line[len(REPLY):]))
                    return

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        t.join(timeout)
        if not box:
            raise RuntimeError(f"helper {self.proc.args[3:5]} gave no answer in {timeout:.0f} s "
                               f"(exit code {self.proc.poll()})")
        return box[0]

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def close(self, timeout: float = 60.0) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=timeout)
            except (subprocess.TimeoutExpired, OSError, BrokenPipeError):
                self.proc.kill()
                self.proc.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()


class _RssSampler:
    """Peak RSS of a process and its children, sampled every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.first = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _rss(self) -> int:
        import psutil

        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs if p.is_running())
        except psutil.Error:
            return 0

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# -- one class against one configuration ------------------------------------------------------
def run_class(env: dict[str, str], students: int, seconds: float, think_s: float, caption_tokens: int,
              folder: Path, label: str) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    server = _Proc(["serve"], env, folder / f"server-{label}.log")
    kids: list[_Proc] = []
    sampler: _RssSampler | None = None
    try:
        t0 = time.perf_counter()
        info = server.read(timeout=300)
        startup_s = time.perf_counter() - t0
        sampler = _RssSampler(server.proc.pid)
        rss_ready = sampler.first
        server.send("stats")
        before = server.read(timeout=30)
        client_env = {k: v for k, v in env.items() if not k.startswith("MEDLAB_MODEL")}
        t1 = time.perf_counter()
        for i in range(students):
            kids.append(_Proc(["student", info["url"], str(1000 + i), str(folder / f"{label}-{i:02d}.jsonl"),
                               str(think_s), str(caption_tokens)], client_env, folder / f"student-{label}-{i:02d}.log"))
        for kid in kids:
            kid.read(timeout=300)
        spawn_s = time.perf_counter() - t1
        start = time.time() + 1.0
        go = json.dumps({"start": start, "end": start + seconds})
        for kid in kids:
            kid.send(go)
        load_start = loadavg()
        for kid in kids:  # requests still in flight at the end are finished (and counted)
            kid.proc.wait(timeout=seconds + 960)
        wall = time.time() - start
        server.send("stats")
        after = server.read(timeout=30)
        peak = sampler.stop()
        sampler = None
    finally:
        if sampler is not None:
            sampler.stop()
        for kid in kids:
            kid.close(timeout=5)
        try:
            server.send("stop")
        except (OSError, BrokenPipeError):
            pass
        server.close()
    records = []
    for i in range(students):
        path = folder / f"{label}-{i:02d}.jsonl"
        if path.is_file():
            records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in records:
        r["t_rel"] = r["t0"] - start
    return {"label": label, "gpu_lane": info.get("gpu_lane"), "budget_gb": info.get("budget_gb"),
            "students": students, "seconds": seconds, "wall_s": round(wall, 1), "startup_s": round(startup_s, 1),
            "spawn_s": round(spawn_s, 1), "rss_ready_bytes": rss_ready, "peak_rss_bytes": peak,
            "stats_before": before, "stats_after": after, "load": [load_start, loadavg()], "records": records}


def _ms(values: list[float], q: float) -> float | None:
    return round(percentile(values, q) * 1000.0) if values else None


def tab_stats(records: list[dict[str, Any]], until: float | None = None) -> dict[str, dict[str, Any]]:
    """Per tab (and 'all'): requests, failures, latency and queue-wait p50/p95 in ms;
    `until`: only requests sent in the first `until` seconds."""
    chosen = [r for r in records if until is None or r["t_rel"] <= until]
    out = {}
    for tab in [*MIX, "all"]:
        rs = [r for r in chosen if tab == "all" or r["tab"] == tab]
        ok = [r for r in rs if r["ok"]]
        lat = [r["latency_s"] for r in ok]
        waits = [r["wait_s"] for r in ok if r.get("wait_s") is not None]
        work = [r["latency_s"] - r["wait_s"] for r in ok if r.get("wait_s") is not None]
        out[tab] = {"requests": len(rs), "failed": len(rs) - len(ok), "p50_ms": _ms(lat, 50), "p95_ms": _ms(lat, 95),
                    "wait_p50_ms": _ms(waits, 50), "wait_p95_ms": _ms(waits, 95),
                    "after_start_p50_ms": _ms(work, 50), "waits_measured": len(waits)}
    return out


def _loads(run: dict[str, Any]) -> dict[str, int]:
    before, after = run["stats_before"].get("load_counts", {}), run["stats_after"].get("load_counts", {})
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after))
            if after.get(k, 0) - before.get(k, 0)}


def _evictions(run: dict[str, Any]) -> int:
    return int(run["stats_after"].get("evictions", 0)) - int(run["stats_before"].get("evictions", 0))


# -- the section ----------------------------------------------------------------------------
def _prepare_models(quick: bool) -> dict[str, str]:
    from bench.captioner import REAL, TINY, build_smolvlm_shaped
    from bench.index_build import make_tiles
    from bench.models import build_all

    scale = "tiny" if quick else "real"
    env = build_all(WORK / "models", scale)
    cap = build_smolvlm_shaped(WORK / "models" / f"captioner-smolvlm-{scale}", TINY if quick else REAL)
    env["MEDLAB_MODEL_CAPTIONER"] = str(cap)
    env["MEDLAB_MODEL_CAPTIONER_ADAPTER"] = "none"
    tiles = make_tiles(WORK / f"classroom-tiles-{16 if quick else TILES}", 16 if quick else TILES)
    env["_TILES"] = str(tiles[0].parent)
    return env


def run(quick: bool = False) -> SectionResult:
    res = SectionResult(14, "A classroom on the free CPU Space: 40 students, every tab, 16 GB budget")
    started = time.perf_counter()
    students = int(_env_number("MEDLAB_BENCH_CLASSROOM_STUDENTS", 4 if quick else 40))
    seconds = _env_number("MEDLAB_BENCH_CLASSROOM_SECONDS", 10 if quick else 300)
    alt_seconds = _env_number("MEDLAB_BENCH_CLASSROOM_ALT_SECONDS", 6 if quick else 120)
    think_s = _env_number("MEDLAB_BENCH_CLASSROOM_THINK_S", 2 if quick else 15)
    caption_tokens = QUICK_CAPTION_TOKENS if quick else CAPTION_TOKENS
    scale = "tiny" if quick else "real"

    models = _prepare_models(quick)
    tiles_dir = models.pop("_TILES")
    data_dir = WORK / f"classroom-data-{scale}"
    env = {**os.environ, **{k: v for k, v in BASE_ENV.items() if k not in os.environ}, **models,
           "MEDLAB_DATA_DIR": str(data_dir), "MEDLAB_MEMORY_BUDGET_GB": str(MEMORY_BUDGET_GB),
           "MEDLAB_PATHOLOGY_SOURCE": "off", "MEDLAB_INDEX_ROOTS": str(Path(tiles_dir).parent),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("MEDLAB_GPU_LANE_CONCURRENCY", None)
    folder = Path(tempfile.mkdtemp(prefix="bench-classroom-", dir=WORK))
    prep = _Proc(["prepare", tiles_dir], env, folder / "prepare.log")
    try:
        prepared = prep.read(timeout=900)
    finally:
        prep.close()
    res.details.update({"models": models, "prepare": prepared, "build_and_prepare_s": round(time.perf_counter() - started, 1),
                        "students": students, "seconds": seconds, "alt_seconds": alt_seconds, "think_mean_s": think_s,
                        "mix_percent": MIX, "caption_max_new_tokens": caption_tokens, "memory_budget_gb": MEMORY_BUDGET_GB,
                        "logs": str(folder)})

    main = run_class(env, students, seconds, think_s, caption_tokens, folder, "lane2")
    res.load["main"] = main["load"][1]
    alt = run_class({**env, "MEDLAB_GPU_LANE_CONCURRENCY": str(ALT_LANE)}, students, alt_seconds, think_s,
                    caption_tokens, folder, f"lane{ALT_LANE}")
    res.load["alternative"] = alt["load"][1]

    stats_main = tab_stats(main["records"])
    stats_main_window = tab_stats(main["records"], until=alt_seconds)
    stats_alt = tab_stats(alt["records"])
    loads = _loads(main)
    for run_ in (main, alt):
        errors = sorted({r["error"] for r in run_["records"] if not r["ok"]})
        run_["errors"] = errors[:20]
        run_["loads"] = _loads(run_)
        run_["evictions"] = _evictions(run_)
    res.details["runs"] = {r["label"]: {k: v for k, v in r.items() if k != "records"} for r in (main, alt)}
    res.details["records_columns"] = ["tab", "sent_s", "latency_s", "wait_s", "ok"]  # sent_s: after the start
    res.details["records"] = {r["label"]: [[x["tab"], round(x["t_rel"], 2), round(x["latency_s"], 3),
                                            None if x.get("wait_s") is None else round(x["wait_s"], 3), x["ok"]]
                                           for x in r["records"]] for r in (main, alt)}
    res.details["tab_stats"] = {"lane2": stats_main, f"lane2_first_{alt_seconds:.0f}s": stats_main_window,
                                f"lane{ALT_LANE}": stats_alt}

    gib = 1024**3
    a = stats_main["all"]
    res.rows.append(Row(f"classroom ({students} students, {seconds:.0f} s): failed requests", a["failed"], "requests",
                        "= 0", a["failed"] == 0,
                        f"{a['requests']} requests ({a['requests'] / seconds:.2f}/s); "
                        + (main["errors"][0][:120] if main["errors"] else "none failed")))
    peak = main["peak_rss_bytes"] / gib
    cache_peak = main["stats_after"].get("devices", {}).get("cpu", {}).get("peak_gb")
    res.rows.append(Row("classroom: peak RSS of the app process", round(peak, 2), "GiB", f"< {SPACE_RAM_GB:.0f} GiB",
                        peak < SPACE_RAM_GB,
                        f"cache budget MEDLAB_MEMORY_BUDGET_GB={MEMORY_BUDGET_GB:g}; RSS at start "
                        f"{main['rss_ready_bytes'] / gib:.2f} GiB (no model); cache peak {cache_peak} GiB, so "
                        f"{peak - (cache_peak or 0):.2f} GiB beyond the weights"))
    used = list(loads)
    once = all(v == 1 for v in loads.values()) and main["evictions"] == 0
    res.rows.append(Row("classroom: model loads (each model used loads once, no eviction)", sum(loads.values()), "loads",
                        f"= {len(used)} (one per model), 0 evictions", once,
                        ", ".join(f"{k} {v}" for k, v in loads.items()) + f"; evictions {main['evictions']}"))
    for tab in MIX:
        s = stats_main[tab]
        def sec(ms: float | None) -> str:
            return "–" if ms is None else f"{ms / 1000:.2f} s"

        res.rows.append(Row(f"classroom: {tab} ({API[tab]}) latency p95", None if s["p95_ms"] is None else
                            round(s["p95_ms"] / 1000, 2), "s", "–", None,
                            f"p50 {sec(s['p50_ms'])}; queue wait p50 {sec(s['wait_p50_ms'])} / p95 "
                            f"{sec(s['wait_p95_ms'])}; {s['requests']} requests, {s['failed']} failed"))
    fast = {k: [r["wait_s"] for r in run_["records"] if r["ok"] and r["tab"] in FAST_TABS and r.get("wait_s") is not None
                and (k != "main" or r["t_rel"] <= alt_seconds)]
            for k, run_ in (("main", main), ("alt", alt))}
    w2, w4 = _ms(fast["main"], 95), _ms(fast["alt"], 95)
    res.rows.append(Row(f"classroom: queue wait p95 of the fast tabs (search, assistant), lane {ALT_LANE} vs 2 "
                        f"(first {alt_seconds:.0f} s of each)", round(w4 / w2, 2) if w2 and w4 is not None else None, "x",
                        "–", None, f"lane 2: {w2} ms, lane {ALT_LANE}: {w4} ms (MEDLAB_GPU_LANE_CONCURRENCY)"))

    res.tables.append({
        "title": f"Per tab, lane 2 (default), {students} students x {seconds:.0f} s (latency and queue wait in ms)",
        "columns": ["tab", "requests", "failed", "p50", "p95", "wait p50", "wait p95", "after start p50"],
        "rows": [[t, s["requests"], s["failed"], s["p50_ms"], s["p95_ms"], s["wait_p50_ms"], s["wait_p95_ms"],
                  s["after_start_p50_ms"]] for t, s in stats_main.items()]})
    side = []
    for t in [*MIX, "all"]:
        m, x = stats_main_window[t], stats_alt[t]
        side.append([t, m["requests"], x["requests"], m["p50_ms"], x["p50_ms"], m["p95_ms"], x["p95_ms"],
                     m["wait_p95_ms"], x["wait_p95_ms"], m["failed"] + x["failed"]])
    res.tables.append({
        "title": f"GPU lane concurrency 2 (default) vs {ALT_LANE} (MEDLAB_GPU_LANE_CONCURRENCY), the first "
                 f"{alt_seconds:.0f} s of each run (same students, same seeds; ms)",
        "columns": ["tab", "requests (2)", f"requests ({ALT_LANE})", "p50 (2)", f"p50 ({ALT_LANE})", "p95 (2)",
                    f"p95 ({ALT_LANE})", "wait p95 (2)", f"wait p95 ({ALT_LANE})", "failed (both)"],
        "rows": side})
    res.tables.append({
        "title": "The two runs",
        "columns": ["lane", "seconds", "requests", "failed", "peak RSS (GiB)", "RSS at start (GiB)", "loads",
                    "evictions", "app start (s)", "students started (s)", "load average"],
        "rows": [[r["gpu_lane"], r["seconds"], len(r["records"]), sum(1 for x in r["records"] if not x["ok"]),
                  round(r["peak_rss_bytes"] / gib, 2), round(r["rss_ready_bytes"] / gib, 2),
                  ", ".join(f"{k} {v}" for k, v in r["loads"].items()), r["evictions"], r["startup_s"], r["spawn_s"],
                  r["load"][1]] for r in (main, alt)]})

    res.notes.append(
        f"Each student is an OS process with its own gradio_client (bench/classroom_load.py `student`), the app a "
        f"process of its own (`serve`: app.build_app + app.launch_kwargs, as app.py launches it), every model cold "
        f"at the start (the Space just woke up; the pathology index of {TILES if not quick else 16} generated tiles "
        f"and the assistant's store were built beforehand, `prepare`). Mix per request: "
        + ", ".join(f"{t} {w}%" for t, w in MIX.items())
        + f"; think time between a student's answer and next request exponential, mean {think_s:g} s (the first "
        f"request after uniform(0, {think_s:g}) s). Inputs from assets/: skin lesion (1 in 10 the off-domain cat "
        f"photo), lung CT PNG or DICOM, impression findings from example_batch.jsonl with the tab's defaults "
        f"(4 beams, max_length 80), 8 search queries (k=8, PLIP), the assistant's labelled questions (covered and "
        f"off-topic), radiograph captions with max_new_tokens={caption_tokens} (temperature 0.3 default).")
    res.notes.append(
        "Latency: submit -> result in the student's process. Queue wait: submit -> the server's process_starts "
        "message (gradio_client status updates, every one kept; includes the upload of the input file and joining "
        "the queue); 'after start' = latency - wait (the work, streaming and download). A request still running at "
        "the end is finished and counted. Failed: any exception, error status or malformed answer. Peak RSS: the "
        "app process and its children, psutil every 0.25 s. Loads/evictions: the cache's stats before and after.")
    res.notes.append(
        f"Memory budget: MEDLAB_MEMORY_BUDGET_GB={MEMORY_BUDGET_GB:g} for a {SPACE_RAM_GB:g} GB Space: the cache's "
        "budget covers weights only, and the process needs the rest (its RSS with no model loaded is in the table; "
        "activations of the requests running at once; a load's transient copy; allocator fragmentation). Every model "
        "of the mix fits at once, so a class should see one load per model and no eviction; set it explicitly on a "
        "Space (the default, 60% of the RAM psutil reports, may read the host's RAM, not the container's).")
    res.notes.append(_finding(stats_main, stats_main_window, stats_alt, students, think_s, alt_seconds))
    first = {t: min((r for r in main["records"] if r["tab"] == t), key=lambda r: r["t_rel"], default=None) for t in MIX}
    res.details["first_request_per_tab"] = {t: None if r is None else {"sent_s": round(r["t_rel"], 1),
                                                                        "latency_s": round(r["latency_s"], 1)}
                                            for t, r in first.items()}
    res.notes.append(
        "Reading the comparison: the two configurations run one after the other, each from a cold app, so the "
        "machine's load must be alike for the ratio to mean something: load averages (1 min) at the end of each run "
        f"were {(main['load'][1] or ['?'])[0]} and {(alt['load'][1] or ['?'])[0]} (2 cores; other processes count). "
        "The first request of "
        "each tab pays its model's cold load (captioner ~2 GB in float32), and it holds one of the lane's slots "
        "meanwhile: first request per tab (sent at, latency) "
        + ", ".join(f"{t} {v['sent_s']} s / {v['latency_s']} s" for t, v in res.details["first_request_per_tab"].items()
                    if v) + ".")
    res.seconds = time.perf_counter() - started
    return res


def _finding(main: dict[str, Any], window: dict[str, Any], alt: dict[str, Any], students: int, think_s: float,
             alt_seconds: float) -> str:
    def w(s: dict[str, Any], tab: str, key: str = "wait_p95_ms") -> str:
        return "–" if s[tab][key] is None else f"{s[tab][key] / 1000:.1f} s"

    return (
        f"Finding: every model event of every tab shares one queue lane (tabs.common.Lane.GPU, concurrency_id 'gpu', "
        f"limit MEDLAB_GPU_LANE_CONCURRENCY, default 2), so with {students} students thinking {think_s:g} s on average "
        f"a request whose model work takes tens of ms (search, assistant) waits in the queue whenever both slots are "
        f"held (captions, 4-beam impressions, the first requests' cold loads): queue wait p95 search {w(main, 'pathology')}, "
        f"assistant {w(main, 'assistant')}, skin {w(main, 'skin')}, caption {w(main, 'caption')} (whole run). The "
        f"setting that changes it is MEDLAB_GPU_LANE_CONCURRENCY; with {ALT_LANE} (first {alt_seconds:.0f} s of each "
        f"run, same students and seeds): search wait p95 {w(window, 'pathology')} -> {w(alt, 'pathology')}, assistant "
        f"{w(window, 'assistant')} -> {w(alt, 'assistant')}, caption latency p95 {w(window, 'caption', 'p95_ms')} "
        f"-> {w(alt, 'caption', 'p95_ms')}, all tabs latency p95 {w(window, 'all', 'p95_ms')} -> {w(alt, 'all', 'p95_ms')}. "
        "The box has 2 cores either way: a higher limit does not "
        "add throughput, it lets short requests run beside long ones (and holds more activations at once).")


def main(argv: list[str]) -> int:
    os.environ.update({k: v for k, v in BASE_ENV.items() if k not in os.environ})
    # stdout carries only the protocol lines: anything a library prints goes to stderr (a log
    # file), so a chatty library can never fill a pipe nobody reads and stall the process
    global _PROTO
    _PROTO, sys.stdout = sys.stdout, sys.stderr
    if argv[1] == "student":
        return student(argv[2], int(argv[3]), argv[4], float(argv[5]), int(argv[6]))
    if argv[1] == "serve":
        return serve()
    if argv[1] == "prepare":
        return prepare()
    raise SystemExit(f"unknown command {argv[1]!r}: serve, prepare or student")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
