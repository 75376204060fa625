"""medlab.vision.evaluation: the report's numbers equal scikit-learn's, and the documents' own rules
(threshold, severity, defer table, calibration) reproduce hand-checked cases."""

from __future__ import annotations

import numpy as np
import pytest

from medlab.vision import evaluation as ev


def _random_predictions(n: int = 300, c: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += 1.2  # informative but imperfect
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p


def test_report_matches_sklearn_on_the_same_predictions() -> None:
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        cohen_kappa_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )
    from sklearn.preprocessing import label_binarize

    labels = ["benign", "malignant", "normal"]
    y, p = _random_predictions()
    pred = p.argmax(1)
    rep = ev.evaluate_predictions(y, p, labels, positive_label="malignant")

    assert rep["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert rep["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert rep["kappa_quadratic"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"))
    onehot = label_binarize(y, classes=[0, 1, 2])
    assert rep["micro_auc"] == pytest.approx(roc_auc_score(onehot, p, average="micro"))
    assert rep["micro_ap"] == pytest.approx(average_precision_score(onehot, p, average="micro"))
    cm = confusion_matrix(y, pred)
    assert rep["confusion_matrix"] == cm.tolist()
    np.testing.assert_allclose(rep["confusion_matrix_normalized"], cm / cm.sum(axis=1, keepdims=True))
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred)
    for i, name in enumerate(labels):
        row = rep["per_class"][name]
        assert row["precision"] == pytest.approx(prec[i]) and row["ppv"] == pytest.approx(prec[i])
        assert row["recall"] == pytest.approx(rec[i]) and row["sensitivity"] == pytest.approx(rec[i])
        assert row["f1"] == pytest.approx(f1[i]) and row["support"] == sup[i]
        assert row["auc"] == pytest.approx(roc_auc_score(y == i, p[:, i]))
        assert row["ap"] == pytest.approx(average_precision_score(y == i, p[:, i]))
        # specificity / NPV from the raw confusion matrix, by hand
        tp = cm[i, i]
        fp = cm[:, i].sum() - tp
        fn = cm[i, :].sum() - tp
        tn = cm.sum() - tp - fp - fn
        assert row["specificity"] == pytest.approx(tn / (tn + fp))
        assert row["npv"] == pytest.approx(tn / (tn + fn))
    assert rep["positive_detection_rate"] == pytest.approx(rec[1])
    missed = rep["missed_positive_breakdown"]
    assert missed == {"benign": int(cm[1, 0]), "normal": int(cm[1, 2])}
    # the threshold block is there for the positive class and follows the app contract
    bt = rep["binary_threshold"]
    assert set(bt) >= {"threshold", "tpr", "fpr", "rule"} and bt["positive_label"] == "malignant"
    assert 0 < bt["threshold"] < 1


def test_threshold_rule_hand_checked() -> None:
    # negatives / positives chosen so the ROC table can be worked out by hand:
    #  t=0.95 FNR .8 FPR 0 -> .7 | t=0.9 -> .5 | t=0.8 -> .3 | t=0.7 FNR .4 FPR .2 -> .2
    #  t=0.6 FNR .2 FPR .2 -> 0   <- best | t=0.4 FNR .2 FPR .4 -> .2 | t=0.35 FNR 0 FPR .4 -> .4
    neg = [0.1, 0.2, 0.3, 0.4, 0.7]
    pos = [0.35, 0.6, 0.8, 0.9, 0.95]
    got = ev.tune_binary_threshold([0] * 5 + [1] * 5, neg + pos)
    assert got["threshold"] == pytest.approx(0.6)
    assert got["tpr"] == pytest.approx(0.8) and got["fpr"] == pytest.approx(0.2)
    assert got["objective"] == pytest.approx(0.0)


def test_threshold_rule_uses_the_fpr_floor() -> None:
    # With FPR = 0 the rule aims for FNR = 0.1 (the floor), not FNR = FPR = 0:
    # t=0.6 gives FNR 0.1, FPR 0 -> |0.1 - max(0, 0.1)| = 0.
    neg = [0.05, 0.1, 0.15, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55]
    pos = [0.2, 0.6, 0.62, 0.64, 0.66, 0.7, 0.75, 0.8, 0.85, 0.9]
    got = ev.tune_binary_threshold([0] * 10 + [1] * 10, neg + pos)
    assert got["threshold"] == pytest.approx(0.6)
    assert (got["tpr"], got["fpr"]) == (pytest.approx(0.9), pytest.approx(0.0))
    # without the floor (floor 0) the same data prefers a different operating point
    assert ev.tune_binary_threshold([0] * 10 + [1] * 10, neg + pos, fpr_floor=0.0)["objective"] == pytest.approx(0.1)


def test_threshold_rule_needs_both_classes() -> None:
    with pytest.raises(ValueError):
        ev.tune_binary_threshold([1, 1, 1], [0.2, 0.5, 0.9])


def test_severity_weighted_error_doubles_missed_positives() -> None:
    y = [1, 1, 0, 2, 0]
    pred = [0, 1, 1, 2, 2]  # one missed malignant (cost 2), two other errors (1 each)
    assert ev.severity_weighted_error(y, pred, positive=1) == pytest.approx((2 + 1 + 1) / 5)
    assert ev.severity_weighted_error(y, pred, positive=None) == pytest.approx(3 / 5)


def test_defer_table_hand_checked() -> None:
    p = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.6, 0.3, 0.1], [0.2, 0.75, 0.05], [0.34, 0.33, 0.33]])
    y = [0, 1, 0, 0, 0]  # row 1 wrong (conf .4), row 3 wrong (conf .75)
    rows = {r["scenario"]: r for r in ev.defer_table(y, p)}
    assert rows["screening"]["n_deferred"] == 0 and rows["screening"]["accuracy_on_rest"] == pytest.approx(3 / 5)
    assert rows["routine"]["n_deferred"] == 2 and rows["routine"]["accuracy_on_rest"] == pytest.approx(2 / 3)
    assert rows["high-risk confirmation"]["n_deferred"] == 3
    assert rows["high-risk confirmation"]["deferred_fraction"] == pytest.approx(0.6)
    assert rows["high-risk confirmation"]["accuracy_on_rest"] == pytest.approx(1 / 2)


