"""Medical AI Lab: compose the tabs into one gr.Blocks app and launch it.

    python app.py [--host 127.0.0.1] [--port 7860] [--share] [--mcp]
    python app.py --missing-translations   # UI strings of the built app that locales/en.json lacks

Importing this module imports gradio and the light parts of medlab only: no torch, no
transformers. Models load on first use through the shared cache."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# On ZeroGPU, `spaces` must be imported before torch (it patches CUDA initialisation when
# imported). medlab.core.zerogpu is light: it reads SPACES_ZERO_GPU strictly (garbage stops
# the app with the variable's name) and imports no torch.
from medlab.core.zerogpu import import_spaces_first  # noqa: E402

import_spaces_first()
# unsloth patches transformers' classes when imported, so where it will be used (CUDA +
# unsloth installed) it comes next, before anything imports transformers; elsewhere a no-op.
from medlab.generation.captioner_backends import import_unsloth_first  # noqa: E402

import_unsloth_first()

# Before gradio is imported: no analytics calls home (the only network use is the Hub).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Before torch is imported: idle OpenMP threads sleep instead of spinning, so two concurrent
# model calls on a small CPU box don't steal each other's cores (figures: bench/README.md,
# "Figures behind design choices").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gradio as gr  # noqa: E402

from medlab import DISCLAIMER  # noqa: E402
from medlab.core.config import load_settings  # noqa: E402
from tabs import a11y  # noqa: E402
from tabs.common import finalize_page_load  # noqa: E402
from tabs.deep_links import finalize as finalize_deep_links  # noqa: E402
from tabs.deep_links import track_selected_tab  # noqa: E402
from tabs.i18n import gradio_i18n, localize  # noqa: E402

log = logging.getLogger("medlab.app")

# Order of the tabs in the UI. Each module exposes TITLE, TAB_ID and build().
TAB_MODULES: tuple[str, ...] = (
    "tabs.skin",  # also hosts the melanoma assistant (tabs.assistant)
    "tabs.lung_ct",
    "tabs.teach",  # teach a classifier in the browser; "Use in the Lung CT tab"
    "tabs.radiograph",
    "tabs.impression",
    "tabs.pathology",
    "tabs.quiz",  # class quiz: guess first, then the model's answer and the class's guesses
    "tabs.about",
)

# Queue limits (see README "Limits and safety"): a bounded waiting line (the 65th waiting
# request is told the queue is full instead of waiting for ever), and a small default. The
# lanes of model events are declared where each event is registered (tabs.common.model_event).
ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
QUEUE_MAX_SIZE = 64
DEFAULT_CONCURRENCY = 2

CSS = """
.medlab-disclaimer blockquote { border-left: 4px solid #d97706; background: #fffbeb; }
"""


def build_app() -> gr.Blocks:
    """Build the whole UI. Loads no model."""
    load_settings()  # fail at start-up, with the variable's name, on an invalid setting
    with gr.Blocks(title="Medical AI Lab", analytics_enabled=False) as demo:
        with gr.Row(equal_height=False, elem_id="medlab-header"):
            gr.Markdown(f"# 🩺 Medical AI Lab\n*{DISCLAIMER}*")
            # Gradio's own share button: a link to this page with the session's current values
            # (inputs, settings, results and the selected tab); see tabs/deep_links.py
            gr.DeepLinkButton("Copy a link to this view", copied_value="Link copied", size="sm", scale=0, min_width=200)
        notice = gr.Markdown("", elem_id="deep-link-notice")  # what a ?tab=&example=&quiz= link did or did not understand
        titles: dict[str, str] = {}
        # "wrap": on a phone every tab shows (in rows) instead of two tabs and a "More tabs" menu.
        with gr.Tabs(elem_id="medlab-tabs", overflow_behavior="wrap") as tabs:
            for name in TAB_MODULES:
                module = importlib.import_module(name)
                with gr.Tab(module.TITLE, id=module.TAB_ID) as tab:
                    module.build()
                titles[module.TAB_ID] = module.TITLE
                track_selected_tab(tabs, tab, module.TAB_ID)
        localize(demo)  # every UI string -> a gr.I18n key (locales/*.json); the API stays English
        finalize_page_load(demo)  # one private page-load event fills every status panel
        finalize_deep_links(demo, tabs, notice, titles)  # ?tab= &example= &quiz= (one more private load event)
    atomic_image_cache_writes()
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=DEFAULT_CONCURRENCY)
    return demo


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


SHUTDOWN_GRACE_S = 20.0  # SIGTERM: how long in-flight requests get to finish (MEDLAB_SHUTDOWN_GRACE_S)


def install_graceful_shutdown(demo: gr.Blocks) -> None:
    """SIGTERM (the Spaces runtime, Docker and Kubernetes send it on restart) stops the app
    gracefully: new requests are refused (the queue reports itself full), requests running or
    waiting get up to MEDLAB_SHUTDOWN_GRACE_S seconds to finish, the background index builder
    stops after its batch, then the server closes and the process exits with 0. Writes are
    atomic or keyed by content, so whatever the grace period cuts off leaves nothing half-written."""
    import signal
    import time

    grace = float(os.environ.get("MEDLAB_SHUTDOWN_GRACE_S", SHUTDOWN_GRACE_S))

    def busy() -> int:
        queue = demo._queue  # noqa: SLF001 - gradio exposes no public drain API
        return len(queue) + sum(1 for job in queue.active_jobs if job is not None)

    def on_sigterm(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM does not cut the drain short
        demo._queue.max_size = 0  # noqa: SLF001 - refuse new requests ("queue is full")
        log.info("SIGTERM: finishing %d request(s) (up to %.0f s), then exiting", busy(), grace)
        deadline = time.monotonic() + grace
        while busy() and time.monotonic() < deadline:
            time.sleep(0.1)
        if busy():
            log.warning("SIGTERM: %d request(s) still running after %.0f s; exiting anyway", busy(), grace)
        from medlab.retrieval.default_index import cancel

        cancel(wait_s=max(1.0, deadline - time.monotonic()))
        demo.close()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_sigterm)


def launch_kwargs(host: str, port: int, share: bool, mcp: bool = False) -> dict:
    from starlette.middleware import Middleware

    from medlab.io.webguard import BodySizeLimit
    from tabs.quiz import served_folders as quiz_served_folders

    settings = load_settings()
    return {
        "server_name": host,
        "server_port": port,
        "share": share,
        # MCP tools (README "MCP"): --mcp or MEDLAB_MCP=1. None, not False, when off, so
        # gradio's own GRADIO_MCP_SERVER still works as gradio documents it.
        "mcp_server": True if (mcp or settings.mcp) else None,
        "auth": settings.auth,
        "max_file_size": settings.max_upload_bytes,
        # Refuse oversized bodies from their declared size, before reading them.
        "app_kwargs": {"middleware": [Middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)]},
        # Beyond Gradio's own upload/cache folders, only the pathology thumbnails (content-
        # addressed JPEGs the gallery shows anyway) may be served from the data dir.
        # The shipped examples (assets/) may be loaded into a tab by a ?tab=&example= link.
        # The class quiz serves its case images and stored Grad-CAM overlays (derived from assets/).
        "allowed_paths": [str(settings.data_dir / "pathology" / "thumbs"), str(ASSETS_DIR),
                          *(str(p) for p in quiz_served_folders(settings.data_dir))],
        # README "Accessibility": contrast, phone layout and ARIA fixes live in tabs/a11y.py.
        "css": CSS + a11y.CSS,
        "head": a11y.HEAD,
        "footer_links": ["api", "gradio"],
        "ssr_mode": False,
        "i18n": gradio_i18n(),  # the page follows the browser's language (README "Languages")
    }


def print_missing_translations() -> int:
    """Build the app (no model loads) and list the UI strings en.json lacks; 1 when any."""
    import json

    from tabs.i18n import missing

    todo = missing(build_app())
    sys.stdout.write(json.dumps(todo, ensure_ascii=False, indent=2) + "\n")
    return 1 if todo else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Medical AI Lab (educational use only)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    parser.add_argument("--mcp", action="store_true",
                        help="also serve the public API as MCP tools at /gradio_api/mcp/ (same as MEDLAB_MCP=1)")
    parser.add_argument("--missing-translations", action="store_true",
                        help="print the UI strings of the built app that locales/en.json lacks (JSON) and exit")
    args = parser.parse_args(argv)
    if args.missing_translations:
        return print_missing_translations()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from medlab.core.zerogpu import preload_for_zero_gpu

    preload_for_zero_gpu()  # on ZeroGPU: weights placed on cuda now, the captioner too when it fits
    demo = build_app()
    from medlab.retrieval.default_index import start_background

    start_background()  # the default pathology tile set indexes itself (bulk, one daemon thread)
    install_graceful_shutdown(demo)
    demo.launch(**launch_kwargs(args.host, args.port, args.share, mcp=args.mcp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
