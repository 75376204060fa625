"""Linear probe of PLIP against general CLIP (document 004).

Embeds every image of a labelled folder with PLIP (the app's `plip` model, transformers
CLIPModel) and with the CLIP baseline (`clip_baseline`, open_clip ViT-B/32 OpenAI), L2-
normalises the embeddings, fits scikit-learn's LogisticRegression on the training split and
reports macro-F1 (and weighted F1, accuracy) on the test split for both, side by side.
PLIP's paper probes e.g. Kather colon (NCT-CRC-HE-100K, 9 tissue classes, CC-BY 4.0).

Models come from the app's registry and cache (MEDLAB_MODEL_PLIP / MEDLAB_MODEL_CLIP_BASELINE
override them). A model that cannot be loaded is reported as missing and the other is still
probed. Writes evaluation.json, plots/*.png and model_card.md (default: next to the PLIP
weights if local, else MEDLAB_DATA_DIR/reports/plip, where the pathology tab's card looks)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np

from training.common import (
    ImageFolder,
    default_report_dir,
    load_rgb,
    md_table,
    pyplot,
    scan_image_folder,
    seed_everything,
    setup_logging,
    utc_now,
    write_json,
)

log = logging.getLogger("training.plip_linear_probe")
MODELS = ("plip", "clip_baseline")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.plip_linear_probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="labelled folder <data>/<class>/<images>")
    p.add_argument("--test-data", type=Path, help="separate test folder (default: stratified --test-fraction of --data)")
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--models", default="plip,clip_baseline", help="comma-separated registry keys")
    p.add_argument("--C", default="1.0", help="inverse regularisation; several comma-separated values are "
                                              "chosen by 3-fold cross-validated macro-F1 on the training split")
    p.add_argument("--max-iter", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", type=Path, help="report folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def embed(key: str, folder: ImageFolder, batch_size: int) -> np.ndarray:
    """L2-normalised image embeddings from the app's cached model."""
    import torch
    from tqdm.auto import tqdm

    from medlab.core.loaders import get_model

    loaded = get_model(key)
    rows = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(folder.paths), batch_size), desc=f"embedding ({key})", unit="batch"):
            images = [load_rgb(p) for p in folder.paths[start : start + batch_size]]
            if loaded.transform is not None:  # open_clip: a torchvision transform
                x = torch.stack([loaded.transform(im) for im in images]).to(loaded.device)
                feats = loaded.model.encode_image(x)
            else:
                inputs = loaded.image_processor(images=images, return_tensors="pt")
                feats = loaded.model.get_image_features(pixel_values=inputs["pixel_values"].to(loaded.device))
                feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
            rows.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
    return np.concatenate(rows)


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, cs: list[float], seed: int, max_iter: int) -> tuple[Any, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    base = LogisticRegression(max_iter=max_iter, random_state=seed)
    if len(cs) == 1:
        return base.set_params(C=cs[0]).fit(x_train, y_train), cs[0]
    folds = max(2, min(3, int(np.bincount(y_train).min())))
    search = GridSearchCV(base, {"C": cs}, scoring="f1_macro",
                          cv=StratifiedKFold(folds, shuffle=True, random_state=seed)).fit(x_train, y_train)
    return search.best_estimator_, float(search.best_params_["C"])


def probe(args: argparse.Namespace) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, classification_report, f1_score
    from sklearn.model_selection import train_test_split

    from medlab.core.errors import MedlabError
    from medlab.core.registry import resolve_source

    seed_everything(args.seed)
    folder = scan_image_folder(args.data)
    if args.test_data:
        train_f, test_f = folder, scan_image_folder(args.test_data)
        if test_f.classes != folder.classes:
            raise SystemExit(f"test classes {test_f.classes} differ from training classes {folder.classes}")
    else:
        idx = list(range(len(folder.paths)))
        tr, te = train_test_split(idx, test_size=args.test_fraction, stratify=folder.targets, random_state=args.seed)
        train_f, test_f = folder.subset(sorted(tr)), folder.subset(sorted(te))
    y_train, y_test = np.asarray(train_f.targets), np.asarray(test_f.targets)
    cs = [float(c) for c in str(args.C).split(",")]
    classes = list(folder.classes)

    results: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for key in [k.strip() for k in args.models.split(",") if k.strip()]:
        try:
            x_train, x_test = embed(key, train_f, args.batch_size), embed(key, test_f, args.batch_size)
        except MedlabError as exc:  # e.g. CLIP weights not downloadable here: report PLIP alone
            log.warning("%s unavailable: %s", key, exc)
            missing[key] = str(exc)
            continue
        clf, c = fit_probe(x_train, y_train, cs, args.seed, args.max_iter)
        pred = clf.predict(x_test)
        per_class = classification_report(y_test, pred, labels=list(range(len(classes))), target_names=classes,
                                          output_dict=True, zero_division=0)
        results[key] = {
            "source": resolve_source(key).location,
            "embedding_dim": int(x_train.shape[1]),
            "C": c,
            "macro_f1": float(f1_score(y_test, pred, average="macro", zero_division=0)),
            "weighted_f1": float(f1_score(y_test, pred, average="weighted", zero_division=0)),
            "accuracy": float(accuracy_score(y_test, pred)),
            "per_class_f1": {name: float(per_class[name]["f1-score"]) for name in classes},
            "predictions": pred.tolist(),
        }
        log.info("%s: macro-F1 %.4f (C=%g)", key, results[key]["macro_f1"], c)
    if not results:
        raise SystemExit("no model could be loaded: " + "; ".join(f"{k}: {v}" for k, v in missing.items()))

    report = {
        "task": "linear_probe", "created": utc_now(), "data": str(folder.root),
        "test_data": str(test_f.root), "classes": classes, "n_train": int(y_train.size), "n_test": int(y_test.size),
        "y_test": y_test.tolist(), "test_ids": test_f.ids(), "results": results, "missing": missing,
    }
    out = args.out or default_report_dir("plip", resolve_source("plip").location)
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = write_plot(report, out)
    write_json(out / "evaluation.json", report)
    (out / "model_card.md").write_text(card_section(report), encoding="utf-8")
    log.info("report -> %s", out)
    return report


def write_plot(report: dict[str, Any], out: Path) -> list[str]:
    plt = pyplot()
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for old in plots.glob("linear_probe*.png"):
        old.unlink()
    classes = report["classes"]
    keys = list(report["results"])
    fig, ax = plt.subplots(figsize=(max(5, 1.0 * len(classes) + 3), 3.8))
    width = 0.8 / len(keys)
    x = np.arange(len(classes) + 1)
    for k, key in enumerate(keys):
        r = report["results"][key]
        vals = [r["per_class_f1"][c] for c in classes] + [r["macro_f1"]]
        ax.bar(x + k * width, vals, width, label=f"{key} (macro-F1 {r['macro_f1']:.3f})")
    ax.set_xticks(x + width * (len(keys) - 1) / 2)
    ax.set_xticklabels(classes + ["macro"], rotation=30, ha="right", fontsize=7)
    ax.set(ylim=(0, 1.05), ylabel="F1 on the test split", title="Linear probe: PLIP vs CLIP image embeddings")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plots / "linear_probe_f1.png", dpi=110)
    plt.close(fig)
    return ["linear_probe_f1.png"]


def card_section(report: dict[str, Any]) -> str:
    rows = [[key, r["source"], r["macro_f1"], r["weighted_f1"], r["accuracy"], r["C"]] for key, r in report["results"].items()]
    lines = [
        "### Linear-probe report",
        "",
        f"Logistic regression on L2-normalised image embeddings, {report['n_train']} training / {report['n_test']} "
        f"test images, {len(report['classes'])} classes (`python -m training.plip_linear_probe`, {report['created'][:10]}).",
        "",
        md_table(["model", "weights", "macro-F1", "weighted F1", "accuracy", "C"], rows),
    ]
    for key, why in report["missing"].items():
        lines += ["", f"_{key} was not probed: {why}_"]
    lines += ["", "_Document 004 reports PLIP above CLIP on linear probing of four pathology datasets (e.g. Kather colon)._"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    probe(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
