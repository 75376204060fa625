"""Classifier evaluation math shared by training/evaluate_classifier.py, the app and tests.

Pure numpy + scikit-learn (no torch, no gradio, no plotting): every function takes integer
true labels and a (n, C) probability matrix and returns plain JSON-ready Python values.
scikit-learn computes everything it has a metric for; only the rules of the source documents
(document 000's threshold rule, document 001's severity-weighted error, defer table and
confidence bins) are written here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Document 000: pick the ROC threshold that minimises |FNR - max(FPR, 0.1)|.
THRESHOLD_RULE = "minimise |FNR - max(FPR, 0.1)| over the ROC thresholds (document 000)"
FPR_FLOOR = 0.1
MISSED_POSITIVE_COST = 2.0  # document 001: missing a malignant case costs twice any other error


def _check(y_true: Sequence[int] | np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"probs must be (n, C) with n={y.shape[0]}, got {p.shape}")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError("y_true holds a class index outside the probability columns")
    return y, p


def merge_columns(probs: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """Sum probability columns into groups (e.g. 7 HAM10000 classes -> benign/malignant)."""
    p = np.asarray(probs, dtype=np.float64)
    return np.stack([p[:, list(g)].sum(axis=1) for g in groups], axis=1)


# -- curves -----------------------------------------------------------------------------
def _one_vs_rest(y: np.ndarray, n_classes: int) -> np.ndarray:
    """One column per class, also for 2 classes (label_binarize gives one column there)."""
    from sklearn.preprocessing import label_binarize

    onehot = label_binarize(y, classes=list(range(n_classes)))
    if n_classes == 2 and onehot.shape[1] == 1:
        onehot = np.hstack([1 - onehot, onehot])
    return onehot


def roc_curves(y_true: Sequence[int], probs: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Per-class one-vs-rest ROC curves + micro average (fpr, tpr, auc)."""
    from sklearn.metrics import auc, roc_curve

    y, p = _check(y_true, probs)
    onehot = _one_vs_rest(y, p.shape[1])
    out: dict[str, Any] = {}
    for i, name in enumerate(labels):
        if onehot[:, i].min() == onehot[:, i].max():  # class absent (or alone): AUC undefined
            out[name] = None
            continue
        fpr, tpr, _ = roc_curve(onehot[:, i], p[:, i])
        out[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": float(auc(fpr, tpr))}
    fpr, tpr, _ = roc_curve(onehot.ravel(), p.ravel())
    out["micro"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": float(auc(fpr, tpr))}
    return out


def pr_curves(y_true: Sequence[int], probs: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Per-class precision-recall curves with average precision, plus micro average."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, p = _check(y_true, probs)
    onehot = _one_vs_rest(y, p.shape[1])
    out: dict[str, Any] = {}
    for i, name in enumerate(labels):
        if onehot[:, i].sum() == 0:
            out[name] = None
            continue
        prec, rec, _ = precision_recall_curve(onehot[:, i], p[:, i])
        out[name] = {
            "precision": prec.tolist(),
            "recall": rec.tolist(),
            "ap": float(average_precision_score(onehot[:, i], p[:, i])),
        }
    prec, rec, _ = precision_recall_curve(onehot.ravel(), p.ravel())
    out["micro"] = {
        "precision": prec.tolist(),
        "recall": rec.tolist(),
        "ap": float(average_precision_score(onehot, p, average="micro")),
    }
    return out


# -- per-class table ----------------------------------------------------------------------
def per_class_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision/recall/F1/support (sklearn) plus sensitivity, specificity, PPV and NPV from
    the one-vs-rest confusion matrices (sklearn's multilabel_confusion_matrix)."""
    from sklearn.metrics import (
        multilabel_confusion_matrix,
        precision_recall_fscore_support,
    )

    idx = list(range(len(labels)))
    prec, rec, f1, sup = precision_recall_fscore_support(y_true, y_pred, labels=idx, zero_division=0)
    mcm = multilabel_confusion_matrix(y_true, y_pred, labels=idx)
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(labels):
        (tn, fp), (fn, tp) = mcm[i]
        out[name] = {
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "f1": float(f1[i]),
            "support": int(sup[i]),
            "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp),
            "ppv": _ratio(tp, tp + fp),
            "npv": _ratio(tn, tn + fn),
            "tp": int(tp),
            "fp": int(fp),
            "fn": int(fn),
            "tn": int(tn),
        }
    return out


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def severity_weighted_error(
    y_true: Sequence[int], y_pred: Sequence[int], positive: int | None, missed_cost: float = MISSED_POSITIVE_COST
) -> float:
    """Mean cost per case: 0 when right, `missed_cost` when a positive (malignant) case is
    called anything else, 1 for every other error (document 001)."""
    y = np.asarray(y_true)
    yp = np.asarray(y_pred)
    wrong = y != yp
    cost = wrong.astype(np.float64)
    if positive is not None:
        cost[wrong & (y == positive)] = missed_cost
    return float(cost.mean()) if cost.size else 0.0


# -- document 000's threshold rule ---------------------------------------------------------------
def tune_binary_threshold(y_true_binary: Sequence[int], scores: Sequence[float], fpr_floor: float = FPR_FLOOR) -> dict[str, Any]:
    """Document 000's rule over sklearn's ROC thresholds: minimise |FNR - max(FPR, floor)|.

    Predicted positive when score >= threshold (sklearn's convention). Ties go to the first
    (highest) threshold. The infinite first ROC threshold (nothing positive) is skipped."""
    from sklearn.metrics import roc_curve

    y = np.asarray(y_true_binary, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.min() == y.max():
        raise ValueError("the threshold rule needs both positive and negative cases")
    fpr, tpr, thr = roc_curve(y, s)
    finite = np.isfinite(thr)
    fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]
    objective = np.abs((1.0 - tpr) - np.maximum(fpr, fpr_floor))
    best = int(np.argmin(objective))
    return {
        "threshold": float(thr[best]),
        "tpr": float(tpr[best]),
        "fpr": float(fpr[best]),
        "fnr": float(1.0 - tpr[best]),
        "objective": float(objective[best]),
        "rule": THRESHOLD_RULE,
    }


def binary_metrics_at(y_true_binary: Sequence[int], scores: Sequence[float], threshold: float) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    y = np.asarray(y_true_binary)
    pred = (np.asarray(scores) >= threshold).astype(np.int64)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
    }


# -- document 001's decision aids -----------------------------------------------------------------
def _defer_scenarios(scenarios: Mapping[str, float] | None) -> Mapping[str, float]:
    """Document 001's scenarios come from one place: the lung_ct spec (medlab.vision.lung_ct)."""
    if scenarios is not None:
        return scenarios
    from medlab.vision.lung_ct import scenarios as lung_scenarios

    return lung_scenarios()


def defer_table(
    y_true: Sequence[int], probs: np.ndarray, scenarios: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """Per scenario (default: document 001's, from the lung_ct spec): cases whose top
    probability is below the threshold are recommended for further examination; report how
    many and the accuracy on the cases kept."""
    y, p = _check(y_true, probs)
    scenarios = _defer_scenarios(scenarios)
    conf = p.max(axis=1)
    pred = p.argmax(axis=1)
    rows = []
    for name, thr in scenarios.items():
        keep = conf >= thr
        n_keep = int(keep.sum())
        rows.append(
            {
                "scenario": name,
                "threshold": float(thr),
                "n_deferred": int((~keep).sum()),
                "deferred_fraction": float((~keep).mean()) if y.size else 0.0,
                "accuracy_on_rest": float((pred[keep] == y[keep]).mean()) if n_keep else None,
            }
        )
    return rows


def calibration_bins(y_true: Sequence[int], probs: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Top-label confidence in equal-width bins: count, mean confidence, accuracy; plus the
    expected calibration error (count-weighted |accuracy - confidence|)."""
    y, p = _check(y_true, probs)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right-closed bins; confidence 0 falls in the first bin
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    bins = []
    ece = 0.0
    for b in range(n_bins):
        mask = which == b
        count = int(mask.sum())
        row: dict[str, Any] = {"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count}
        if count:
            row["confidence"] = float(conf[mask].mean())
            row["accuracy"] = float(correct[mask].mean())
            ece += count / y.size * abs(row["accuracy"] - row["confidence"])
        else:
            row["confidence"] = None
            row["accuracy"] = None
        bins.append(row)
    return {"bins": bins, "ece": float(ece), "n_bins": n_bins}


def confidently_wrong(
    y_true: Sequence[int],
    probs: np.ndarray,
    labels: Sequence[str],
    ids: Sequence[str] | None = None,
    min_confidence: float = 0.8,
    limit: int = 20,
) -> list[dict[str, Any]]:
    """Wrong predictions made with top probability >= min_confidence, most confident first."""
    y, p = _check(y_true, probs)
    conf = p.max(axis=1)
    pred = p.argmax(axis=1)
    idx = np.where((pred != y) & (conf >= min_confidence))[0]
    idx = idx[np.argsort(-conf[idx], kind="stable")][:limit]
    return [
        {
            "id": ids[i] if ids is not None else int(i),
            "true": labels[y[i]],
            "predicted": labels[pred[i]],
            "confidence": float(conf[i]),
        }
        for i in idx
    ]


# -- everything at once ------------------------------------------------------------------------
def evaluate_predictions(
    y_true: Sequence[int],
    probs: np.ndarray,
    labels: Sequence[str],
    positive_label: str | None = None,
    ids: Sequence[str] | None = None,
    scenarios: Mapping[str, float] | None = None,
    n_bins: int = 10,
    include_curves: bool = False,
) -> dict[str, Any]:
    """The full report of document 000 + 001 for one set of predictions.

    `positive_label` (e.g. "malignant") gets the tuned threshold, the detection rate and the
    2x cost in the severity-weighted error; a 2-class task without one uses its second class."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        cohen_kappa_score,
        confusion_matrix,
        f1_score,
    )

    y, p = _check(y_true, probs)
    labels = list(labels)
    if len(labels) != p.shape[1]:
        raise ValueError(f"{len(labels)} labels for {p.shape[1]} probability columns")
    pred = p.argmax(axis=1)
    idx = list(range(len(labels)))
    if positive_label is None and len(labels) == 2:
        positive_label = labels[1]
    pos = labels.index(positive_label) if positive_label in labels else None

    roc = roc_curves(y, p, labels)
    pr = pr_curves(y, p, labels)
    per_class = per_class_metrics(y, pred, labels)
    for name in labels:
        per_class[name]["auc"] = roc[name]["auc"] if roc[name] else None
        per_class[name]["ap"] = pr[name]["ap"] if pr[name] else None

    cm = confusion_matrix(y, pred, labels=idx)
    cm_norm = confusion_matrix(y, pred, labels=idx, normalize="true")
    report: dict[str, Any] = {
        "n": int(y.size),
        "labels": labels,
        "class_counts": {name: int((y == i).sum()) for i, name in enumerate(labels)},
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=idx, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, labels=idx, average="weighted", zero_division=0)),
        "micro_auc": roc["micro"]["auc"],
        "micro_ap": pr["micro"]["ap"],
        "kappa_quadratic": float(cohen_kappa_score(y, pred, labels=idx, weights="quadratic")),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalized": np.nan_to_num(cm_norm).tolist(),
        "positive_label": positive_label if pos is not None else None,
        "severity_weighted_error": severity_weighted_error(y, pred, pos),
        "severity_rule": f"error cost 1, a missed {positive_label or 'positive'} case costs {MISSED_POSITIVE_COST:g} "
                         "(document 001)",
        "defer": defer_table(y, p, scenarios),
        "calibration": calibration_bins(y, p, n_bins),
        "confidently_wrong": confidently_wrong(y, p, labels, ids),
    }
    if pos is not None:
        y_bin = (y == pos).astype(np.int64)
        missed = (y == pos) & (pred != pos)
        report["positive_detection_rate"] = per_class[labels[pos]]["recall"]
        report["missed_positive_breakdown"] = {
            labels[j]: int((missed & (pred == j)).sum()) for j in idx if j != pos
        }
        if 0 < y_bin.sum() < y_bin.size:
            scores = p[:, pos]
            tuned = tune_binary_threshold(y_bin, scores)
            tuned["positive_label"] = labels[pos]
            tuned["metrics_at_threshold"] = binary_metrics_at(y_bin, scores, tuned["threshold"])
            tuned["metrics_at_0.5"] = binary_metrics_at(y_bin, scores, 0.5)
            report["binary_threshold"] = tuned
    if include_curves:
        report["curves"] = {"roc": roc, "pr": pr}
    return report
