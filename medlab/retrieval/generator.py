"""The assistant's optional generated answer: a small instruction-tuned chat model (registry
key `assistant_generator`, Qwen2.5-0.5B-Instruct by default) rewrites the retrieved passages
into a short answer. It is off unless MEDLAB_ASSISTANT_GENERATOR names the key, and its text
is shown only when every one of its sentences is supported by one cited passage (most of the
sentence's content words occur in that passage); otherwise it is withheld and the
extractive answer stands alone."""

from __future__ import annotations

import re
from typing import Any

from medlab.core.errors import MedlabError
from medlab.retrieval.documents import split_sentences
from medlab.retrieval.knowledge_store import Passage, Progress

GENERATOR_ENV = "MEDLAB_ASSISTANT_GENERATOR"
GROUNDING_MIN = 0.7  # share of a sentence's content words that must occur in one cited passage
GENERATE_MAX_NEW_TOKENS = 120
SYSTEM_PROMPT = (
    "You answer questions for medical students using only the numbered passages you are given. "
    "Answer in at most three short sentences, reusing the passages' wording. If the passages do "
    "not answer the question, say: The documents do not say."
)


class NotAChatModelError(MedlabError):
    """The configured generator key is not an instruction-tuned causal language model."""


def load_instruct_lm(spec: Any, source: Any, device: str, progress: Progress) -> Any:
    """AutoModelForCausalLM + its tokenizer (which must carry a chat template)."""
    from medlab.core.loaders import load_pretrained

    return load_pretrained(spec, source, device, progress, "AutoModelForCausalLM", "AutoTokenizer")


def generate(key: str, question: str, passages: list[Passage], progress: Progress | None = None,
             max_new_tokens: int = GENERATE_MAX_NEW_TOKENS) -> str:
    """The chat model's answer from the passages only (greedy, so the same question gives the
    same text)."""
    import torch

    from medlab.core.loaders import use_model
    from medlab.core.registry import get_spec

    if get_spec(key).task != "text-generation":
        raise NotAChatModelError(f"{key} is not a chat model; set {GENERATOR_ENV}=assistant_generator.")
    with use_model(key, progress) as lm:  # a lease: not evicted while generating
        if not getattr(lm.tokenizer, "chat_template", None):
            raise NotAChatModelError(f"{key}'s tokenizer has no chat template.")
        context = "\n".join(f"[{i}] {p.text}" for i, p in enumerate(passages[:3], 1))
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": f"Passages:\n{context}\n\nQuestion: {question}"}]
        enc = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True).to(lm.device)
        with torch.inference_mode():
            out = lm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=lm.tokenizer.pad_token_id or lm.tokenizer.eos_token_id)
        new_tokens = out[0][enc["input_ids"].shape[1]:]
        return lm.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]{4,}", text.lower())


def sentence_support(text: str, passages: list[Passage]) -> list[tuple[str, float, int]]:
    """(sentence, share of its content words found in its best passage, that passage's number)."""
    sources = [set(_words(p.text)) for p in passages]
    out = []
    for sentence in split_sentences(text or ""):
        words = _words(sentence)
        if not words:
            continue
        shares = [sum(w in src for w in words) / len(words) for src in sources] or [0.0]
        best = max(range(len(shares)), key=shares.__getitem__)
        out.append((sentence, shares[best], best + 1))
    return out


def grounding(text: str, passages: list[Passage]) -> float:
    """The support of the LEAST supported sentence (0 when the text has no content words):
    a generated answer is shown only when every sentence is supported."""
    support = sentence_support(text, passages)
    return min((s for _, s, _ in support), default=0.0)
