"""Section 4: vector search at scale, recall beside latency.

For each vector kind (bench/vectors.py: CLIP-shaped clustered 512-d, real MiniLM 384-d
sentence embeddings, i.i.d. uniform 512-d) and size (10k, 100k, 1M) a chroma collection is
built through the app's own store code (medlab.retrieval.vectorstore.get_collection with the
app's HNSW settings, and vectorstore.upsert in the client's batch size), then searched with
exactly the call medlab.retrieval.image_search.search_text makes (query_embeddings, k=8,
metadatas + distances). Every query's top-8 is compared with the exact top-8 (numpy over all
stored vectors), so each latency comes with its recall@8, for the app's ef_search and for a
sweep of ef_search values (chroma lets ef_search change on an existing collection; the new
value applies when the index is next loaded, so the sweep reopens the client). Exact
numpy search (one BLAS thread) is timed beside it.

Stores are persistent under bench/_work/search/<kind>-n<N> and resumable (ids and vectors
are deterministic per row), because a large HNSW build can outlast one run's budget: each run
inserts within its budget and reports the measured insert rate."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import vectors as V
from bench.common import ROOT, WORK, Row, SectionResult, check, loadavg, summary

log = logging.getLogger(__name__)

K = 8  # the pathology tab's default k
EF_SWEEP = (16, 32, 64, 128, 256, 512)
GOAL_RECALL = 0.95
GOAL_P95 = {100_000: 25.0, 1_000_000: 60.0}
REALISTIC = ("clip", "minilm")
PLOT = ROOT / "bench" / "search_recall.png"


def plan(quick: bool) -> list[tuple[str, int]]:
    """(kind, N) stores in build order; MEDLAB_BENCH_SEARCH_PLAN="clip:100000,uniform:100000"
    picks some (to finish a long build in a run of its own)."""
    chosen = os.environ.get("MEDLAB_BENCH_SEARCH_PLAN", "").strip()
    if chosen:
        return [(k, int(n)) for k, n in (item.split(":") for item in chosen.split(","))]
    if quick:
        return [("clip", 2_000), ("uniform", 2_000)]
    # cheap stores first, so a run with a short budget still measures every kind at 10k and 100k
    return [("clip", 10_000), ("minilm", 10_000), ("uniform", 10_000),
            ("clip", 100_000), ("uniform", 100_000), ("minilm", 100_000),
            ("clip", 1_000_000), ("minilm", 1_000_000), ("uniform", 1_000_000)]


def _ids(start: int, stop: int) -> list[str]:
    return [f"row-{i:08d}" for i in range(start, stop)]


def _metas(kind: str, start: int, stop: int) -> list[dict[str, Any]]:
    # the metadata a pathology row carries (file, label, thumb...), so a query returns as much
    return [{"file": f"tiles/tile_{i:07d}.png", "source": "bench", "caption": "", "label": f"class-{i % 9}",
             "thumb": f"/thumbs/{i % 256:02x}/{i:08d}.jpg", "kind": kind} for i in range(start, stop)]


def open_store(kind: str, n: int, root: Path) -> Any:
    """The collection for (kind, n), in its own MEDLAB_DATA_DIR, opened the app's way."""
    from medlab.retrieval import vectorstore

    data = root / f"{kind}-n{n}"
    data.mkdir(parents=True, exist_ok=True)
    os.environ["MEDLAB_DATA_DIR"] = str(data)
    vectorstore.reset_clients()
    return vectorstore.get_collection(vectorstore.collection_name("bench", kind), metadata={"medlab:bench": kind})


