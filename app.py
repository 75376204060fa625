"""Medical AI Lab: compose the tabs into one gr.Blocks app and launch it.

    python app.py [--host 127.0.0.1] [--port 7860] [--share]

Importing this module imports gradio and the light parts of medlab only: no torch, no
transformers. Models load on first use through the shared cache."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Before gradio is imported: no analytics calls home (the only network use is the Hub).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Before torch is imported: idle OpenMP threads sleep instead of spinning, so two concurrent
# model calls on a small CPU box don't steal each other's cores (a 512x512 matmul measured
# 53.6 ms spinning vs 3.6 ms passive under contention: bench/README.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gradio as gr  # noqa: E402

from medlab import DISCLAIMER  # noqa: E402
from medlab.core.config import load_settings  # noqa: E402
from tabs.common import finalize_page_load  # noqa: E402

log = logging.getLogger("medlab.app")

# Order of the tabs in the UI. Each module exposes TITLE, TAB_ID and build().
TAB_MODULES: tuple[str, ...] = (
    "tabs.skin",  # also hosts the melanoma assistant (tabs.assistant)
    "tabs.lung_ct",
    "tabs.teach",  # teach a classifier in the browser; "Use in the Lung CT tab"
    "tabs.radiograph",
    "tabs.impression",
    "tabs.pathology",
    "tabs.about",
)

# Queue limits (see README "Limits and safety"): a bounded waiting line (the 65th waiting
# request is told the queue is full instead of waiting for ever), and a small default.
QUEUE_MAX_SIZE = 64
DEFAULT_CONCURRENCY = 2
# Every event that runs a model forward shares ONE lane: a classroom burst on several tabs
# queues for the one accelerator instead of stacking 10+ forwards in memory at once. Engines
# that hold model-wide state (captioner adapter toggle, Grad-CAM hooks) also lock per model.
GPU_CONCURRENCY_ID = "gpu"
GPU_CONCURRENCY = 2
# Long bulk jobs (index a zip, add a PDF, evaluate a batch file) get their own single lane so
# one educator's upload never takes both interactive slots.
BULK_CONCURRENCY_ID = "bulk"
BULK_CONCURRENCY = 1
# Handler function names (tabs/*.py) per lane. A test checks that every public event is
# either here or known to be model-free, so a new model event cannot slip past the policy.
GPU_EVENTS = frozenset({
    "skin_classify", "lung_classify", "radiograph_caption", "compare_adapter", "impression",
    "pathology_search", "pathology_similar", "more_like_this", "pathology_zero_shot", "assistant_ask",
})
BULK_EVENTS = frozenset({"impression_batch", "pathology_index", "index_examples", "assistant_add_document"})

CSS = """
.medlab-disclaimer blockquote { border-left: 4px solid #d97706; background: #fffbeb; }
"""


def build_app() -> gr.Blocks:
    """Build the whole UI. Loads no model."""
    load_settings()  # fail at start-up, with the variable's name, on an invalid setting
    with gr.Blocks(title="Medical AI Lab", analytics_enabled=False) as demo:
        gr.Markdown(f"# 🩺 Medical AI Lab\n*{DISCLAIMER}*")
        with gr.Tabs():
            for name in TAB_MODULES:
                module = importlib.import_module(name)
                with gr.Tab(module.TITLE, id=module.TAB_ID):
                    module.build()
        finalize_page_load(demo)  # one private page-load event fills every status panel
    apply_queue_policy(demo)
    atomic_image_cache_writes()
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=DEFAULT_CONCURRENCY)
    return demo


def apply_queue_policy(demo: gr.Blocks) -> None:
    """Put every model event in the shared GPU lane and every bulk job in the bulk lane
    (overrides what a tab set: the queue policy lives here, in one place)."""
    for fn in demo.fns.values():
        name = getattr(fn, "name", None)
        if name in GPU_EVENTS:
            fn.concurrency_id, fn.concurrency_limit = GPU_CONCURRENCY_ID, GPU_CONCURRENCY
        elif name in BULK_EVENTS:
            fn.concurrency_id, fn.concurrency_limit = BULK_CONCURRENCY_ID, BULK_CONCURRENCY


def atomic_image_cache_writes() -> None:
    """Make Gradio's PIL-image cache writes atomic (idempotent).

    Gradio 6.31 saves a returned PIL image (Grad-CAM overlay, gallery thumbnails) to a
    content-addressed path with a plain write_bytes. Identical results from concurrent
    requests rewrite the same file while another client downloads it, and that download ends
    short ("Response content shorter than Content-Length": found by tests/test_soak.py).
    Write under a temporary name and rename into place, as Gradio's save_file_to_cache does."""
    import tempfile
    from pathlib import Path

    from gradio import processing_utils as pu

    if getattr(pu.save_pil_to_cache, "medlab_atomic", False):
        return

    def save_pil_to_cache(img: object, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = pu.encode_pil_to_bytes(img, format)
        folder = Path(cache_dir) / pu.hash_bytes(data)
        folder.mkdir(exist_ok=True, parents=True)
        target = (folder / f"{name}.{format}").resolve()
        if target.exists():  # same content hash, written whole by an earlier rename
            try:
                os.utime(target)  # Gradio's delete_cache ages files by ctime
            except OSError:
                pass
            return str(target)
        fd, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(staging, target)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
        return str(target)

    save_pil_to_cache.medlab_atomic = True  # type: ignore[attr-defined]
    pu.save_pil_to_cache = save_pil_to_cache


def launch_kwargs(host: str, port: int, share: bool) -> dict:
    from starlette.middleware import Middleware

    from medlab.io.webguard import BodySizeLimit

    settings = load_settings()
    return {
        "server_name": host,
        "server_port": port,
        "share": share,
        "auth": settings.auth,
        "max_file_size": settings.max_upload_bytes,
        # Refuse oversized bodies from their declared size, before reading them.
        "app_kwargs": {"middleware": [Middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)]},
        # Beyond Gradio's own upload/cache folders, only the pathology thumbnails (content-
        # addressed JPEGs the gallery shows anyway) may be served from the data dir.
        "allowed_paths": [str(settings.data_dir / "pathology" / "thumbs")],
        "css": CSS,
        "footer_links": ["api", "gradio"],
        "ssr_mode": False,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Medical AI Lab (educational use only)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from medlab.core.zerogpu import preload_for_zero_gpu

    preload_for_zero_gpu(["skin", "lung_ct", "impression", "plip", "clip_baseline", "embedder"])
    demo = build_app()
    demo.launch(**launch_kwargs(args.host, args.port, args.share))
    return 0


if __name__ == "__main__":
    sys.exit(main())
