"""Radiograph captioning engine on a tiny Mllama + tiny LoRA adapter built offline, and the
remote backend against a stub OpenAI-compatible server started on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from medlab.core.errors import InputError, InsufficientMemoryError, ModelUnavailableError, UnsupportedFileError
from medlab.generation.caption_settings import DEFAULT_INSTRUCTION, CaptionSettings, InstructionError
from medlab.generation.captioner import caption, caption_stream, next_token_logits

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "radiograph"
PHANTOM = ASSETS / "synthetic_chest_phantom.png"
GREEDY = CaptionSettings(max_new_tokens=12, temperature=0.0)
# transformers 5.17 warns inside its own Mllama vision encoder; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*hidden_state.*:FutureWarning")


def _image(tmp_path: Path, size: tuple[int, int] = (72, 48)) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path / "xray.png"
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")).save(path)
    return path


# -- adapter toggle, on the logits ---------------------------------------------------------
def test_adapter_toggle_changes_logits_and_off_equals_base_weights(use_tiny_models: dict[str, str]) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    on = next_token_logits(PHANTOM, DEFAULT_INSTRUCTION, use_adapter=True)
    off = next_token_logits(PHANTOM, DEFAULT_INSTRUCTION, use_adapter=False)
    on_again = next_token_logits(PHANTOM, DEFAULT_INSTRUCTION, use_adapter=True)
    assert on.shape == off.shape and on.ndim == 1
    assert (on - off).abs().max().item() > 1e-2  # the adapter's weights take part
    assert torch.equal(on, on_again)  # the toggle restores the adapter afterwards

    # Adapter off must be exactly the base checkpoint, loaded independently without peft.
    base_dir = use_tiny_models["MEDLAB_MODEL_CAPTIONER"]
    processor = AutoProcessor.from_pretrained(base_dir)
    base = AutoModelForImageTextToText.from_pretrained(base_dir).eval()
    from medlab.core.loaders import LoadedModel
    from medlab.generation.captioner import load_radiograph, prepare_inputs

    loaded = LoadedModel("captioner", base, "cpu", processor=processor)
    inputs = prepare_inputs(loaded, load_radiograph(PHANTOM), DEFAULT_INSTRUCTION)
    with torch.inference_mode():
        reference = base(**inputs).logits[0, -1].float()
    assert torch.allclose(off, reference, atol=1e-5)
    assert not torch.allclose(on, reference, atol=1e-3)


def test_adapter_with_transformers_4_key_layout_loads_the_same(
    use_tiny_models: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The public adapter was saved with transformers 4.47 (keys 'language_model.model.layers');
    transformers 5 renamed the modules. peft must map the old keys onto the new modules."""
    import torch
    from safetensors.torch import load_file, save_file

    from medlab.core.loaders import reset_cache

    src = Path(use_tiny_models["MEDLAB_MODEL_CAPTIONER_ADAPTER"])
    legacy = tmp_path / "legacy-adapter"
    shutil.copytree(src, legacy)
    state = load_file(src / "adapter_model.safetensors")
    renamed = {k.replace("base_model.model.model.language_model.", "base_model.model.language_model.model."): v
               for k, v in state.items()}
    assert renamed.keys() != state.keys()
    save_file(renamed, legacy / "adapter_model.safetensors")

    current = next_token_logits(PHANTOM, use_adapter=True)
    reset_cache()
    monkeypatch.setenv("MEDLAB_MODEL_CAPTIONER_ADAPTER", str(legacy))
    assert torch.allclose(next_token_logits(PHANTOM, use_adapter=True), current, atol=1e-6)