def test_calibration_bins_and_ece_hand_checked() -> None:
    p = np.array([[0.95, 0.05], [0.92, 0.08], [0.55, 0.45], [0.45, 0.55]])
    y = [0, 1, 0, 0]  # bin (0.9,1]: conf .935 acc .5 ; bin (0.5,0.6]: conf .55 acc .5
    cal = ev.calibration_bins(y, p, n_bins=10)
    filled = [b for b in cal["bins"] if b["count"]]
    assert [b["count"] for b in filled] == [2, 2]
    assert filled[1]["confidence"] == pytest.approx(0.935) and filled[1]["accuracy"] == pytest.approx(0.5)
    assert cal["ece"] == pytest.approx(0.5 * abs(0.5 - 0.55) + 0.5 * abs(0.5 - 0.935))


def test_confidently_wrong_sorted_by_confidence() -> None:
    p = np.array([[0.1, 0.9], [0.85, 0.15], [0.6, 0.4], [0.97, 0.03]])
    y = [0, 1, 1, 1]
    rows = ev.confidently_wrong(y, p, ["benign", "malignant"], ids=["a", "b", "c", "d"])
    assert [r["id"] for r in rows] == ["d", "a", "b"]  # c is wrong but only 0.6 confident
    assert rows[0] == {"id": "d", "true": "malignant", "predicted": "benign", "confidence": pytest.approx(0.97)}


def test_merge_columns_sums_mapped_classes() -> None:
    p = np.array([[0.1, 0.2, 0.3, 0.4]])
    np.testing.assert_allclose(ev.merge_columns(p, [[0, 3], [1, 2]]), [[0.5, 0.5]])


def test_binary_task_defaults_to_second_class() -> None:
    y, p = _random_predictions(c=2, seed=3)
    rep = ev.evaluate_predictions(y, p, ["benign", "malignant"])
    assert rep["positive_label"] == "malignant" and "binary_threshold" in rep
