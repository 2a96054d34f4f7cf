"""Per-head temperature scaling, expected calibration error and reliability-diagram data.

Works on probabilities because that is what every artifact (``.keras``, SavedModel, ONNX)
returns through the predictor: ``softmax(log p / T)`` equals ``softmax(z / T)`` for the
logits ``z`` behind ``p``, so fitting on log-probabilities is exact. The fitted
temperature is stored in the model's ``model_info.json`` and exports bake it in.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax

from ff_keras import model_info

_EPS = 1e-12


def _check(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, y = np.asarray(probs, np.float64), np.asarray(y).astype(np.int64)
    if probs.ndim != 2 or len(probs) != len(y):
        raise ValueError(f"probabilities {probs.shape} do not match {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= probs.shape[1]):
        raise ValueError(f"label ids must lie in [0, {probs.shape[1]}), got {y.min()}..{y.max()}")
    return probs, y


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Re-tempers probabilities: ``softmax(log p / T)``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logp = np.log(np.clip(np.asarray(probs, np.float64), _EPS, 1.0))
    return np.exp(log_softmax(logp / temperature, axis=1))


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    probs, y = _check(probs, y)
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], _EPS, 1.0)).mean())


def fit_temperature(probs: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature minimising validation NLL (L-BFGS-B on log T, a 1-D convex-ish problem)."""
    probs, y = _check(probs, y)
    logp = np.log(np.clip(probs, _EPS, 1.0))

    def loss(log_t: np.ndarray) -> float:
        return float(-log_softmax(logp / np.exp(log_t[0]), axis=1)[np.arange(len(y)), y].mean())

    res = minimize(loss, x0=np.zeros(1), method="L-BFGS-B", bounds=[tuple(np.log(bounds))])
    return float(np.exp(res.x[0]))


def reliability(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict[str, list]:
    """Top-label confidence vs accuracy in equal-width bins (the reliability diagram's data).

    A confidence of exactly ``k / n_bins`` falls in bin ``k - 1`` (bins are right-closed),
    as in Guo et al. (2017).
    """
    probs, y = _check(probs, y)
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        acc = np.bincount(bins, weights=(pred == y).astype(float), minlength=n_bins) / count
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / count
    return {
        "edges": edges.tolist(),
        "count": count.tolist(),
        "accuracy": np.nan_to_num(acc).tolist(),
        "confidence": np.nan_to_num(mean_conf).tolist(),
    }


def ece(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error: count-weighted mean |accuracy - confidence| over bins."""
    r = reliability(probs, y, n_bins)
    count = np.asarray(r["count"], float)
    if count.sum() == 0:
        raise ValueError("ECE of an empty set")
    gap = np.abs(np.asarray(r["accuracy"]) - np.asarray(r["confidence"]))
    return float((count * gap).sum() / count.sum())


def calibration_summary(probs: np.ndarray, y: np.ndarray, temperature: float, n_bins: int = 15) -> dict:
    """NLL and ECE before and after a temperature, plus both reliability diagrams."""
    after = apply_temperature(probs, temperature)
    return {
        "temperature": float(temperature),
        "nll_before": nll(probs, y),
        "nll_after": nll(after, y),
        "ece_before": ece(probs, y, n_bins),
        "ece_after": ece(after, y, n_bins),
        "reliability_before": reliability(probs, y, n_bins),
        "reliability_after": reliability(after, y, n_bins),
    }


def store_temperature(artifact: str | Path, temperatures: Mapping[str, float]) -> Path:
    """Writes per-head temperatures into the ``model_info.json`` beside ``artifact``."""
    info = model_info.load_info(artifact)
    unknown = [h for h in temperatures if h not in info.classes]
    if unknown:
        raise ValueError(f"temperature for unknown head(s) {unknown}; model heads: {sorted(info.classes)}")
    info.temperature = {**info.temperature, **{h: float(t) for h, t in temperatures.items()}}
    return model_info.save_info(info, model_info.info_path(artifact).parent)
