"""The queue policy as Gradio enforces it, observed from outside: requests are sent to the
real app's model events (their handlers replaced by probes that count how many run at once),
more than a lane allows and more than the queue holds.

Which lane an event is in is read from Gradio's own BlockFunction (concurrency_id / limit),
so this checks what the server does, not what a module constant says."""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import free_port

# Text-only model events (their defaults fill every other input).
TEXT_EVENTS = {"pathology_search": "tumour", "assistant_ask": "What is melanoma?", "impression": "FINDINGS: clear."}


class Probe:
    """Counts concurrent calls; each call blocks until released (or a short sleep)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.calls = 0
        self.release = threading.Event()

    def enter(self) -> None:
        with self.lock:
            self.active += 1
            self.calls += 1
            self.peak = max(self.peak, self.active)

    def leave(self) -> None:
        with self.lock:
            self.active -= 1

    def wrap(self, original: Callable[..., Any], hold: float | None) -> Callable[..., Any]:
        import gradio as gr

        def wait() -> None:
            if hold is None:
                self.release.wait(60)
            else:
                time.sleep(hold)

        def probe(*args: Any, **kwargs: Any) -> Any:
            self.enter()
            try:
                wait()
            finally:
                self.leave()
            raise gr.Error("probe")

        if not inspect.isgeneratorfunction(original):
            return probe

        def probe_gen(*args: Any, **kwargs: Any) -> Iterator[Any]:  # same kind as the handler it replaces
            yield probe(*args, **kwargs)

        return probe_gen


@pytest.fixture
def probed_app(
    tiny_model_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[float | None], tuple[Any, Probe, dict[str, Any], Any]]]:
    for var, value in tiny_model_env.items():
        monkeypatch.setenv(var, value)
    import app

    demos: list[Any] = []

    def start(hold: float | None) -> tuple[Any, Probe, dict[str, Any], Any]:
        from gradio_client import Client

        demo = app.build_app()
        fns = {fn.api_name: fn for fn in demo.fns.values() if fn.api_visibility == "public" and fn.api_name}
        probe = Probe()
        for name in TEXT_EVENTS:
            fns[name].fn = probe.wrap(fns[name].fn, hold)
        port = free_port()
        demo.launch(prevent_thread_lock=True, quiet=True, **app.launch_kwargs("127.0.0.1", port, False))
        demos.append(demo)
        # generous read timeout: the 2-core CI box may be busy with the rest of the suite
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, httpx_kwargs={"timeout": 120}, max_workers=256)
        return client, probe, fns, demo

    yield start
    for demo in demos:
        demo.close()


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _drain(jobs: list[Any]) -> tuple[int, int]:
    """(probe answers, queue-full refusals) of finished jobs."""
    answered = refused = 0
    for job in jobs:
        try:
            job.result(timeout=120)
        except Exception as exc:  # noqa: BLE001 - classified below
            text = str(exc)
            if "probe" in text:
                answered += 1
            elif "full" in text.lower():
                refused += 1
            else:
                raise
    return answered, refused


def test_model_events_share_one_lane_and_it_is_never_exceeded(probed_app: Any) -> None:
    client, probe, fns, _ = probed_app(0.4)
    lanes = {(fns[n].concurrency_id, fns[n].concurrency_limit) for n in TEXT_EVENTS}
    assert len(lanes) == 1, f"model events in different lanes: {lanes}"
    (_, limit), = lanes
    assert isinstance(limit, int) and limit >= 1
    n = 3 * limit * len(TEXT_EVENTS)
    names = list(TEXT_EVENTS)
    jobs = [client.submit(TEXT_EVENTS[names[i % len(names)]], api_name=f"/{names[i % len(names)]}") for i in range(n)]
    answered, refused = _drain(jobs)
    assert (answered, refused) == (n, 0)
    assert probe.calls == n
    # Gradio ran exactly `limit` of them at once across the three events: never more (one
    # shared lane, not one per event), and the lane was used to its limit.
    assert probe.peak == limit, f"peak concurrency {probe.peak}, lane limit {limit}"


def test_a_full_queue_refuses_new_requests_and_keeps_serving(probed_app: Any) -> None:
    client, probe, fns, demo = probed_app(None)  # probes hold their slot until released
    limit = fns["pathology_search"].concurrency_limit
    max_size = demo._queue.max_size  # what the running server enforces
    assert isinstance(max_size, int) and max_size > 0, "the queue must be bounded"
    extra = 3
    held = [client.submit("tumour", api_name="/pathology_search") for _ in range(limit)]
    _wait_for(lambda: probe.active == limit, "the lane to fill")
    waiting = [client.submit("tumour", api_name="/pathology_search") for _ in range(max_size)]
    _wait_for(lambda: len(demo._queue) == max_size, "the queue to fill")
    late = [client.submit("tumour", api_name="/pathology_search") for _ in range(extra)]
    assert _drain(late) == (0, extra)  # refused at once, while the others still wait
    assert probe.active == limit  # and the lane never took more
    probe.release.set()
    assert _drain(held + waiting) == (limit + max_size, 0)
    # still answering after the burst
    assert isinstance(client.predict(api_name="/model_status"), dict)
