"""Streaming generation shared by the captioner and the impression task.

`model.generate` runs in a worker thread and feeds a `TextIteratorStreamer`; the consumer
yields the growing text. A stopping criterion watches an Event, so a closed consumer (the
user pressed Stop, the browser went away) ends the generation at the next token."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from medlab.core.errors import MedlabError, ModelUnavailableError

STREAM_TIMEOUT_S = 600.0  # no new text for this long: the worker is stuck


class EventStop:
    """Stopping criterion: stop every sequence once `event` is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_generate(
    model: Any,
    tokenizer: Any,
    inputs: dict[str, Any],
    generate_kwargs: dict[str, Any],
    *,
    lock: threading.Lock | None = None,
    cancel: threading.Event | None = None,
    context: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    timeout: float = STREAM_TIMEOUT_S,
) -> Iterator[str]:
    """Run model.generate in a worker thread and yield the accumulated text as it grows.

    Closing the generator (or setting `cancel`) stops generation at the next token. `lock`
    serialises use of one model object; `context` wraps the call (e.g. disable_adapter)."""
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    cancel = cancel if cancel is not None else threading.Event()
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout)
    errors: list[BaseException] = []

    def work() -> None:
        import torch

        try:
            with lock if lock is not None else contextlib.nullcontext():
                if cancel.is_set():  # the consumer left while we waited for the lock
                    streamer.end()
                    return
                with torch.inference_mode(), (context() if context else contextlib.nullcontext()):
                    model.generate(
                        **inputs, **generate_kwargs, streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([EventStop(cancel)]),
                    )
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer's thread
            errors.append(exc)
            streamer.end()  # unblock the consumer

    worker = threading.Thread(target=work, name="medlab-generate", daemon=True)
    worker.start()
    text = ""
    yielded = False
    try:
        try:
            for piece in streamer:
                if piece:
                    text += piece
                    yielded = True
                    yield text
        except queue.Empty:
            raise ModelUnavailableError(
                getattr(model, "name_or_path", "model"),
                f"generation produced no text for {timeout:.0f} s.", "try again, or restart the app.",
            ) from None
        worker.join()
        if errors:
            exc = errors[0]
            if isinstance(exc, MedlabError):
                raise exc
            raise ModelUnavailableError(
                "generation", f"the model failed while generating ({type(exc).__name__}: {exc}).",
                "check the model files; report the error if it persists.",
            ) from exc
        if not yielded:
            yield text
    finally:
        cancel.set()  # no-op after normal completion; stops the worker if we were closed early
        worker.join(timeout=5.0)