def test_without_adapter_runs_base_model_and_toggle_is_refused(
    use_tiny_models: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    with_adapter_off = next_token_logits(PHANTOM, use_adapter=False)
    from medlab.core.loaders import reset_cache

    reset_cache()
    monkeypatch.setenv("MEDLAB_MODEL_CAPTIONER_ADAPTER", "none")
    assert torch.allclose(next_token_logits(PHANTOM, use_adapter=True), with_adapter_off, atol=1e-5)
    with pytest.raises(InputError, match="No LoRA adapter"):
        next_token_logits(PHANTOM, use_adapter=False)


def test_adapter_dir_without_config_is_refused_with_the_variable(
    use_tiny_models: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "not-an-adapter"
    bad.mkdir()
    (bad / "weights.safetensors").write_bytes(b"")
    monkeypatch.setenv("MEDLAB_MODEL_CAPTIONER_ADAPTER", str(bad))
    with pytest.raises(ModelUnavailableError) as info:
        caption(PHANTOM, settings=GREEDY)
    assert "adapter_config.json" in info.value.reason
    assert "MEDLAB_MODEL_CAPTIONER_ADAPTER" in info.value.fix


# -- streaming ------------------------------------------------------------------------------
def test_stream_grows_and_ends_with_what_generate_returns(use_tiny_models: dict[str, str]) -> None:
    import torch

    from medlab.core.loaders import get_model
    from medlab.generation.captioner import load_radiograph, prepare_inputs

    updates = list(caption_stream(PHANTOM, settings=GREEDY))
    assert len(updates) > 1
    for before, after in zip(updates, updates[1:]):
        assert after.startswith(before) and len(after) > len(before)
    assert list(caption_stream(PHANTOM, settings=GREEDY)) == updates  # greedy is deterministic

    loaded = get_model("captioner")
    inputs = prepare_inputs(loaded, load_radiograph(PHANTOM), DEFAULT_INSTRUCTION)
    with torch.inference_mode():
        out = loaded.model.generate(**inputs, max_new_tokens=12, do_sample=False)
    expected = loaded.processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert updates[-1].strip() == expected.strip()

    base = list(caption_stream(PHANTOM, settings=CaptionSettings(12, 0.0, use_adapter=False)))
    assert base[-1] != updates[-1]  # the tiny adapter changes the greedy text too


def test_closing_the_stream_stops_generation_and_frees_the_model(use_tiny_models: dict[str, str]) -> None:
    from medlab.core.loaders import get_model

    long = CaptionSettings(max_new_tokens=1024, temperature=0.0)
    stream = caption_stream(PHANTOM, settings=long)
    first = next(stream)
    assert first
    started = time.perf_counter()
    stream.close()  # what Gradio does when the user presses Stop / leaves
    closed_after = time.perf_counter() - started
    lock = get_model("captioner").extras["lock"]
    assert lock.acquire(timeout=5.0), "the worker still holds the model after the stream was closed"
    lock.release()
    assert not any(t.name == "medlab-generate" and t.is_alive() for t in threading.enumerate())
    # The worker is gone within seconds although 1024 tokens take far longer (~25 ms each here).
    assert closed_after < 5.0


def test_sampling_settings_are_validated() -> None:
    for bad in (CaptionSettings(temperature=3.0), CaptionSettings(min_p=1.0), CaptionSettings(max_new_tokens=0),
                CaptionSettings(max_new_tokens=5000), CaptionSettings(temperature="hot")):  # type: ignore[arg-type]
        with pytest.raises(InputError):
            bad.validated()
    greedy = CaptionSettings(temperature=0).validated().generate_kwargs()
    assert greedy["do_sample"] is False and "min_p" not in greedy
    hot = CaptionSettings(temperature=1.5, min_p=0.1).validated().generate_kwargs()
    assert hot == {"max_new_tokens": 128, "do_sample": True, "temperature": 1.5, "min_p": 0.1}


def test_bad_inputs_fail_before_any_model_load(use_tiny_models: dict[str, str], tmp_path: Path) -> None:
    from medlab.core.loaders import get_cache

    not_image = tmp_path / "notes.png"
    not_image.write_text("this is text, not a PNG")
    with pytest.raises(UnsupportedFileError):
        caption(not_image)
    with pytest.raises(InputError, match="upload a radiograph image"):
        caption(None)
    with pytest.raises(InstructionError):
        caption(PHANTOM, "x" * 5000)
    assert get_cache().stats()["loads"] == 0


# -- the defaults on a machine without the weights ------------------------------------------
def test_gpu_default_without_cuda_is_refused_in_under_a_second_with_the_memory_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The registry chose the GPU profile (the driver lists a GPU) but torch sees no CUDA
    device: the 11B model is refused at once, naming the GPU and the alternatives."""
    import medlab.core.registry as registry
    from medlab.core.loaders import get_cache

    for var in ("MEDLAB_MODEL_CAPTIONER", "MEDLAB_CAPTIONER_ENDPOINT", "MEDLAB_ALLOW_CPU_LARGE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(registry, "cuda_expected", lambda settings=None: True)
    started = time.perf_counter()
    with pytest.raises(InsufficientMemoryError) as info:
        next(caption_stream(PHANTOM))
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"refusal took {elapsed:.2f}s"
    assert "GB" in info.value.reason and "GPU" in info.value.reason
    assert "MEDLAB_MODEL_CAPTIONER" in info.value.fix and "MEDLAB_CAPTIONER_ENDPOINT" in info.value.fix
    assert get_cache().stats()["loads"] == 0


def test_cpu_default_offline_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MEDLAB_MODEL_CAPTIONER", "MEDLAB_MODEL_CAPTIONER_ADAPTER", "MEDLAB_CAPTIONER_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ModelUnavailableError) as info:
        next(caption_stream(PHANTOM))
    # translated from the Hub's own "not in the local cache, offline" error, raised before any
    # weights were read (not from a failure while building the model)
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    causes = []
    exc: BaseException | None = info.value
    while exc is not None:
        causes.append(exc)
        exc = exc.__cause__
    assert any(isinstance(c, (LocalEntryNotFoundError, OfflineModeIsEnabled)) for c in causes), causes
    assert "HuggingFaceTB/SmolVLM-500M-Instruct" in info.value.reason
    assert "python -m medlab download captioner" in info.value.fix


# -- remote backend against a stub server ---------------------------------------------------
class _Stub:
    """A tiny OpenAI-compatible /v1/chat/completions server that streams three deltas."""

    PIECES = ["The chest", " radiograph", " shows clear lungs."]

    def __init__(self, status: int = 200) -> None:
        self.requests: list[dict[str, Any]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                stub.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                if status != 200:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "model overloaded"}}')
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.write(b": keep-alive\n\n")
                for piece in stub.PIECES:
                    chunk = {"object": "chat.completion.chunk",
                             "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(0.01)
                self.wfile.write(b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n')
                self.wfile.write(b"data: [DONE]\n\n")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_server() -> Iterator[_Stub]:
    stub = _Stub()
    yield stub
    stub.close()


def test_remote_backend_sends_openai_chat_request_and_streams(
    stub_server: _Stub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from medlab.core.loaders import get_cache

    monkeypatch.delenv("MEDLAB_MODEL_CAPTIONER", raising=False)  # the 11B default: must not matter
    monkeypatch.setenv("MEDLAB_CAPTIONER_ENDPOINT", stub_server.url)
    monkeypatch.setenv("MEDLAB_CAPTIONER_ENDPOINT_MODEL", "radiology-captioner")
    monkeypatch.setenv("MEDLAB_CAPTIONER_API_KEY", "test-key")
    image = _image(tmp_path)
    settings = CaptionSettings(max_new_tokens=64, temperature=0.4, min_p=0.1)
    updates = list(caption_stream(image, "Describe this film.", settings))

    assert updates == ["The chest", "The chest radiograph", "The chest radiograph shows clear lungs."]
    assert get_cache().stats()["loads"] == 0  # nothing loaded locally
    (request,) = stub_server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer test-key"
    assert request["headers"]["Content-Type"] == "application/json"
    body = request["body"]
    assert body["model"] == "radiology-captioner"
    assert body["stream"] is True
    assert body["max_tokens"] == 64 and body["temperature"] == pytest.approx(0.4) and body["min_p"] == pytest.approx(0.1)
    (message,) = body["messages"]
    assert message["role"] == "user"
    image_part, text_part = message["content"]  # document 003's order: image, then instruction
    assert text_part == {"type": "text", "text": "Describe this film."}
    assert image_part["type"] == "image_url"
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.format == "PNG" and sent.size == (72, 48)


def test_remote_backend_downscales_large_images_and_greedy_omits_min_p(
    stub_server: _Stub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    monkeypatch.setenv("MEDLAB_CAPTIONER_ENDPOINT", stub_server.url + "/chat/completions")
    caption(_image(tmp_path, (2400, 1200)), settings=CaptionSettings(temperature=0.0))
    body = stub_server.requests[0]["body"]
    assert stub_server.requests[0]["path"] == "/v1/chat/completions"
    assert body["temperature"] == 0.0 and "min_p" not in body
    assert body["messages"][0]["content"][1]["text"] == DEFAULT_INSTRUCTION
    url = body["messages"][0]["content"][0]["image_url"]["url"]
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (1120, 560)


def test_remote_backend_errors_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing = _Stub(status=503)
    try:
        monkeypatch.setenv("MEDLAB_CAPTIONER_ENDPOINT", failing.url)
        with pytest.raises(ModelUnavailableError) as info:
            caption(_image(tmp_path))
        assert "HTTP 503" in info.value.reason and "model overloaded" in info.value.reason
        assert "MEDLAB_CAPTIONER_ENDPOINT" in info.value.fix
        with pytest.raises(InputError, match="merged"):
            caption(_image(tmp_path), settings=CaptionSettings(use_adapter=False))
    finally:
        failing.close()
    port = failing.server.server_address[1]  # closed now: connection refused
    monkeypatch.setenv("MEDLAB_CAPTIONER_ENDPOINT", f"http://127.0.0.1:{port}/v1")
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="cannot be reached"):
        caption(_image(tmp_path))
    assert time.perf_counter() - started < 5.0
