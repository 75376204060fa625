"""What a caption request may ask for: generation settings, the instruction and the chat
layout (document 003). Pure data and validation; nothing here imports torch."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from medlab.core.errors import InputError

# Document 003's instruction, used for training the adapter: keep it as the default.
DEFAULT_INSTRUCTION = "You are an expert radiographer. Describe accurately what you see in this image."
MAX_INSTRUCTION_CHARS = 2000
MAX_NEW_TOKENS_LIMIT = 1024
# Document 003 sampled with temperature 1.5 and min_p 0.1: very creative, fine for a demo of
# style but it invents findings. A low temperature keeps clinical text closer to the image.
DEFAULT_TEMPERATURE = 0.3
DEFAULT_MIN_P = 0.1
DEFAULT_MAX_NEW_TOKENS = 128
DOC_003_TEMPERATURE = 1.5


class InstructionError(InputError):
    """The instruction text cannot be used."""


@dataclass(frozen=True)
class CaptionSettings:
    """Generation settings exposed in the tab. Defaults: 128 new tokens and min_p 0.1 as in
    document 003, but temperature 0.3 instead of the document's 1.5 (see DEFAULT_TEMPERATURE);
    temperature 0 means greedy decoding."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = DEFAULT_TEMPERATURE  # 0 = greedy (deterministic)
    min_p: float = DEFAULT_MIN_P
    use_adapter: bool = True

    def validated(self) -> CaptionSettings:
        try:
            tokens = int(self.max_new_tokens)
            temperature = float(self.temperature)
            min_p = float(self.min_p)
        except (TypeError, ValueError):
            raise InputError("Generation settings must be numbers.") from None
        if not 1 <= tokens <= MAX_NEW_TOKENS_LIMIT:
            raise InputError(f"max new tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT} (got {tokens}).")
        if not 0.0 <= temperature <= 2.0 or temperature != temperature:
            raise InputError(f"temperature must be between 0 and 2 (got {temperature}); 0 means greedy.")
        if not 0.0 <= min_p < 1.0 or min_p != min_p:
            raise InputError(f"min_p must be in [0, 1) (got {min_p}).")
        return replace(self, max_new_tokens=tokens, temperature=temperature, min_p=min_p,
                       use_adapter=bool(self.use_adapter))

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
            if self.min_p > 0:
                kwargs["min_p"] = self.min_p
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


def check_instruction(instruction: str | None) -> str:
    text = (instruction or "").strip() or DEFAULT_INSTRUCTION
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise InstructionError(
            f"The instruction is {len(text)} characters long; keep it under {MAX_INSTRUCTION_CHARS}."
        )
    return text


def chat_messages(instruction: str, image: Any = None) -> list[dict[str, Any]]:
    """Document 003's chat layout: one user turn holding [image, instruction]. With `image`
    the image part carries the picture itself, as processors' apply_chat_template expects."""
    part: dict[str, Any] = {"type": "image"} if image is None else {"type": "image", "image": image}
    return [{"role": "user", "content": [part, {"type": "text", "text": instruction}]}]
