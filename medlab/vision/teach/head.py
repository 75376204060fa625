"""The taught head: class-weighted multinomial logistic regression (scikit-learn) on
standardised backbone features, folded back into one linear layer (W, b) on the raw
features so it drops into the backbone's classifier slot unchanged."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LinearHead:
    weight: np.ndarray  # (C, D) float32
    bias: np.ndarray  # (C,) float32

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features.astype(np.float64) @ self.weight.T.astype(np.float64) + self.bias.astype(np.float64)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        z = self.logits(features)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def fit_head(features: np.ndarray, labels: np.ndarray, n_classes: int, c: float = 1.0, seed: int = 0) -> LinearHead:
    """Balanced class weights (a rare class counts as much as a common one, as document 001
    needs for IQ-OTH/NCCD's 120 benign images)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=3000, random_state=seed)
    clf.fit(scaler.transform(x), y)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    coef = clf.coef_ / scale  # (K, D) on raw features: w.(x - mu)/s = (w/s).x - (w/s).mu
    intercept = clf.intercept_ - coef @ scaler.mean_
    if coef.shape[0] == 1:  # binary: sigmoid(z) == softmax([-z/2, z/2])
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((n_classes, x.shape[1]))
    bias = np.full(n_classes, -1e4)  # a class absent from training can never win
    weight[clf.classes_] = coef
    bias[clf.classes_] = intercept
    return LinearHead(weight.astype(np.float32), bias.astype(np.float32))
