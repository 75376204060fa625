"""Loading the captioner (issue #12 item 5 and item 4): unsloth comes before transformers,
follows the device and safety settings, and a failed unsloth load frees its memory before the
fallback; a LoRA adapter that does not fit its base fails loudly, and the UI says why. unsloth
itself needs a GPU, so a fake `unsloth` module stands in for it."""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import types
import weakref
from pathlib import Path
from typing import Any

import pytest

from medlab.core.errors import ModelUnavailableError

ROOT = Path(__file__).resolve().parent.parent
PHANTOM = ROOT / "assets" / "radiograph" / "synthetic_chest_phantom.png"

FAKE_UNSLOTH = '''
import sys
TRANSFORMERS_BEFORE = "transformers" in sys.modules  # what unsloth itself warns about
CALLS = []


class FastVisionModel:
    @staticmethod
    def from_pretrained(name, **kwargs):
        CALLS.append((name, kwargs))
        return object(), object()

    @staticmethod
    def for_inference(model):
        return model
'''


def _fake_unsloth_module(from_pretrained: Any = None) -> types.ModuleType:
    module = types.ModuleType("unsloth")
    module.__spec__ = importlib.machinery.ModuleSpec("unsloth", None)
    exec(FAKE_UNSLOTH, module.__dict__)  # noqa: S102 - our own test double
    if from_pretrained is not None:
        module.FastVisionModel.from_pretrained = staticmethod(from_pretrained)
    return module


def test_unsloth_is_imported_before_transformers_at_start_up(tmp_path: Path) -> None:
    (tmp_path / "unsloth").mkdir()
    (tmp_path / "unsloth" / "__init__.py").write_text(FAKE_UNSLOTH, encoding="utf-8")
    script = (
        "import json, sys\n"
        "import medlab.core.config as config\n"
        "config.cuda_expected = lambda settings=None: True  # the driver lists a GPU\n"
        "import app  # the composition root imports unsloth right after spaces, before transformers\n"
        "imported = 'unsloth' in sys.modules\n"
        "before = sys.modules['unsloth'].TRANSFORMERS_BEFORE if imported else None\n"
        "print(json.dumps({'imported': imported, 'transformers_before': before}))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "MEDLAB_DEVICE": "auto"}
    env.pop("MEDLAB_CAPTIONER_ENDPOINT", None)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"imported": True, "transformers_before": False}


def test_unsloth_load_follows_device_and_safety_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from medlab.core.registry import resolve_source
    from medlab.generation.captioner_backends import UnslothBackend

    fake = _fake_unsloth_module()
    monkeypatch.setitem(sys.modules, "unsloth", fake)
    monkeypatch.setenv("MEDLAB_MODEL_CAPTIONER", "some-org/some-vlm")
    monkeypatch.setenv("MEDLAB_REVISION_CAPTIONER", "0123abc")
    monkeypatch.delenv("MEDLAB_ALLOW_PICKLE", raising=False)
    weights = UnslothBackend().load(resolve_source("captioner"), "cuda:1", lambda f, m: None)
    assert weights.quantized_4bit
    ((name, kwargs),) = fake.CALLS
    assert name == "some-org/some-vlm"
    assert kwargs["device_map"] == {"": "cuda:1"}  # MEDLAB_DEVICE, not every GPU
    assert kwargs["trust_remote_code"] is False and kwargs["use_safetensors"] is True
    assert kwargs["revision"] == "0123abc" and kwargs["use_exact_model_name"] is True

    monkeypatch.setenv("MEDLAB_ALLOW_PICKLE", "1")
    UnslothBackend().load(resolve_source("captioner"), "cuda:0", lambda f, m: None)
    assert "use_safetensors" not in fake.CALLS[-1][1]


