"""A collection's composition (race, gender, age bin, race x gender) by three estimators.

* ``argmax``: the share of faces whose top label is the class. Biased whenever the model errs
  systematically (FairFace race: Latino faces are recalled at ~0.3, so their share is
  undercounted by about half).
* ``prob_sum``: the mean of the calibrated probabilities. Unbiased only when the probabilities
  are calibrated for the collection's own class mix.
* ``adjusted``: adjusted classify-and-count (Forman 2008): the argmax shares ``q`` are explained
  as ``q = M^T p`` with ``M[i, j] = P(predicted j | true i)`` measured on val
  (``annotate.confusion``, shipped in the sidecar) and solved for the composition ``p`` (least
  squares with ``p >= 0``, ``sum p = 1``). Unbiased as long as ``P(predicted | true)`` is the
  same in the collection as on val (prior shift only).

race x gender uses the product of the two heads' probabilities and, for ``adjusted``, the
Kronecker product of their confusion rates (errors of the two heads taken as independent given
the truth). CIs are percentile bootstraps over faces; the val matrix's own uncertainty is not
included, so the ``adjusted`` CIs are too narrow by that much.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.optimize import nnls

ESTIMATORS = ("argmax", "prob_sum", "adjusted")
JOINT = ("race", "gender")  # the pair reported jointly


def adjusted_shares(q: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Composition ``p`` with ``rates.T @ p`` closest to the predicted shares ``q``, ``p`` on the simplex."""
    k = len(q)
    weight = 1e3  # the sum-to-one row dominates the fit
    a = np.vstack([rates.T, weight * np.ones((1, k))])
    b = np.concatenate([q, [weight]])
    p, _ = nnls(a, b)
    return p / p.sum() if p.sum() > 0 else np.full(k, 1.0 / k)


def estimate(codes: np.ndarray, probs: np.ndarray, rates: np.ndarray | None) -> dict[str, np.ndarray]:
    """The three estimators on one sample: ``codes`` = argmax class [n], ``probs`` [n, k]."""
    k = probs.shape[1]
    q = np.bincount(codes, minlength=k) / max(len(codes), 1)
    out = {"argmax": q, "prob_sum": probs.mean(axis=0)}
    if rates is not None:
        out["adjusted"] = adjusted_shares(q, rates)
    return out


def composition(probs: np.ndarray, rates: np.ndarray | None, n_boot: int = 200, seed: int = 0,
                level: float = 0.95) -> dict[str, dict[str, np.ndarray]]:
    """Each estimator's shares with a percentile bootstrap CI over rows.

    Returns:
        {estimator: {"share": [k], "low": [k], "high": [k]}}.
    """
    probs = np.asarray(probs, np.float64)
    codes = probs.argmax(axis=1)
    point = estimate(codes, probs, rates)
    rng = np.random.default_rng(seed)
    boots: dict[str, list[np.ndarray]] = {e: [] for e in point}
    for _ in range(n_boot):
        idx = rng.integers(0, len(codes), len(codes))
        for e, v in estimate(codes[idx], probs[idx], rates).items():
            boots[e].append(v)
    alpha = (1 - level) / 2
    out = {}
    for e, share in point.items():
        b = np.array(boots[e]) if n_boot else np.array([share])
        out[e] = {"share": share, "low": np.quantile(b, alpha, axis=0), "high": np.quantile(b, 1 - alpha, axis=0)}
    return out


def joint_probs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n, ka * kb] probabilities of each (a, b) pair, a-major."""
    return (a[:, :, None] * b[:, None, :]).reshape(len(a), -1)


def audit_tables(probs: Mapping[str, np.ndarray], classes: Mapping[str, list[str]],
                 rates: Mapping[str, np.ndarray], n_boot: int = 200, seed: int = 0, level: float = 0.95) -> dict:
    """Composition per head (and race x gender) from face probabilities.

    Args:
        probs: {head: [n, k]} calibrated probabilities of the collection's faces.
        rates: {head: [k, k]} val confusion rates; a head without one gets no ``adjusted`` column.
    Returns:
        {grouping: {"classes": [...], "n": n, estimator: {"share", "low", "high"} as lists}}.
    """
    groups = {h: (probs[h], classes[h], rates.get(h)) for h in ("race", "gender", "age") if h in probs}
    if all(h in probs for h in JOINT):
        a, b = JOINT
        names = [f"{x} {y}" for x in classes[a] for y in classes[b]]
        joint_rates = np.kron(rates[a], rates[b]) if a in rates and b in rates else None
        groups[f"{a} x {b}"] = (joint_probs(probs[a], probs[b]), names, joint_rates)
    out = {}
    for name, (p, names, r) in groups.items():
        res = composition(p, r, n_boot, seed, level)
        out[name] = {"classes": list(names), "n": int(len(p)),
                     **{e: {k: v.tolist() for k, v in d.items()} for e, d in res.items()}}
    return out


def largest_error(shares: np.ndarray, truth: np.ndarray) -> float:
    """Largest absolute error across classes, in share points (0-1)."""
    return float(np.max(np.abs(np.asarray(shares) - np.asarray(truth))))
