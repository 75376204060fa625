"""The captioner with other image-text-to-text architectures (issue #13): tiny Idefics3
(SmolVLM, the CPU default) and Gemma 3 (MedGemma) checkpoints built offline caption through
the engine API, streamed, with a LoRA adapter toggle; the registry picks the default per
hardware from data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from medlab.generation.caption_settings import DEFAULT_INSTRUCTION, CaptionSettings
from medlab.generation.captioner import caption_stream, next_token_logits

PHANTOM = Path(__file__).resolve().parent.parent / "assets" / "radiograph" / "synthetic_chest_phantom.png"
GREEDY = CaptionSettings(max_new_tokens=10, temperature=0.0)


def _builders() -> dict[str, Callable[[Path], Path]]:
    from tests.tiny_generation import tiny_gemma3, tiny_idefics3

    return {"idefics3": tiny_idefics3, "gemma3": tiny_gemma3}


@pytest.fixture(scope="module", params=["idefics3", "gemma3"])
def captioner_dirs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from tests.tiny_generation import TEXT_ATTENTION_REGEX, tiny_lora_adapter

    root = tmp_path_factory.mktemp(request.param)
    base = _builders()[request.param](root / "base")
    adapter = tiny_lora_adapter(base, root / "lora", target_modules=TEXT_ATTENTION_REGEX)
    return {"MEDLAB_MODEL_CAPTIONER": str(base), "MEDLAB_MODEL_CAPTIONER_ADAPTER": str(adapter)}


def _independent_inputs(base_dir: str, instruction: str) -> tuple[object, dict[str, object]]:
    """The model and its inputs the plain transformers way: the template rendered as text, then
    processor(text=..., images=[[image]]) - not through the engine's prepare_inputs."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(base_dir)
    model = AutoModelForImageTextToText.from_pretrained(base_dir).eval()
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    image = Image.open(PHANTOM).convert("RGB")
    bos = processor.tokenizer.bos_token
    inputs = processor(text=prompt, images=[[image]], add_special_tokens=not (bos and prompt.startswith(bos)),
                       return_tensors="pt")
    return (model, processor), dict(inputs)


def test_captions_stream_and_equal_plain_generate(captioner_dirs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    for var, value in captioner_dirs.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("MEDLAB_MODEL_CAPTIONER_ADAPTER", "none")
    updates = list(caption_stream(PHANTOM, settings=GREEDY))
    assert len(updates) > 1
    assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(updates, updates[1:]))

    (model, processor), inputs = _independent_inputs(captioner_dirs["MEDLAB_MODEL_CAPTIONER"], DEFAULT_INSTRUCTION)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    expected = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert updates[-1].strip() == expected.strip()


def test_adapter_toggle_on_other_architectures(captioner_dirs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    for var, value in captioner_dirs.items():
        monkeypatch.setenv(var, value)
    on = next_token_logits(PHANTOM, use_adapter=True)
    off = next_token_logits(PHANTOM, use_adapter=False)
    assert (on - off).abs().max().item() > 1e-3  # the adapter takes part

    (model, _), inputs = _independent_inputs(captioner_dirs["MEDLAB_MODEL_CAPTIONER"], DEFAULT_INSTRUCTION)
    with torch.inference_mode():
        reference = model(**inputs).logits[0, -1].float()
    assert torch.allclose(off, reference, atol=1e-5)  # adapter off = the base checkpoint

    tuned = list(caption_stream(PHANTOM, settings=GREEDY))
    base = list(caption_stream(PHANTOM, settings=CaptionSettings(10, 0.0, use_adapter=False)))
    assert len(tuned) > 1 and len(base) > 1
    assert tuned[-1] != base[-1]


# -- the registry: defaults per hardware, known checkpoints ----------------------------------
def test_cpu_default_is_the_small_general_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from medlab.core.registry import get_spec, resolve_source
    from medlab.generation.captioner import captioner_summary
    from medlab.generation.captioner_adapter import adapter_source

    for var in ("MEDLAB_MODEL_CAPTIONER", "MEDLAB_MODEL_CAPTIONER_ADAPTER", "MEDLAB_CAPTIONER_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MEDLAB_DEVICE", "cpu")
    spec = get_spec("captioner")
    assert resolve_source("captioner").location == "HuggingFaceTB/SmolVLM-500M-Instruct"
    assert not spec.needs_gpu and spec.licence == "Apache-2.0" and spec.memory_gb < 4
    assert "NOT trained on radiology" in spec.title
    assert adapter_source() is None  # the Llama adapter is never paired with another base
    summary = captioner_summary()
    assert summary["radiology_trained"] is False
    assert "Llama-3.2-11B-Vision" in summary["gpu_default"]
    assert "google/medgemma-4b-it" in summary["alternatives"]


def test_gpu_default_pairs_the_adapter_only_with_its_own_base(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import medlab.core.registry as registry
    from medlab.core import specs
    from medlab.generation.captioner_adapter import adapter_source

    for var in ("MEDLAB_MODEL_CAPTIONER", "MEDLAB_MODEL_CAPTIONER_ADAPTER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(registry, "cuda_expected", lambda settings=None: True)
    spec = registry.get_spec("captioner")
    assert spec.default_source == "unsloth/Llama-3.2-11B-Vision-Instruct" and spec.needs_gpu
    source = adapter_source()
    assert source is not None and source.location == specs.SPECS["captioner_adapter"].default_source
    monkeypatch.setenv("MEDLAB_MODEL_CAPTIONER", str(tmp_path))  # another base: no default adapter
    assert adapter_source() is None


def test_a_known_checkpoint_named_by_the_variable_brings_its_own_card(monkeypatch: pytest.MonkeyPatch) -> None:
    from medlab.core.registry import get_spec

    monkeypatch.setenv("MEDLAB_MODEL_CAPTIONER", "google/medgemma-4b-it")
    spec = get_spec("captioner")
    assert "HF_TOKEN" in spec.licence and "MedGemma" in spec.title and spec.dtype == "bfloat16"
    assert "HF_TOKEN" in spec.licence


def test_spec_preprocessing_settings_apply_to_their_own_checkpoint_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SmolVLM on a CPU reads the image as one tile (registry processor_kwargs); a checkpoint
    the variable points elsewhere keeps its processor's own settings."""
    from medlab.core.loaders import get_model
    from medlab.core.registry import get_spec
    from medlab.generation.captioner import load_radiograph, prepare_inputs
    from tests.tiny_generation import tiny_idefics3

    assert dict(get_spec("captioner").params["processor_kwargs"]) == {"do_image_splitting": False}
    monkeypatch.setenv("MEDLAB_MODEL_CAPTIONER", str(tiny_idefics3(tmp_path / "smol")))
    monkeypatch.setenv("MEDLAB_MODEL_CAPTIONER_ADAPTER", "none")
    loaded = get_model("captioner")
    assert loaded.extras["processor_kwargs"] == {}
    image = load_radiograph(PHANTOM)
    image_id = loaded.model.config.image_token_id
    split = int((prepare_inputs(loaded, image, DEFAULT_INSTRUCTION)["input_ids"] == image_id).sum())
    loaded.extras["processor_kwargs"] = {"do_image_splitting": False}
    single = int((prepare_inputs(loaded, image, DEFAULT_INSTRUCTION)["input_ids"] == image_id).sum())
    # tiny processor: 64-px resize -> 2x2 tiles of 32 px + the global view, 4 tokens each
    assert (split, single) == (5 * 4, 4)