def test_failed_unsloth_load_frees_memory_before_the_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch

    from medlab.core.registry import resolve_source
    from medlab.generation import captioner_backends as backends

    class Weights:  # stands in for half-loaded GPU tensors
        pass

    partial: list[weakref.ref[Weights]] = []
    cache_cleared: list[int] = []

    def failing_from_pretrained(name: str, **kwargs: Any) -> Any:
        held = Weights()
        partial.append(weakref.ref(held))
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    seen: dict[str, Any] = {}

    class Fallback:
        name = "fallback"

        def usable(self, device: str) -> bool:
            return True

        def load(self, source: Any, device: str, progress: Any) -> Any:
            seen["partial_alive"] = partial[0]() is not None
            seen["cache_cleared"] = len(cache_cleared)
            return backends.LoadedWeights(object(), object(), False)

        def for_inference(self, model: Any) -> Any:
            return model

    monkeypatch.setitem(sys.modules, "unsloth", _fake_unsloth_module(failing_from_pretrained))
    monkeypatch.setattr(backends, "LOAD_BACKENDS", (backends.UnslothBackend(), Fallback()))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: cache_cleared.append(1))
    monkeypatch.setenv("MEDLAB_MODEL_CAPTIONER", str(tmp_path))
    backend, _ = backends._load_base(resolve_source("captioner"), "cuda", lambda f, m: None)
    assert backend.name == "fallback"
    assert seen == {"partial_alive": False, "cache_cleared": 1}


# -- adapters that do not fit ----------------------------------------------------------------
def _edited_adapter(src: str, dest: Path, edit: Any) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest)
    state = load_file(str(Path(src) / "adapter_model.safetensors"))
    save_file(edit(state), str(dest / "adapter_model.safetensors"))
    return dest


def test_adapter_with_missing_weights_fails_loudly(
    use_tiny_models: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medlab.generation.captioner import caption

    def drop_half_of_b(state: dict[str, Any]) -> dict[str, Any]:
        b_keys = sorted(k for k in state if "lora_B" in k)
        return {k: v for k, v in state.items() if k not in b_keys[: len(b_keys) // 2]}

    bad = _edited_adapter(use_tiny_models["MEDLAB_MODEL_CAPTIONER_ADAPTER"], tmp_path / "partial", drop_half_of_b)
    monkeypatch.setenv("MEDLAB_MODEL_CAPTIONER_ADAPTER", str(bad))
    with pytest.raises(ModelUnavailableError) as info:
        caption(PHANTOM)
    assert info.value.key == "captioner_adapter"
    assert "missing from the file" in info.value.reason and "lora_B" in info.value.reason


def test_adapter_for_another_layout_fails_loudly(
    use_tiny_models: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medlab.generation.captioner import caption

    def rename_some(state: dict[str, Any]) -> dict[str, Any]:
        first = sorted(k for k in state if "q_proj" in k)[0]
        renamed = dict(state)
        renamed[first.replace("q_proj", "query_projection")] = renamed.pop(first)
        return renamed

    bad = _edited_adapter(use_tiny_models["MEDLAB_MODEL_CAPTIONER_ADAPTER"], tmp_path / "renamed", rename_some)
    monkeypatch.setenv("MEDLAB_MODEL_CAPTIONER_ADAPTER", str(bad))
    with pytest.raises(ModelUnavailableError) as info:
        caption(PHANTOM)
    assert "match no module of the base model" in info.value.reason and "query_projection" in info.value.reason
    assert "MEDLAB_MODEL_CAPTIONER_ADAPTER" in info.value.fix


def test_broken_adapter_folder_is_explained_in_the_ui(
    use_tiny_models: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medlab.generation.captioner_adapter import adapter_info
    from tabs.radiograph import _backend_markdown

    broken = tmp_path / "broken-adapter"
    broken.mkdir()
    (broken / "adapter_model.safetensors").write_bytes(b"")
    monkeypatch.setenv("MEDLAB_MODEL_CAPTIONER_ADAPTER", str(broken))
    info = adapter_info()
    assert info["source"] == str(broken) and "adapter_config.json" in info["error"]
    text = _backend_markdown()
    assert "(no adapter)" not in text
    assert "cannot be used" in text and "adapter_config.json" in text
