"""Section 2: per-tab handler overhead. The real app (app.build_app + launch) serves the
real-size random-weight checkpoints; each tab's full API call through gradio_client (warm
model) is compared with the raw model forward on the same input, and with the engine call
(the medlab function the handler wraps, called in-process) to split the overhead into
"what the endpoint does besides the forward" and "HTTP / queue / (de)serialisation".

Also records, for section 7, how many model loads happen while switching between warm tabs."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.api_client import RemoteClient
from bench.common import ROOT, WORK, Row, SectionResult, check, loadavg, summary, timed

log = logging.getLogger(__name__)

FINDINGS = ("The lungs are clear without focal consolidation , effusion or pneumothorax . The heart size is "
            "normal . The mediastinal contour is within normal limits . Mild degenerative changes of the "
            "thoracic spine . No acute fracture .")
QUERY = "An H&E image of colorectal adenocarcinoma epithelium with glands"
NEW_TOKENS = 64


def _launch_retrying(demo: Any, **kwargs: Any) -> int:
    """Launch on a free port; Gradio's own "is localhost reachable" probe (HEAD, 3 s timeout)
    can time out on an overloaded box, which it reports as ValueError: try again."""
    from bench.startup import _free_port

    for attempt in range(3):
        port = _free_port()
        try:
            demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **kwargs)
            return port
        except ValueError:
            demo.close()
            if attempt == 2:
                raise
            log.warning("Gradio's localhost probe timed out; launching again")
    raise AssertionError("unreachable")


def _launch() -> tuple[Any, Any, str]:
    from gradio_client import Client

    import app as app_module
    from bench.startup import _free_port

    demo = app_module.build_app()
    extra = {k: v for k, v in app_module.launch_kwargs("127.0.0.1", _free_port(), False).items()
             if k not in ("server_name", "server_port", "share")}
    port = _launch_retrying(demo, **extra)
    url = f"http://127.0.0.1:{port}/"
    client = Client(url, verbose=False, download_files=tempfile.mkdtemp(prefix="bench-dl-"))
    return demo, client, url


def _echo_app(gallery_files: list[str]) -> tuple[Any, str]:
    """A bare Blocks with no-op endpoints shaped like each tab's call (same input kind, same
    output components): the Gradio + gradio_client round-trip floor on this machine (queue,
    SSE, upload, download, JSON). A tab's fair baseline is its raw forward plus this floor."""
    import gradio as gr

    with gr.Blocks(analytics_enabled=False) as echo:
        text_in, text_out = gr.Textbox(), gr.Textbox()
        image_in, label_out, image_out = gr.Image(type="filepath"), gr.Label(), gr.Image()
        number_in, gallery_out = gr.Number(value=8), gr.Gallery()
        gr.Button().click(lambda s: s, text_in, text_out, api_name="echo_text")
        gr.Button().click(lambda p: {"a": 1.0, "b": 0.0}, image_in, label_out, api_name="echo_image")
        gr.Button().click(lambda p: ({"a": 1.0, "b": 0.0}, p), image_in, [label_out, image_out],
                          api_name="echo_image_image")
        gr.Button().click(lambda s, k: [(f, f"tile {i}") for i, f in enumerate(gallery_files[: int(k)])],
                          [text_in, number_in], gallery_out, api_name="echo_gallery")
    echo.queue()
    port = _launch_retrying(echo, ssr_mode=False, allowed_paths=sorted({str(Path(f).parent) for f in gallery_files}))
    return echo, f"http://127.0.0.1:{port}/"


def _ratio_rows(res: SectionResult, name: str, stats: dict[str, dict[str, Any]], raw_key: str, target: float,
                note: str = "") -> float:
    """API median / (raw work median + the no-op round trip of the same shape, same run)."""
    api, raw, floor = stats["api"]["median_ms"], stats[raw_key]["median_ms"], stats["gradio_floor"]["median_ms"]
    ratio = api / (raw + floor)
    res.rows.append(Row(f"{name}: API call / ({raw_key.replace('_', ' ')} + no-op round trip) (median)",
                        round(ratio, 2), "x", f"<= {target}x", check(ratio, "<=", target),
                        f"raw {raw:.0f} ms + round trip {floor:.0f} ms vs API {api:.0f} ms; " + note))
    return ratio


