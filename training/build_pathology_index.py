"""Build the pathology tab's default image index.

Default source: NCT-CRC-HE (Kather, Halama & Marx 2018; Zenodo 10.5281/zenodo.1214456;
CC-BY-4.0) as parquet on the Hugging Face Hub (`1aurent/NCT-CRC-HE`). The script downloads the
parquet shards of one split with huggingface_hub (no `datasets` needed; reading parquet needs
`pyarrow`), draws a stratified sample of N tiles per tissue class, writes them as PNG under
<out>/<CLASS>/ with a captions.csv (file,label,caption) and an ATTRIBUTION.txt, and indexes
them for the chosen models through the app's own engine (medlab.retrieval.image_index.index_folder).
The written folder is also a valid input for `python -m training.plip_linear_probe --data`.

Or index a local folder of images you already have (`--folder`), e.g. a Zenodo download.

Incremental and resumable: images are identified by content, so re-running adds nothing new
and an interrupted run continues where it stopped.

Examples:
    python -m training.build_pathology_index --per-class 40
    python -m training.build_pathology_index --split NCT_CRC_HE_100K --per-class 100 --models plip,clip_baseline
    python -m training.build_pathology_index --folder /data/CRC-VAL-HE-7K --models plip
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import random
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("training.build_pathology_index")

DEFAULT_REPO = "1aurent/NCT-CRC-HE"
DEFAULT_SPLIT = "CRC_VAL_HE_7K"
# ClassLabel order of the dataset: ADI, BACK, DEB, LYM, MUC, MUS, NORM, STR, TUM.
CLASS_CODES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")
ATTRIBUTION = """Tiles sampled from NCT-CRC-HE-100K / CRC-VAL-HE-7K:
Kather, J. N., Halama, N., & Marx, A. (2018). 100,000 histological images of human colorectal
cancer and healthy tissue (v0.1). Zenodo. https://doi.org/10.5281/zenodo.1214456
Licence: Creative Commons Attribution 4.0 International (CC-BY-4.0).
Obtained from the Hugging Face Hub dataset {repo} (split {split}); converted to PNG, unmodified pixels.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.build_pathology_index", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", type=Path, help="index this local folder instead of downloading")
    p.add_argument("--repo", default=DEFAULT_REPO, help=f"Hub dataset with parquet shards (default {DEFAULT_REPO})")
    p.add_argument("--revision", default=None, help="Hub revision of the dataset")
    p.add_argument("--split", default=DEFAULT_SPLIT, help="split name as it appears in the parquet paths "
                   f"(default {DEFAULT_SPLIT}; also NCT_CRC_HE_100K, NCT_CRC_HE_100K_NONORM)")
    p.add_argument("--per-class", type=int, default=40, help="tiles sampled per tissue class (default 40)")
    p.add_argument("--out", type=Path, help="where sampled tiles go (default <MEDLAB_DATA_DIR>/pathology/nct_crc_he)")
    p.add_argument("--models", default="plip", help="comma-separated: plip, clip_baseline (default plip)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-index", action="store_true", help="only write the sample, do not index it")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def _need_pyarrow() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SystemExit(
            "Reading the parquet shards needs pyarrow: `pip install pyarrow==26.0.1`, "
            "or download the tiles yourself and use --folder."
        ) from None
    return pq


def download_sample(repo: str, split: str, per_class: int, out: Path, seed: int, revision: str | None) -> Path:
    """Stratified sample of `per_class` tiles per class written as PNG + captions.csv."""
    from huggingface_hub import HfApi, hf_hub_download
    from PIL import Image

    from medlab.core.specs import KATHER_CLASSES

    pq = _need_pyarrow()
    files = [f for f in HfApi().list_repo_files(repo, repo_type="dataset", revision=revision)
             if f.endswith(".parquet") and split.lower() in f.lower()]
    if not files:
        raise SystemExit(f"No parquet files for split {split!r} in {repo}.")
    log.info("%d parquet shard(s) for %s", len(files), split)
    shards = [hf_hub_download(repo, f, repo_type="dataset", revision=revision) for f in sorted(files)]

    # Pass 1: labels only (cheap), to draw the stratified sample.
    by_class: dict[int, list[tuple[int, int]]] = {}
    for s, path in enumerate(shards):
        labels = pq.read_table(path, columns=["label"]).column("label").to_pylist()
        for row, label in enumerate(labels):
            by_class.setdefault(int(label), []).append((s, row))
    rng = random.Random(seed)
    chosen: dict[int, list[tuple[int, int]]] = {}
    for label, rows in sorted(by_class.items()):
        chosen[label] = sorted(rng.sample(rows, min(per_class, len(rows))))
        log.info("%s: %d of %d tiles", CLASS_CODES[label], len(chosen[label]), len(rows))

    # Pass 2: decode only the chosen rows, shard by shard.
    out.mkdir(parents=True, exist_ok=True)
    wanted: dict[int, list[tuple[int, int]]] = {}
    for label, rows in chosen.items():
        for s, row in rows:
            wanted.setdefault(s, []).append((row, label))
    records = []
    for s, rows in sorted(wanted.items()):
        table = pq.read_table(shards[s], columns=["image"])
        images = table.column("image")
        for row, label in rows:
            cell = images[row].as_py()
            data = cell["bytes"] if isinstance(cell, dict) else cell
            code = CLASS_CODES[label]
            name = f"{code}/{Path((cell or {}).get('path') or f'{code}_{s}_{row}').stem}.png"
            target = out / name
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                with Image.open(io.BytesIO(data)) as img:
                    img.convert("RGB").save(target.with_suffix(".part"), format="PNG")
                target.with_suffix(".part").replace(target)
            records.append((name, KATHER_CLASSES[label], f"{KATHER_CLASSES[label]} (NCT-CRC-HE {code}, {split})"))
    with open(out / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "caption"])
        w.writerows(sorted(records))
    (out / "ATTRIBUTION.txt").write_text(ATTRIBUTION.format(repo=repo, split=split))
    log.info("wrote %d tiles to %s", len(records), out)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from medlab.core.config import load_settings
    from medlab.core.errors import MedlabError
    from medlab.retrieval.encoders import MODELS
    from medlab.retrieval.image_index import index_folder

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        print(f"Unknown model(s) {bad}; choose from {', '.join(MODELS)}.", file=sys.stderr)
        return 2
    if args.folder:
        folder = args.folder
    else:
        out = args.out or load_settings().data_dir / "pathology" / "nct_crc_he"
        folder = download_sample(args.repo, args.split, args.per_class, out, args.seed, args.revision)
    if args.no_index:
        return 0

    def progress(fraction: float, message: str) -> None:
        log.info("%3.0f%% %s", 100 * fraction, message)

    status = 0
    for key in models:
        try:
            report = index_folder(folder, key=key, progress=progress, batch_size=args.batch_size)
            print(report.summary())
        except MedlabError as exc:
            print(f"{key}: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
