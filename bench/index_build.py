"""Section 6: pathology index build throughput (images/s) of the app's builder
(medlab.retrieval.image_index.index_folder: hash, decode, thumbnail, encode in batches, upsert into
chroma) vs the encoder alone (medlab.retrieval.encoders.encode_images on the same batches of
already-decoded images), with PLIP as a real-size CLIP ViT-B/32 with random weights; and the
default pathology pipeline (medlab.retrieval.default_index.build: read a Hub-shaped parquet
file of the same tiles, hash, decode, thumbnail, encode, upsert, with its resume check per
batch) on the same tiles, PLIP only, against the same encoder baseline.

The images are generated 224 px PNG tiles (smooth random colour fields, H&E-like pinks and
purples). Every build starts from an empty data dir, so every image is encoded."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import WORK, Row, SectionResult, check, loadavg


def make_tiles(folder: Path, n: int, side: int = 224, seed: int = 0) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = sorted(folder.glob("*.png"))
    if len(paths) == n:
        return paths
    for p in paths:
        p.unlink()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        low = rng.random((8, 8, 3))
        field = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC),
                           dtype=np.float32) / 255.0
        pink = np.array([0.93, 0.6, 0.75]) * (1 - field[..., :1]) + np.array([0.45, 0.25, 0.6]) * field[..., :1]
        noise = rng.normal(0, 0.03, (side, side, 3))
        img = np.clip(pink * (0.8 + 0.4 * field[..., 1:2]) + noise, 0, 1)
        path = folder / f"tile_{i:04d}.png"
        Image.fromarray((img * 255).astype(np.uint8)).save(path)
        out.append(path)
    return out


def make_parquet(tiles: list[Path], path: Path) -> Path:
    """The tiles as a parquet file shaped like a `datasets` image set on the Hub."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.is_file():
        return path
    images = [{"bytes": p.read_bytes(), "path": p.name} for p in tiles]
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("label", pa.int64())])
    pq.write_table(pa.Table.from_pydict({"image": images, "label": [i % 9 for i in range(len(tiles))]}, schema=schema),
                   path)
    return path


def run(quick: bool = False) -> SectionResult:
    from bench.models import build_all

    res = SectionResult(6, "Pathology index build throughput vs the encoder alone")
    started = time.perf_counter()
    scale = "tiny" if quick else "real"
    os.environ.update(build_all(WORK / "models", scale, names=("plip-clip-b32",)))
    n = 32 if quick else 96
    repeats = 1 if quick else 2
    tiles = make_tiles(WORK / f"index-tiles-{n}", n)

    import torch

    from medlab.core.loaders import get_model
    from medlab.io.imaging import load_image
    from medlab.retrieval import encoders, image_index
    from medlab.retrieval.vectorstore import reset_clients

    lm = get_model("plip")
    pils = [load_image(p).image for p in tiles]
    batch = image_index.BATCH_SIZE
    batches = [pils[i:i + batch] for i in range(0, n, batch)]
    pixel_batches = [lm.image_processor(images=b, return_tensors="pt")["pixel_values"] for b in batches]
    encoders.encode_images("plip", batches[0])  # warm-up

    def pipeline() -> float:
        data = Path(tempfile.mkdtemp(prefix="bench-index-"))
        os.environ["MEDLAB_DATA_DIR"] = str(data)
        reset_clients()
        try:
            image_index.image_collection("plip").count()  # open the store first: the app keeps one client
            t0 = time.perf_counter()
            report = image_index.index_folder(tiles[0].parent, key="plip")
            seconds = time.perf_counter() - t0
            assert report.added == n, report.summary()
            return seconds
        finally:
            reset_clients()
            shutil.rmtree(data, ignore_errors=True)

    parquet = make_parquet(tiles, WORK / f"index-tiles-{n}.parquet")
    expected_ids = {hashlib.sha256(p.read_bytes()).hexdigest() for p in tiles}

    def default_pipeline() -> float:
        from medlab.retrieval import default_index

        data = Path(tempfile.mkdtemp(prefix="bench-default-"))
        os.environ["MEDLAB_DATA_DIR"] = str(data)
        reset_clients()
        try:
            image_index.image_collection("plip").count()
            t0 = time.perf_counter()
            st = default_index.build(str(parquet), max_tiles=n, keys=("plip",))
            seconds = time.perf_counter() - t0
            got = set(image_index.image_collection("plip").get(include=[])["ids"])
            assert st.state == "done" and st.added["plip"] == n and got == expected_ids, st.line()
            return seconds
        finally:
            reset_clients()
            shutil.rmtree(data, ignore_errors=True)

    def encoder() -> float:
        t0 = time.perf_counter()
        for b in batches:
            encoders.encode_images("plip", b)
        return time.perf_counter() - t0

    def raw_forward() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for px in pixel_batches:
                lm.model.get_image_features(pixel_values=px)
        return time.perf_counter() - t0

    runs: dict[str, list[float]] = {"index_folder": [], "default_index": [], "encode_images": [], "raw_forward": []}
    for _ in range(repeats):
        runs["index_folder"].append(pipeline())
        runs["default_index"].append(default_pipeline())
        runs["encode_images"].append(encoder())
        runs["raw_forward"].append(raw_forward())
    rate = {k: [n / s for s in v] for k, v in runs.items()}
    med = {k: float(np.median(v)) for k, v in rate.items()}
    res.load["end"] = loadavg()
    res.details = {"images": n, "batch_size": batch, "repeats": repeats, "seconds": runs,
                   "images_per_s": {k: [round(x, 2) for x in v] for k, v in rate.items()}}
    res.tables.append({"title": f"{n} tiles of 224 px, batches of {batch}, {repeats} runs each (images/s)",
                       "columns": ["pipeline", "median img/s", "min img/s", "ratio to encode_images"],
                       "rows": [[k, round(med[k], 2), round(min(rate[k]), 2), round(med[k] / med["encode_images"], 3)]
                                for k in runs]})
    ratio = med["index_folder"] / med["encode_images"]
    res.rows.append(Row("index build / encoder alone (images/s, median)", round(ratio, 3), "x", ">= 0.9x",
                        check(ratio, ">=", 0.9),
                        f"{med['index_folder']:.1f} vs {med['encode_images']:.1f} img/s; raw forward "
                        f"{med['raw_forward']:.1f} img/s"))
    ratio_default = med["default_index"] / med["encode_images"]
    res.rows.append(Row("default index build / encoder alone (images/s, median)", round(ratio_default, 3), "x",
                        ">= 0.9x", check(ratio_default, ">=", 0.9),
                        f"{med['default_index']:.1f} vs {med['encode_images']:.1f} img/s (parquet source, PLIP only; "
                        f"all {n} content ids stored, checked)"))
    res.seconds = time.perf_counter() - started
    return res
