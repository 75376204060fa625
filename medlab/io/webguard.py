"""ASGI middleware that refuses oversized request bodies before reading them.

Gradio's own max_file_size check discards bytes past the limit but still receives the whole
body: a 1 GB upload is read in full. This guard answers 413 from the Content-Length header
alone, and cuts off chunked bodies as soon as they pass the limit. Pure ASGI: no gradio."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MULTIPART_OVERHEAD = 1024 * 1024  # form boundaries and headers around the file bytes


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes) + MULTIPART_OVERHEAD
        # A streamed body is cut at the bare limit, before Gradio's own check would answer
        # 413 while the server goes on draining the rest of the stream.
        self.max_streamed = int(max_bytes)

    async def _refuse(self, send: Send, declared: int | None) -> None:
        limit_mb = (self.max_bytes - MULTIPART_OVERHEAD) / 2**20
        body = f"Request body too large: the upload limit is {limit_mb:g} MB (MEDLAB_MAX_UPLOAD_MB).".encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
        log.warning("refused a request body of %s bytes", declared if declared is not None else "> limit")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, declared)
            return

        # A declared length within bounds is trusted up to the multipart allowance (Gradio then
        # applies its exact file-size check); a streamed body gets the bare limit.
        limit = self.max_bytes if declared is not None else self.max_streamed
        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the refusal below answers instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self._refuse(send, None)
