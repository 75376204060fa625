"""One teaching run, end to end: data -> features -> head -> held-out evaluation (the same
medlab.vision.evaluation code as training/evaluate_classifier.py) -> a saved, not yet used,
Hugging Face folder. Plus MEDLAB_LUNG_DATASET: teach the lung model at first start."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlab.core.config import load_settings, model_env_var, resolve_device
from medlab.vision.teach import dataset as ds_mod
from medlab.vision.teach import export, features, report, taught
from medlab.vision.teach.head import fit_head

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


@dataclass
class TeachResult:
    model_id: str
    summary: dict[str, Any]  # the /teach_train JSON
    report: dict[str, Any]  # evaluation.evaluate_predictions on the held-out images
    markdown: str
    figure: Path
    gallery: list[tuple[Any, str]] = field(default_factory=list)


def _span(progress: Progress, lo: float, hi: float) -> Progress:
    return lambda f, m: progress(lo + (hi - lo) * max(0.0, min(1.0, f)), m)


def positive_class(classes: list[str]) -> str | None:
    """The class the lung / skin label maps call malignant (threshold rule, 2x missed cost)."""
    from medlab.core.registry import get_spec
    from medlab.vision.classify import normalise_label

    for key in ("lung_ct", "skin"):
        table = {normalise_label(k): v for k, v in get_spec(key).label_map.items()}
        for c in classes:
            if table.get(normalise_label(c)) == "malignant":
                return c
    return None


def teach(
    source: str | Path,
    groups_csv: str | Path | None = None,
    backbone: str = features.DEFAULT_BACKBONE,
    test_fraction: float = 0.2,
    seed: int = 0,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    max_images: int | None = None,
    cam_examples: int = 8,
) -> TeachResult:
    progress = progress or (lambda f, m: None)
    if not 0.05 <= float(test_fraction) <= 0.5:
        raise ds_mod.TeachDataError("The held-out fraction must be between 0.05 and 0.5.")
    bb = features.get_backbone(backbone)
    taught.models_dir().mkdir(parents=True, exist_ok=True)
    taught.clean_partials()
    with ds_mod.work_dir() as tmp:
        progress(0.0, "Reading the images")
        folder, name = ds_mod.materialise(source, Path(tmp))
        data = ds_mod.scan(folder, name, ds_mod.read_groups(groups_csv), max_images)
        progress(0.04, f"{len(data.items)} images in {len(data.classes)} classes; loading {bb.title}")
        timm_model, cfg = features.build_backbone(bb, len(data.classes))
        transform = features.eval_transform(cfg)
        device = resolve_device()
        feats = features.extract(timm_model, transform, [it.path for it in data.items], device,
                                 progress=_span(progress, 0.05, 0.85), cancel=cancel)
        for i, reason in feats.skipped:
            data.skip("corrupt or unreadable image", data.items[i].rel)
            log.info("teach: skipped %s: %s", data.items[i].rel, reason)
        data.items = [data.items[i] for i in feats.kept]
        ds_mod.check_class_sizes(data)
        x = feats.matrix
        y = np.array([it.label for it in data.items])
        train, test = ds_mod.grouped_split(y, [it.group for it in data.items], test_fraction, seed)
        checks = ds_mod.split_report(data, train, test)
        progress(0.87, f"Fitting the head on {len(train)} images")
        head = fit_head(x[train], y[train], len(data.classes), seed=seed)
        probs = head.predict_proba(x[test])

        from medlab.vision.evaluation import evaluate_predictions

        ev = evaluate_predictions(y[test], probs, data.classes, positive_label=positive_class(data.classes),
                                  ids=[data.items[i].rel for i in test], include_curves=True)
        model_id = taught.new_model_id()
        summary = _summary(model_id, data, train, test, ev, checks, feats, bb)
        notes = list(data.notes) + _notes(data, checks)
        hf_model = export.to_hf_model(timm_model, cfg, bb, data.classes, head).to(device)
        staging = taught.staging_dir(model_id)
        try:
            progress(0.9, "Grad-CAM on held-out images")
            gallery = _gallery(hf_model, cfg, data, test, probs, cam_examples)
            if cancel is not None and cancel.is_set():
                raise features.TeachCancelled("Teaching was cancelled; nothing was saved.")
            progress(0.96, "Saving the model")
            meta = dict(summary, n_duplicate_groups=len(data.duplicates), n_skipped=summary["skipped"]["total"],
                        grouped=data.grouped, backbone_title=bb.title)
            export.save(hf_model.cpu(), staging, meta, ev)
            splits = {"train": [data.items[i].rel for i in train], "test": [data.items[i].rel for i in test],
                      "groups": {data.items[i].rel: data.items[i].group for i in range(len(data.items))}}
            (staging / "splits.json").write_text(json.dumps(splits, indent=1), encoding="utf-8")
            (staging / "model_card.md").write_text(export.card(meta).split("---\n", 2)[-1], encoding="utf-8")
            fig = report.figure(ev, staging / "plots" / "evaluation.png")
            final = taught.commit(staging, model_id)
        except BaseException:
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
            raise
    progress(1.0, f"Taught {model_id}")
    return TeachResult(model_id, summary, ev, report.markdown(summary, ev, notes),
                       final / "plots" / fig.name, gallery)


def _summary(model_id: str, data: ds_mod.TeachSet, train: np.ndarray, test: np.ndarray, ev: dict[str, Any],
             checks: dict[str, Any], feats: features.Features, bb: features.Backbone) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "source": data.source,
        "classes": data.classes,
        "class_counts": data.counts(),
        "n_images": len(data.items),
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "held_out_accuracy": ev["accuracy"],
        "per_class_recall": {c: ev["per_class"][c]["recall"] for c in data.classes},
        "split": "grouped" if data.grouped else "by image (no groups)",
        "split_checks": checks,
        "duplicates": data.duplicates,
        "skipped": {"total": sum(len(v) for v in data.skipped.values()),
                    **{k: len(v) for k, v in data.skipped.items()}},
        "input_sizes": feats.sizes,
        "backbone": bb.key,
        "feature_seconds": round(feats.seconds, 2),
        "feature_cpu_seconds": round(feats.cpu_seconds, 2),
        "images_per_second": round(len(feats.kept) / feats.seconds, 2) if feats.seconds else None,
        "validated": False,
    }


def _notes(data: ds_mod.TeachSet, checks: dict[str, Any]) -> list[str]:
    notes = []
    if data.duplicates:
        notes.append(f"{len(data.duplicates)} set(s) of identical files found by content hash; copies in one "
                     "class were kept once, copies in two classes were dropped (see `duplicates`).")
    if data.skipped:
        notes.append("Skipped: " + "; ".join(f"{len(v)} {k}" for k, v in data.skipped.items()) + ".")
    if checks["groups_on_both_sides"] and data.grouped:
        notes.append(f"{len(checks['groups_on_both_sides'])} group(s) on both sides of the split (should be none).")
    if checks["test_classes_missing"]:
        notes.append("No held-out image of " + ", ".join(checks["test_classes_missing"]) + ": add more images.")
    return notes


def _gallery(model: Any, cfg: dict[str, Any], data: ds_mod.TeachSet, test: np.ndarray, probs: np.ndarray,
             limit: int) -> list[tuple[Any, str]]:
    if limit <= 0:
        return []
    from transformers import TimmWrapperImageProcessor

    processor = TimmWrapperImageProcessor(pretrained_cfg=cfg)
    pred = probs.argmax(axis=1)
    order = sorted(range(len(test)), key=lambda k: (pred[k] == data.items[test[k]].label, k))[: limit * 2]
    cases = []
    for k in order:
        item = data.items[test[k]]
        image, _ = features.decode(item.path)
        cases.append((image, item.label, int(pred[k]), float(probs[k].max())))
    return report.cam_grid(model, processor, cases, data.classes, limit)


# -- MEDLAB_LUNG_DATASET: teach the lung model at first start -----------------------------------
_AUTO: dict[str, Any] = {"state": "idle", "message": ""}
_AUTO_LOCK = threading.Lock()


def autoteach_needed() -> bool:
    import os

    from medlab.core.registry import get_spec, taught_source

    settings = load_settings()
    return bool(settings.lung_dataset) and not os.environ.get(model_env_var("lung_ct"), "").strip() \
        and not get_spec("lung_ct").default_source and taught_source("lung_ct") is None


def autoteach_lung_in_background() -> bool:
    """Start (once per process) teaching MEDLAB_LUNG_DATASET as the lung model when no lung
    model is configured. Returns whether a run was started."""
    with _AUTO_LOCK:
        if _AUTO["state"] != "idle" or not autoteach_needed():
            return False
        _AUTO["state"] = "running"

    def run() -> None:
        try:
            result = teach(load_settings().lung_dataset or "",
                           progress=lambda f, m: _AUTO.update(message=f"{f:.0%} {m}"))
            taught.use(result.model_id, "lung_ct")
            _AUTO.update(state="done", message=f"taught {result.model_id} from MEDLAB_LUNG_DATASET")
        except Exception as exc:  # noqa: BLE001 - reported in the tab and the log, never crashes the app
            log.exception("teaching MEDLAB_LUNG_DATASET failed")
            _AUTO.update(state="failed", message=f"{type(exc).__name__}: {exc}")

    threading.Thread(target=run, name="medlab-autoteach-lung", daemon=True).start()
    return True


def autoteach_status() -> dict[str, Any]:
    return dict(_AUTO)
