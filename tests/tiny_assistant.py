"""Tiny stand-ins for the assistant's optional models (random or rigged weights, no download):

- a cross-encoder (BertForSequenceClassification, one label) whose classifier is zeroed and
  whose bias is `logit`, so every (question, passage) pair scores exactly `logit`;
- a multilingual sentence-transformers embedder (BERT + mean pooling) whose vocabulary holds
  the CJK characters of the evaluation questions;
- an instruct causal LM (Qwen2) with a chat template whose final norm is zeroed, so every
  logit is 0 and greedy decoding repeats token 0, the word `word`.
All load through the app's real loaders."""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789")
CJK = sorted(set("黑色素瘤的规则是什么哪些因素会增加患风险"))
WORDS = ("what does the is of in a melanoma rule abcde for risk stand mean").split()


def _bert_tokenizer(path: Path):  # type: ignore[no-untyped-def]
    from transformers import BertTokenizer

    tokens = SPECIALS + WORDS + LETTERS + ["##" + ch for ch in LETTERS] + CJK
    path.mkdir(parents=True, exist_ok=True)
    return BertTokenizer(vocab={tok: i for i, tok in enumerate(dict.fromkeys(tokens))}, do_lower_case=True)


def _bert_config(vocab_size: int, **kw):  # type: ignore[no-untyped-def]
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=512, **kw)


def tiny_cross_encoder(path: Path, logit: float) -> Path:
    import torch
    from transformers import BertForSequenceClassification

    tokenizer = _bert_tokenizer(path)
    torch.manual_seed(0)
    model = BertForSequenceClassification(_bert_config(len(tokenizer), num_labels=1)).eval()
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.fill_(logit)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_multilingual_embedder(path: Path) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertModel

    bert_dir = path.parent / (path.name + "-bert")
    tokenizer = _bert_tokenizer(bert_dir)
    torch.manual_seed(0)
    BertModel(_bert_config(len(tokenizer))).save_pretrained(bert_dir)
    tokenizer.save_pretrained(bert_dir)
    word = models.Transformer(str(bert_dir), max_seq_length=128)
    pooling = models.Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[word, pooling], device="cpu").save(str(path))
    return path


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def tiny_instruct_lm(path: Path, word: str) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<unk>"]
    vocab = {word: 0}
    for tok in specials + WORDS + ["passages", "question", "system", "user", "assistant"]:
        vocab.setdefault(tok, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", additional_special_tokens=specials[:2])
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         tie_word_embeddings=False, eos_token_id=vocab["<|im_end|>"],
                         pad_token_id=vocab["<|endoftext|>"])
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        model.model.norm.weight.zero_()  # every logit 0: greedy decoding repeats token 0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
