"""Remote captioner backend: an OpenAI-compatible chat server (TGI, vLLM <= 0.10.2, ...).

MEDLAB_CAPTIONER_ENDPOINT is the server's base URL (e.g. http://127.0.0.1:8080/v1);
requests go to <base>/chat/completions with stream=true and the image as a data URL
content part, and the server-sent-event deltas are yielded as they arrive.
MEDLAB_CAPTIONER_ENDPOINT_MODEL names the served model (TGI accepts any name; vLLM needs
its --served-model-name). MEDLAB_CAPTIONER_API_KEY, if set, is sent as a Bearer token."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from medlab.core.config import load_settings
from medlab.core.errors import ModelUnavailableError

log = logging.getLogger(__name__)

KEY = "captioner"
DEFAULT_SERVED_MODEL = "radiology-captioner"
MAX_IMAGE_SIDE = 1120  # Mllama tiles are 560 px; 2x2 tiles is all the model sees anyway
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 120.0


def chat_url(endpoint: str) -> str:
    base = endpoint.rstrip("/")
    return base if base.endswith("/chat/completions") else base + "/chat/completions"


def image_data_url(image: Any) -> str:
    """PNG data URL of a PIL image, downscaled so its longest side is <= MAX_IMAGE_SIDE."""
    img = image.convert("RGB")
    if max(img.size) > MAX_IMAGE_SIDE:
        img = img.copy()
        img.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def chat_request(image: Any, instruction: str, settings: Any, model: str | None = None) -> dict[str, Any]:
    """The request body: one user turn [image, text] as in document 003, streamed."""
    body: dict[str, Any] = {
        "model": model or DEFAULT_SERVED_MODEL,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_data_url(image)}},
                    {"type": "text", "text": instruction},
                ],
            }
        ],
        "max_tokens": int(settings.max_new_tokens),
        "temperature": float(settings.temperature),
        "stream": True,
    }
    if settings.temperature > 0 and settings.min_p > 0:
        body["min_p"] = float(settings.min_p)  # vLLM extension; servers without it ignore it
    return body


def _unavailable(reason: str, endpoint: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        KEY, reason,
        f"check that the server at {endpoint} is running (README 'Radiograph captioning: remote server'), "
        "or unset MEDLAB_CAPTIONER_ENDPOINT to use local weights.",
    )


def _delta_text(event: dict[str, Any]) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    delta = choices[0].get("delta") or {}
    content = delta.get("content")
    return content if isinstance(content, str) else ""


def stream_chat(
    image: Any, instruction: str, settings: Any, cancel: threading.Event | None = None
) -> Iterator[str]:
    """Send the request and yield the accumulated reply as server-sent events arrive."""
    import httpx

    config = load_settings()
    endpoint = config.captioner_endpoint
    if not endpoint:
        raise _unavailable("MEDLAB_CAPTIONER_ENDPOINT is not set.", "<unset>")
    url = chat_url(endpoint)
    body = chat_request(image, instruction, settings, config.captioner_endpoint_model)
    headers = {"Accept": "text/event-stream"}
    api_key = os.environ.get("MEDLAB_CAPTIONER_API_KEY", "").strip()
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    text = ""
    yielded = False
    try:
        with httpx.Client(timeout=timeout) as client, client.stream("POST", url, json=body, headers=headers) as resp:
            if resp.status_code != 200:
                detail = resp.read().decode("utf-8", "replace").strip()[:300]
                raise _unavailable(f"the server at {url} answered HTTP {resp.status_code}: {detail}", endpoint)
            for line in resp.iter_lines():
                if cancel is not None and cancel.is_set():
                    break
                line = line.strip()
                if not line.startswith("data:"):
                    continue  # comments, event names, keep-alives
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    break
                try:
                    event = json.loads(data)
                except ValueError:
                    log.warning("ignoring a malformed event from %s: %.100s", url, data)
                    continue
                if "error" in event:
                    err = event["error"]
                    message = err.get("message", err) if isinstance(err, dict) else err
                    raise _unavailable(f"the server reported an error: {message}", endpoint)
                piece = _delta_text(event)
                if piece:
                    text += piece
                    yielded = True
                    yield text
    except httpx.TimeoutException as exc:
        raise _unavailable(f"the server at {url} timed out ({type(exc).__name__}).", endpoint) from None
    except httpx.HTTPError as exc:
        raise _unavailable(f"the server at {url} cannot be reached ({type(exc).__name__}: {exc}).", endpoint) from None
    if not yielded:
        yield text