def build_store(col: Any, kind: str, n: int, deadline: float) -> dict[str, Any]:
    """Fill (or resume filling) `col` up to n rows before `deadline`, in the client's batch
    size. MiniLM rows not embedded yet are embedded on the way (cached per 10k block), as long
    as the block's expected embedding time still fits before the deadline."""
    from medlab.retrieval.vectorstore import max_batch, upsert

    stamp_path = Path(os.environ["MEDLAB_DATA_DIR"]) / "bench-stamp.json"
    stamp = json.loads(stamp_path.read_text()) if stamp_path.exists() else {"insert_seconds": 0.0, "inserted": 0}
    batch = max_batch(col)
    # rows go in in order, so a build stopped half-way resumes at count()
    start = col.count()
    inserted, insert_s, embed_s, stopped = 0, 0.0, 0.0, ""
    while start < n:
        stop = min(n, start + batch)
        need = sum(V.block_seconds(kind, b) for b in range(start // V.BLOCK, (stop - 1) // V.BLOCK + 1))
        if time.perf_counter() + need + 5 > deadline:
            stopped = "budget"
            break
        t0 = time.perf_counter()
        vecs = V.vectors(kind, start, stop)
        t1 = time.perf_counter()
        upsert(col, _ids(start, stop), vecs, _metas(kind, start, stop))
        t2 = time.perf_counter()
        if need:  # MiniLM rows embedded for this batch: reported apart from the insert
            embed_s += t1 - t0
        else:  # cached or generated rows cost next to nothing: counted with the insert
            insert_s += t1 - t0
        insert_s += t2 - t1
        inserted += stop - start
        start = stop
    stamp["insert_seconds"] += insert_s
    stamp["inserted"] += inserted
    stamp["embed_seconds"] = stamp.get("embed_seconds", 0.0) + embed_s
    count = col.count()
    stamp["count"] = count
    stamp_path.write_text(json.dumps(stamp))
    rate_all = stamp["inserted"] / stamp["insert_seconds"] if stamp["insert_seconds"] > 0 else None
    return {"kind": kind, "n_target": n, "count": count, "complete": count >= n, "batch": batch,
            "stopped": stopped, "embedding_seconds_per_10k": V.minilm_seconds_per_block() if kind == "minilm" else None,
            "embed_seconds_this_run": round(embed_s, 1),
            "inserted_this_run": inserted, "insert_seconds_this_run": round(insert_s, 1),
            "rate_this_run": round(inserted / insert_s, 1) if inserted and insert_s > 0 else None,
            "insert_seconds_all_runs": round(stamp["insert_seconds"], 1),
            "rate_all_runs": round(rate_all, 1) if rate_all else None}


def _recall(got_ids: list[str], exact_rows: np.ndarray) -> float:
    want = {f"row-{int(i):08d}" for i in exact_rows}
    return len(want & set(got_ids)) / len(want)


def measure_store(col: Any, kind: str, n: int, nq: int, app_ef: int) -> dict[str, Any]:
    """recall@K and latency of the app's query at each ef_search, and exact numpy search."""
    from threadpoolctl import threadpool_limits

    q = V.queries(kind, nq)
    exact = V.exact_topk(kind, n, q, K)
    curve = []
    from medlab.retrieval import vectorstore

    name = col.name
    for ef in sorted(set(EF_SWEEP) | {app_ef}):
        # chroma applies a changed ef_search when the index is (re)loaded, not to an index this
        # process already holds: reopen the client for each setting
        vectorstore.reset_clients()
        col = vectorstore.get_collection(name, ef_search=ef)
        for qi in q[:3]:  # warm-up: loads the HNSW segment
            col.query(query_embeddings=[qi], n_results=K, include=["metadatas", "distances"])
        times, recalls = [], []
        for qi, ex in zip(q, exact):
            t = time.perf_counter()
            res = col.query(query_embeddings=[qi], n_results=K, include=["metadatas", "distances"])
            times.append(time.perf_counter() - t)
            recalls.append(_recall(res["ids"][0], ex))
        curve.append({"ef_search": ef, "recall": round(float(np.mean(recalls)), 4),
                      "min_recall": round(float(np.min(recalls)), 3), **summary(times)})
    vectorstore.reset_clients()
    vectorstore.get_collection(name, ef_search=app_ef)  # leave the store at the app's setting
    out: dict[str, Any] = {"kind": kind, "n": n, "dim": int(q.shape[1]), "queries": nq, "curve": curve,
                           "app_ef_search": app_ef}
    if n <= 200_000:  # exact search over the in-memory matrix (1M x 512 float32 is 2 GB: not held here)
        matrix = V.vectors(kind, 0, n)
        times = []
        with threadpool_limits(1):
            for qi in q:
                t = time.perf_counter()
                s = matrix @ qi
                top = np.argpartition(-s, K)[:K]
                top[np.argsort(-s[top])]
                times.append(time.perf_counter() - t)
        out["exact_numpy"] = summary(times)
    return out


def plot(measured: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for m in measured:
        xs = [c["p95_ms"] for c in m["curve"]]
        ys = [c["recall"] for c in m["curve"]]
        ax.plot(xs, ys, marker="o", label=f"{m['kind']} {m['n']:,}")
        for c in m["curve"]:
            if c["ef_search"] == m["app_ef_search"]:
                ax.scatter([c["p95_ms"]], [c["recall"]], s=120, facecolors="none", edgecolors="black")
    ax.axhline(GOAL_RECALL, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("p95 query latency (ms, log scale)")
    ax.set_ylabel(f"recall@{K} vs exact search")
    ax.set_title("chroma HNSW: recall vs latency over ef_search (circled: the app's setting)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _app_row(m: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in m["curve"] if c["ef_search"] == m["app_ef_search"])


def run(quick: bool = False, budget_s: float = 480.0) -> SectionResult:
    from medlab.retrieval.vectorstore import HNSW_DEFAULTS

    res = SectionResult(4, "Vector search at scale: recall@8 beside latency (text encoding excluded)")
    root = WORK / ("search-quick" if quick else "search")
    nq = 20 if quick else 100
    app_ef = int(HNSW_DEFAULTS["ef_search"])
    started = time.perf_counter()
    deadline = started + budget_s
    builds, measured = [], []
    for kind, n in plan(quick):
        if time.perf_counter() > deadline - 20:
            builds.append({"kind": kind, "n_target": n, "count": 0, "complete": False, "skipped": "no budget left"})
            continue
        col = open_store(kind, n, root)
        b = build_store(col, kind, n, deadline - 30)
        builds.append(b)
        if b["count"] and b["complete"]:
            measured.append(measure_store(col, kind, b["count"], nq, app_ef))
            res.load[f"{kind}-{n}"] = loadavg()
    res.details = {"builds": builds, "measured": measured, "k": K, "hnsw": HNSW_DEFAULTS, "queries": nq,
                   "quick": quick}
    render(res)
    res.seconds = time.perf_counter() - started
    return res


def render(res: SectionResult) -> None:
    """Tables, summary rows, notes and the plot from res.details (re-runnable on saved JSON)."""
    d = res.details
    builds, measured, quick, nq = d["builds"], d["measured"], d.get("quick", False), d["queries"]
    hnsw = d["hnsw"]
    app_ef = int(hnsw["ef_search"])
    res.tables, res.rows, res.notes = [], [], []

    rows = []
    for m in measured:
        a = _app_row(m)
        best = next((c for c in m["curve"] if c["recall"] >= GOAL_RECALL), None)
        ex = m.get("exact_numpy") or {}
        rows.append([m["kind"], f"{m['n']:,}", m["dim"], a["recall"], a["median_ms"], a["p95_ms"],
                     best["ef_search"] if best else "none", best["p95_ms"] if best else None,
                     ex.get("median_ms"), ex.get("p95_ms")])
    res.tables.append({
        "title": f"Recall@{K} and latency side by side ({nq} held-out queries per store; app ef_search "
                 f"{app_ef}, max_neighbors {hnsw['max_neighbors']}, ef_construction "
                 f"{hnsw['ef_construction']})",
        "columns": ["vectors", "N", "dim", f"app recall@{K}", "app median ms", "app p95 ms",
                    f"smallest ef_search with recall >= {GOAL_RECALL}", "its p95 ms", "exact numpy median ms",
                    "exact numpy p95 ms"],
        "rows": rows})
    res.tables.append({
        "title": "ef_search sweep (the recall/latency curve; plotted in search_recall.png)",
        "columns": ["vectors", "N", "ef_search", f"recall@{K}", "worst query recall", "median ms", "p95 ms"],
        "rows": [[m["kind"], f"{m['n']:,}", c["ef_search"], c["recall"], c["min_recall"], c["median_ms"],
                  c["p95_ms"]] for m in measured for c in m["curve"]]})
    res.tables.append({
        "title": "Store build (vectorstore.upsert in the client's batch size)",
        "columns": ["vectors", "N target", "stored", "batch", "inserted this run", "rate this run (vec/s)",
                    "insert s (all runs)", "rate all runs (vec/s)"],
        "rows": [[b["kind"], f"{b['n_target']:,}", b["count"], b.get("batch"), b.get("inserted_this_run"),
                  b.get("rate_this_run"), b.get("insert_seconds_all_runs"), b.get("rate_all_runs")] for b in builds]})
    if measured and not quick and plot(measured, PLOT):
        res.notes.append("![recall vs latency](search_recall.png)")

    by = {(m["kind"], m["n"]): m for m in measured}
    goals = {n: p95 for n, p95 in GOAL_P95.items()} if not quick else {2_000: 25.0}
    for n, limit in goals.items():
        for kind in (REALISTIC if not quick else ("clip",)):
            m = by.get((kind, n))
            label = f"{kind} {n:,}: app recall@{K} / p95"
            if m is None:
                b = next((b for b in builds if b["kind"] == kind and b["n_target"] == n), {})
                rate = b.get("rate_all_runs") or b.get("rate_this_run")
                eta = f"; ~{(n - b.get('count', 0)) / rate / 60:.0f} min more at {rate} vec/s" if rate else ""
                if b.get("embedding_seconds_per_10k"):
                    eta += (f"; embedding the missing MiniLM rows alone takes "
                            f"~{(n - b.get('count', 0)) / 10_000 * b['embedding_seconds_per_10k'] / 60:.0f} min here")
                res.rows.append(Row(label, None, "", f">= {GOAL_RECALL} and <= {limit:.0f} ms", None,
                                    f"store not built ({b.get('count', 0):,} of {n:,} rows{eta})"))
                continue
            a = _app_row(m)
            met = check(a["recall"], ">=", GOAL_RECALL) and check(a["p95_ms"], "<=", limit)
            res.rows.append(Row(label, a["recall"], "", f">= {GOAL_RECALL} and <= {limit:.0f} ms", met,
                                f"p95 {a['p95_ms']} ms"))
    _notes(res, builds, measured, app_ef)
    res.notes += list(d.get("extra_notes", []))  # added by hand when runs are combined (see main)
    if any(not b.get("complete") for b in builds):
        res.status = "partial"


def _notes(res: SectionResult, builds: list[dict[str, Any]], measured: list[dict[str, Any]], app_ef: int) -> None:
    by = {(m["kind"], m["n"]): m for m in measured}
    for kind in ("clip", "minilm", "uniform"):
        parts = []
        for n in (10_000, 100_000, 1_000_000):
            m = by.get((kind, n))
            if m:
                a = _app_row(m)
                best = next((c for c in m["curve"] if c["recall"] >= GOAL_RECALL), None)
                parts.append(f"{n:,}: recall {a['recall']} at p95 {a['p95_ms']} ms (ef_search {app_ef})"
                             + (f", {GOAL_RECALL} first reached at ef_search {best['ef_search']}" if best else
                                f", never {GOAL_RECALL} up to ef_search {max(EF_SWEEP)}"))
        if parts:
            res.notes.append(f"{kind}: " + "; ".join(parts) + ".")
    big = [b for b in builds if b.get("rate_all_runs") and b["n_target"] >= 100_000]
    for b in big:
        if not b.get("complete"):
            rate = b["rate_all_runs"]
            res.notes.append(
                f"{b['kind']} {b['n_target']:,}: {b['count']:,} rows stored; at the measured {rate} rows/s (this box, "
                f"shared) the rest needs ~{(b['n_target'] - b['count']) / rate / 60:.0f} min more; the build resumes "
                "on the next run.")
    for b in builds:
        if b.get("count") or b["n_target"] < 1_000_000:
            continue
        done = [x for x in builds if x["kind"] == b["kind"] and x.get("complete") and x.get("rate_all_runs")]
        if done:
            ref = max(done, key=lambda x: x["n_target"])
            embed = b.get("embedding_seconds_per_10k")
            res.notes.append(
                f"{b['kind']} {b['n_target']:,}: not started; at the {ref['n_target']:,} build's measured "
                f"{ref['rate_all_runs']} rows/s its insertion alone needs ~{b['n_target'] / ref['rate_all_runs'] / 60:.0f} "
                "min or more on this box (HNSW insertion searches the graph with ef_construction for every row, and "
                "the rate falls as the graph grows)"
                + (f", after ~{b['n_target'] / 10_000 * embed / 60:.0f} min of embedding at the measured {embed} s per "
                   "10k sentences (less the blocks already cached)" if embed else "") + ".")
    clip100 = by.get(("clip", 100_000))
    if clip100 and clip100.get("exact_numpy"):
        ex = clip100["exact_numpy"]["median_ms"]
        res.notes.append(
            f"Exact search (numpy, one thread) takes {ex} ms median at 100k x 512; it grows linearly, so ~{ex * 10:.0f} ms "
            "at 1M: above the 60 ms goal, so at 1M the HNSW index is the way, not exact search.")
    uni = by.get(("uniform", 100_000)) or by.get(("uniform", 10_000))
    if uni:
        res.notes.append(
            "Uniform random vectors are the worst case for any graph index (no neighbourhood structure: every "
            "point is almost equidistant from every other) and no real embedding looks like them; they are kept "
            "as the lower bound, not as a goal.")


def main(argv: list[str] | None = None) -> int:
    """python -m bench.search render OUT.json IN.json [IN2.json ...]: rebuild tables, notes and
    the plot from saved section results; stores measured in several runs are combined (the
    later file wins for the same vectors and N, unless its build got less far)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[0] != "render":
        raise SystemExit(main.__doc__)
    parts = [json.loads(Path(p).read_text()) for p in args[2:]]
    details = dict(parts[-1]["details"])
    details["extra_notes"] = [n for part in parts for n in part["details"].get("extra_notes", [])]
    builds: dict[tuple[str, int], dict[str, Any]] = {}
    measured: dict[tuple[str, int], dict[str, Any]] = {}
    load: dict[str, Any] = {}
    for part in parts:
        for b in part["details"]["builds"]:
            had = builds.get((b["kind"], b["n_target"]))
            # a later run wins, unless it got less far (a budget-limited run beside a finished build)
            if had is None or b.get("count", 0) >= had.get("count", 0):
                builds[(b["kind"], b["n_target"])] = b
        for m in part["details"]["measured"]:
            measured[(m["kind"], m["n"])] = m
        load.update(part.get("load", {}))
    order = {kind: i for i, kind in enumerate(("clip", "minilm", "uniform"))}
    details["builds"] = sorted(builds.values(), key=lambda b: (b["n_target"], order.get(b["kind"], 9)))
    details["measured"] = sorted(measured.values(), key=lambda m: (m["n"], order.get(m["kind"], 9)))
    res = SectionResult(parts[-1]["id"], parts[-1]["title"], status="ok", details=details,
                        seconds=round(sum(float(p.get("seconds") or 0) for p in parts), 1), load=load)
    render(res)
    Path(args[1]).write_text(json.dumps(res.to_dict(), indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
