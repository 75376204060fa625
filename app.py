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

import gradio as gr  # noqa: E402

from medlab import DISCLAIMER  # noqa: E402
from medlab.config import load_settings  # noqa: E402

log = logging.getLogger("medlab.app")

# Order of the tabs in the UI. Each module exposes TITLE, TAB_ID and build().
TAB_MODULES: tuple[str, ...] = (
    "tabs.skin",  # also hosts the melanoma assistant (tabs.assistant)
    "tabs.lung_ct",
    "tabs.radiograph",
    "tabs.impression",
    "tabs.pathology",
    "tabs.about",
)

# Queue limits (see README "Limits and safety"): a bounded waiting line, and by default one
# model call at a time per event so a classroom burst queues instead of exhausting memory.
QUEUE_MAX_SIZE = 64
DEFAULT_CONCURRENCY = 2

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
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=DEFAULT_CONCURRENCY)
    return demo


def launch_kwargs(host: str, port: int, share: bool) -> dict:
    from starlette.middleware import Middleware

    from medlab.webguard import BodySizeLimit

    settings = load_settings()
    return {
        "server_name": host,
        "server_port": port,
        "share": share,
        "auth": settings.auth,
        "max_file_size": settings.max_upload_bytes,
        # Refuse oversized bodies from their declared size, before reading them.
        "app_kwargs": {"middleware": [Middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)]},
        "allowed_paths": [],  # serve nothing beyond Gradio's own upload/cache folders
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

    from medlab.zerogpu import preload_for_zero_gpu

    preload_for_zero_gpu(["skin", "lung_ct", "impression", "plip", "clip_baseline", "embedder"])
    demo = build_app()
    demo.launch(**launch_kwargs(args.host, args.port, args.share))
    return 0


if __name__ == "__main__":
    sys.exit(main())