def run(quick: bool = False) -> SectionResult:
    from bench.models import build_all

    res = SectionResult(2, "Per-tab handler overhead: API call vs raw forward + no-op round trip (warm models)")
    started = time.perf_counter()
    scale = "tiny" if quick else "real"
    env = build_all(WORK / "models", scale)
    os.environ.update(env)
    data_dir = WORK / f"tabs-data-{scale}"
    os.environ["MEDLAB_DATA_DIR"] = str(data_dir)
    res.details["models"] = env
    res.details["build_seconds"] = round(time.perf_counter() - started, 1)

    import torch
    from gradio_client import handle_file

    from medlab.core.loaders import get_cache, get_model
    from medlab.generation import impression
    from medlab.io.imaging import load_any
    from medlab.retrieval import encoders, image_index, image_search
    from medlab.vision import classify, gate, gradcam

    # The pathology search endpoint needs a non-empty index: the bundled example tiles.
    image_index.index_examples("plip")
    demo, client, url = _launch()
    remote: RemoteClient | None = None
    floor: RemoteClient | None = None
    repeats = {"skin": 2, "lung": 2, "impression": 1, "plip": 2} if quick else \
        {"skin": 16, "lung": 16, "impression": 3, "plip": 10}
    new_tokens = 8 if quick else NEW_TOKENS
    skin_png = str(ROOT / "assets" / "skin" / "synthetic_lesion.png")
    lung_png = str(ROOT / "assets" / "lung" / "ct_small_lung_window.png")

    try:
        # -- warm every model through the API once -------------------------------------------
        client.predict(handle_file(skin_png), api_name="/skin_classify")
        client.predict(handle_file(lung_png), api_name="/lung_classify")
        client.predict(FINDINGS, "", 1, new_tokens + 1, api_name="/impression")
        client.predict(QUERY, 8, "plip", api_name="/pathology_search")

        skin = get_model("skin")
        skin_img = load_any(skin_png).image
        skin_pv = classify.preprocess(skin, skin_img)
        lung = get_model("lung_ct")
        lung_img = load_any(lung_png).image
        lung_pv = classify.preprocess(lung, lung_img)
        imp = get_model("impression")
        enc = impression.encode(imp, [FINDINGS]).inputs
        plip = get_model("plip")
        tok = plip.tokenizer([QUERY], return_tensors="pt", padding=True, truncation=True, max_length=77)
        tok = {k: v for k, v in tok.items() if k in ("input_ids", "attention_mask")}

        def fwd(model: Any, pv: Any) -> Any:
            with torch.inference_mode():
                return model(pixel_values=pv)

        def gen() -> Any:
            with torch.inference_mode():
                out = imp.model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                         num_beams=1, do_sample=False)
            assert out.shape[-1] == new_tokens + 1, out.shape
            return out

        def text_fwd() -> Any:
            with torch.inference_mode():
                return plip.model.get_text_features(**tok)

        from medlab.vision.lung_ct import classify_lung
        from medlab.vision.skin import classify_skin

        gallery_files = sorted(str(p) for p in (ROOT / "assets").rglob("*.png"))[:8]
        gallery_files = (gallery_files * 8)[:8]
        echo, echo_url = _echo_app(gallery_files)
        # timed calls come from a client in a process of its own (bench/api_client.py), like a
        # visitor's browser: not from this process, where it would share the server's GIL
        remote, floor = RemoteClient(url), RemoteClient(echo_url)
        cases: dict[str, dict[str, Any]] = {
            "skin": {
                "gradio_floor": lambda: floor.call("/echo_image", skin_png, files=(0,)),
                "raw_forward": lambda: fwd(skin.model, skin_pv),
                "gate_only": lambda: gate.check_skin(skin_img),
                "engine": lambda: classify_skin(skin_png),
                "engine_gate_off": lambda: classify_skin(skin_png, gate_enabled=False),
                "api": lambda: remote.call("/skin_classify", skin_png, files=(0,)),
            },
            "lung": {
                "gradio_floor": lambda: floor.call("/echo_image_image", lung_png, files=(0,)),
                "raw_forward": lambda: fwd(lung.model, lung_pv),
                "raw_forward_gradcam": lambda: gradcam.grad_cam(lung.model, lung_pv),
                "gate_only": lambda: gate.check_lung_ct(lung_img, "image", {}),
                "engine": lambda: classify_lung(lung_png),
                "engine_gate_off": lambda: classify_lung(lung_png, gate_enabled=False),
                "api": lambda: remote.call("/lung_classify", lung_png, files=(0,)),
            },
            "impression": {
                "gradio_floor": lambda: floor.call("/echo_text", FINDINGS),
                "raw_forward": gen,
                "engine": lambda: impression.generate_impression(
                    FINDINGS, settings=impression.ImpressionSettings(1, new_tokens + 1)),
                "api": lambda: remote.call("/impression", FINDINGS, "", 1, new_tokens + 1),
            },
            "plip": {
                "gradio_floor": lambda: floor.call("/echo_gallery", QUERY, 8),
                "raw_forward": text_fwd,
                "engine_encode": lambda: encoders.encode_texts("plip", [QUERY]),
                "engine": lambda: image_search.search_text(QUERY, k=8, key="plip"),
                "api": lambda: remote.call("/pathology_search", QUERY, 8, "plip"),
                "api_k1": lambda: remote.call("/pathology_search", QUERY, 1, "plip"),
            },
        }
        all_stats: dict[str, dict[str, Any]] = {}
        for name, fns in cases.items():
            for fn in fns.values():  # warm-up
                fn()
            runs: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(repeats[name]):
                for key, fn in fns.items():  # interleaved
                    runs[key].append(timed(fn)[0])
            all_stats[name] = {k: summary(v) for k, v in runs.items()}
            res.load[name] = loadavg()

        # -- warm tab switching: how many loads? (reported in section 7) -----------------------
        cache = get_cache()
        loads_before = cache.stats()["loads"]
        for _ in range(2 if quick else 3):
            client.predict(handle_file(skin_png), api_name="/skin_classify")
            client.predict(handle_file(lung_png), api_name="/lung_classify")
            client.predict(FINDINGS, "", 1, 8, api_name="/impression")
            client.predict(QUERY, 8, "plip", api_name="/pathology_search")
        status = client.predict(api_name="/model_status")
        loads_after = cache.stats()["loads"]
        res.details["warm_switching"] = {"loads_before": loads_before, "loads_after": loads_after,
                                         "switches": (2 if quick else 3) * 4,
                                         "status_loads": (status or {}).get("cache", {}).get("loads")
                                         if isinstance(status, dict) else None}
    finally:
        for c in (remote, floor):
            if c is not None:
                c.close()
        demo.close()
        try:
            echo.close()
        except Exception:  # noqa: BLE001 - not launched if an earlier step failed
            pass

    res.details["stats"] = all_stats
    res.details["repeats"] = repeats
    res.details["impression_new_tokens"] = new_tokens
    rows = []
    for name, stats in all_stats.items():
        base = stats["raw_forward"]["median_ms"] + stats["gradio_floor"]["median_ms"]
        for key, s in stats.items():
            rows.append([name, key, s["median_ms"], s["p95_ms"], round(s["median_ms"] / base, 2)])
    res.tables.append({"title": "Latency per tab (ms; ratio = median / (raw forward + no-op round trip) medians)",
                       "columns": ["tab", "variant", "median", "p95", "ratio"], "rows": rows})

    res.notes.append(
        "Each ratio divides the tab's API median by (its raw model work + the Gradio round trip of a no-op endpoint "
        "shaped like it: same input kind, same output components; image -> Label for skin, image -> Label + Image "
        "for lung, text -> Textbox for impression, text + k -> 8-image Gallery for pathology), all measured "
        "interleaved in the same run: the round trip is what any Gradio app pays, the rest is the tab's own "
        "overhead. Round trips here: " + ", ".join(
            f"{n} {all_stats[n]['gradio_floor']['median_ms']:.0f} ms" for n in ("skin", "lung", "impression", "plip"))
        + ". API calls and round trips are made by a gradio_client in a process of its own (bench/api_client.py), "
        "as a visitor's browser would be; on this box it still shares the 2 cores with the server.")
    s = all_stats["skin"]
    _ratio_rows(res, "skin (ViT-B/16)", s, "raw_forward", 1.2,
                f"the input gate (colour stats + EfficientNet-Lite0 object check, "
                f"{s['gate_only']['median_ms']:.0f} ms alone) runs beside the forward: engine with the gate "
                f"{s['engine']['median_ms']:.0f} ms vs without {s['engine_gate_off']['median_ms']:.0f} ms; API / engine = "
                f"{s['api']['median_ms'] / s['engine']['median_ms']:.2f}x")
    s = all_stats["lung"]
    _ratio_rows(res, "lung CT (EfficientNet-B1)", s, "raw_forward", 1.2,
                "endpoint always computes Grad-CAM (one forward + head-only backward) and the input gate")
    _ratio_rows(res, "lung CT (EfficientNet-B1)", s, "raw_forward_gradcam", 1.2,
                f"like for like: forward+Grad-CAM; the gate ({s['gate_only']['median_ms']:.0f} ms alone) runs beside "
                f"it: engine with the gate {s['engine']['median_ms']:.0f} ms vs without "
                f"{s['engine_gate_off']['median_ms']:.0f} ms; API / engine = "
                f"{s['api']['median_ms'] / s['engine']['median_ms']:.2f}x")
    s = all_stats["impression"]
    _ratio_rows(res, f"impression (T5-base, {new_tokens} new tokens, greedy)", s, "raw_forward", 1.2,
                f"endpoint streams every token (num_beams=1); API / engine = "
                f"{s['api']['median_ms'] / s['engine']['median_ms']:.2f}x")
    s = all_stats["plip"]
    _ratio_rows(res, "PLIP text (CLIP ViT-B/32) via /pathology_search k=8", s, "raw_forward", 1.2,
                f"endpoint = encode + chroma search + 8 thumbnails in a gallery; engine search "
                f"{s['engine']['median_ms']:.0f} ms, k=1 API {s['api_k1']['median_ms']:.0f} ms")
    res.seconds = time.perf_counter() - started
    return res
