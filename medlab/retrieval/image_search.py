"""Search the pathology image index: text -> images and image -> images ("more like this")."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlab.core.errors import InputError
from medlab.core.progress import Progress
from medlab.io.files import file_sha256
from medlab.retrieval.encoders import encode_images, encode_texts
from medlab.retrieval.image_index import THUMB_SIDE, nonempty_collection
from medlab.retrieval.vectorstore import store_errors
from medlab.retrieval.zero_shot import as_image


class EmptyIndexError(InputError):
    """Search asked of an index with no images."""


@dataclass
class Hit:
    id: str
    score: float
    file: str
    caption: str
    label: str
    thumb: str
    source: str

    @property
    def title(self) -> str:
        text = self.caption or self.label or self.file
        return f"{self.score:.3f} · {text}"


def _hits(res: dict[str, Any]) -> list[Hit]:
    hits = []
    for id_, meta, dist in zip(res["ids"][0], res["metadatas"][0], res["distances"][0]):
        hits.append(Hit(id_, round(1.0 - float(dist), 4), meta.get("file", ""), meta.get("caption", ""),
                        meta.get("label", ""), meta.get("thumb", ""), meta.get("source", "")))
    return hits


def _k(k: Any) -> int:
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise InputError("k must be a whole number.") from None
    if not 1 <= k <= 100:
        raise InputError("k must be between 1 and 100.")
    return k


def search_text(query: str, k: int = 8, key: str = "plip", progress: Progress | None = None) -> list[Hit]:
    """Text -> the k most similar indexed images (cosine similarity)."""
    query = (query or "").strip()
    if not query:
        raise InputError('Type a description, e.g. "tumor epithelium with glands".')
    if len(query) > 500:
        raise InputError("The query is too long (over 500 characters).")
    col = nonempty_collection(key, EmptyIndexError)
    k = _k(k)
    vec = encode_texts(key, [query], progress)[0]
    # chroma returns fewer than k rows for a small index, so no count() is needed here
    with store_errors("searching the image index"):
        res = col.query(query_embeddings=[vec.tolist()], n_results=k, include=["metadatas", "distances"])
    return _hits(res)


def search_image(
    image: Any = None,
    k: int = 8,
    key: str = "plip",
    item_id: str | None = None,
    progress: Progress | None = None,
) -> list[Hit]:
    """Image -> the k most similar indexed images ("more like this").

    `item_id` (an indexed image's id) reuses its stored embedding; an uploaded file whose
    bytes are already indexed does too, so the query image itself comes back first."""
    import numpy as np

    col = nonempty_collection(key, EmptyIndexError)
    k = _k(k)
    vec = None
    lookup = item_id
    if lookup is None and isinstance(image, (str, os.PathLike)) and Path(image).is_file():
        lookup = file_sha256(Path(image))
    if lookup:
        with store_errors("reading the image index"):
            got = col.get(ids=[lookup], include=["embeddings"])
        if got["ids"]:
            vec = np.asarray(got["embeddings"][0], dtype="float32")
        elif item_id is not None:
            raise InputError("That image is no longer in the index; search again.")
    if vec is None:
        vec = encode_images(key, [as_image(image)], progress)[0]
    with store_errors("searching the image index"):
        res = col.query(query_embeddings=[vec.tolist()], n_results=k, include=["metadatas", "distances"])
    hits = _hits(res)
    if lookup and any(h.id == lookup for h in hits):  # exact self-match first even on ties
        hits.sort(key=lambda h: (h.id != lookup, -h.score))
    return hits


def load_thumbnail(hit: Hit) -> Any:
    """The hit's thumbnail as a PIL image (a grey tile if it went missing)."""
    from PIL import Image

    try:
        with Image.open(hit.thumb) as img:
            return img.convert("RGB")
    except (OSError, ValueError):
        return Image.new("RGB", (THUMB_SIDE, THUMB_SIDE), (200, 200, 200))
