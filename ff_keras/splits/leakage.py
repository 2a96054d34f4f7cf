"""Leakage verification of a split manifest: nothing that identifies a photo or a person
crosses splits.

Checks, per pair of splits: pairs of images closer than the identity threshold (0 by
construction), dHash near-duplicates and byte-identical files (0), group ids spanning
splits (0). Since the first is true by construction, the near-pair *rate* at thresholds
above it is compared across splits with the rate within a split between different groups:
if the grouping missed an identity link, the cross-split rate would exceed it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np
import pandas as pd

from ff_keras.splits.grouping import GroupingParams, hamming_pairs
from ff_keras.splits.build import DEFAULT_FRACTIONS, SPLITS, strata

RATE_THRESHOLDS = (0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60)
# Pair categories of the rate table.
CATEGORIES = ("within_split_same_group", "within_split_other_group", "unrelated_other_gender", "all")


def pair_rate_counts(
    x: np.ndarray, split: np.ndarray, group: np.ndarray, gender: np.ndarray, thresholds: Sequence[float],
    block: int = 2048,
) -> dict[str, np.ndarray]:
    """Counts of pairs closer than each threshold, and pair totals, per pair category.

    Categories: each unordered split pair ``a|b`` (a != b), plus ``CATEGORIES``.

    Returns:
        {category: int64 array [len(thresholds) + 1]}: counts under each threshold, then the
        category's total number of pairs.
    """
    x = np.asarray(x, np.float64)
    thr = np.asarray(sorted(thresholds), np.float64)
    n, nt, ns = len(x), len(thr) + 1, len(SPLITS)
    sidx = pd.Categorical(split, categories=SPLITS).codes.astype(np.int64)
    if (sidx < 0).any():
        raise ValueError(f"unknown split name {split[np.argmax(sidx < 0)]!r}; expected {SPLITS}")
    g_codes = pd.factorize(np.asarray(gender))[0]
    sq = (x * x).sum(1)
    # code = ((split_a * ns + split_b) * 2 + same_group) * 2 + other_gender, then x nt bins.
    hist = np.zeros(ns * ns * 4 * nt, np.int64)
    for a in range(0, n, block):
        for b in range(a, n, block):
            d2 = sq[a : a + block, None] + sq[None, b : b + block] - 2.0 * (x[a : a + block] @ x[b : b + block].T)
            bins = np.searchsorted(thr * thr, d2, side="right")
            code = (sidx[a : a + block, None] * ns + sidx[None, b : b + block]) * 4
            code = code + 2 * (group[a : a + block, None] == group[None, b : b + block])
            code = code + (g_codes[a : a + block, None] != g_codes[None, b : b + block])
            flat = code * nt + bins
            if a == b:  # diagonal block: count each unordered pair once, never i == i
                flat = flat[np.triu_indices(len(flat), 1)]
            hist += np.bincount(flat.ravel(), minlength=len(hist))
    h = hist.reshape(ns, ns, 2, 2, nt)
    h = h + h.transpose(1, 0, 2, 3, 4) * (1 - np.eye(ns, dtype=np.int64))[:, :, None, None, None]

    def cum(v: np.ndarray) -> np.ndarray:  # bin counts -> (count under each threshold, total)
        return np.concatenate([np.cumsum(v)[:-1], [v.sum()]])

    out = {f"{SPLITS[p]}|{SPLITS[q]}": cum(h[p, q].sum((0, 1))) for p, q in combinations(range(ns), 2)}
    diag = np.stack([h[p, p] for p in range(ns)]).sum(0)  # [same_group, other_gender, nt]
    out["within_split_same_group"] = cum(diag[1].sum(0))
    out["within_split_other_group"] = cum(diag[0].sum(0))
    upper = sum(h[p, q] for p in range(ns) for q in range(p, ns))
    out["unrelated_other_gender"] = cum(upper[:, 1].sum(0))
    out["all"] = cum(upper.sum((0, 1)))
    return out


def _cross_split_pairs(i: np.ndarray, j: np.ndarray, split: np.ndarray) -> dict[str, int]:
    out = {}
    for p, q in combinations(SPLITS, 2):
        out[f"{p}|{q}"] = int((((split[i] == p) & (split[j] == q)) | ((split[i] == q) & (split[j] == p))).sum())
    return out


def verify_leakage(
    manifest: pd.DataFrame,
    embeddings: Mapping[str, np.ndarray],
    params: GroupingParams,
    rate_thresholds: Sequence[float] = RATE_THRESHOLDS,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> dict:
    """Leakage checks of a manifest (module docstring).

    Args:
        manifest: rows with MANIFEST_COLUMNS (any sources, any order).
        embeddings: ``descriptor``, ``dhash``, ``sha256`` arrays aligned with ``manifest`` rows
            (e.g. ``identity.compute_embeddings(root, manifest.rel_path, cache)``).
        params: the identity threshold and dHash distance that must not be crossed; those
            of the committed manifests: ``GroupingParams(**json.load(open("reports/leakage.json"))["params"])``.
        rate_thresholds: distances at which near-pair rates are compared.

    Returns:
        JSON-ready dict; ``ok`` is True when every must-be-zero count is 0.
    """
    if params.identity_threshold is None:
        raise ValueError("verify_leakage needs the identity_threshold that was used (group_images reports it)")
    if "key" in embeddings and list(embeddings["key"]) != list(manifest["rel_path"]):
        raise ValueError("embeddings are not aligned with the manifest's rel_path order")
    split = manifest["split"].to_numpy().astype(str)
    group = manifest["group_id"].to_numpy()
    thresholds = sorted({params.identity_threshold, *rate_thresholds})
    counts = pair_rate_counts(embeddings["descriptor"], split, group, manifest["gender"].to_numpy(), thresholds)
    k_t = thresholds.index(params.identity_threshold)
    must_be_zero = _must_be_zero(manifest, embeddings, params, split, counts, k_t)
    zero = [v for d in must_be_zero.values() for v in (d.values() if isinstance(d, dict) else [d])]
    rates = {
        c: {f"{t:.2f}": float(v[k] / v[-1]) if v[-1] else None for k, t in enumerate(thresholds)}
        for c, v in counts.items()
    }
    return {
        "ok": not any(zero),
        "identity_threshold": params.identity_threshold,
        "dhash_bits": params.dhash_bits,
        "cross_split": must_be_zero,
        "near_pair_rates": rates,
        "pair_counts": {c: {"under": dict(zip([f"{t:.2f}" for t in thresholds], map(int, v[:-1]))), "pairs": int(v[-1])}
                        for c, v in counts.items()},
        "groups": _group_sizes(manifest),
        "split_sizes": {s: {src: int(n) for src, n in manifest.loc[split == s].groupby("source").size().items()}
                        for s in SPLITS},
        "strata": stratum_drift(manifest, fractions),
    }


def _must_be_zero(manifest: pd.DataFrame, embeddings: Mapping[str, np.ndarray], params: GroupingParams,
                  split: np.ndarray, counts: dict[str, np.ndarray], k_t: int) -> dict:
    """The counts that must be 0: identity pairs under t, dHash and exact copies across splits,
    groups spanning splits."""
    cross = [f"{p}|{q}" for p, q in combinations(SPLITS, 2)]
    hi, hj, _ = hamming_pairs(embeddings["dhash"], params.dhash_bits)
    spans = manifest.groupby("group_id")["split"].nunique()
    return {
        "identity_pairs": {c: int(counts[c][k_t]) for c in cross},
        "dhash_near_duplicates": _cross_split_pairs(hi, hj, split),
        "exact_duplicates": _cross_split_by_key(pd.Series(np.asarray(embeddings["sha256"])), split),
        "groups_spanning_splits": int((spans > 1).sum()),
    }


def _group_sizes(manifest: pd.DataFrame) -> dict:
    sizes = manifest.groupby("group_id").size()
    return {
        "n_groups": len(sizes),
        "largest": int(sizes.max()),
        "groups_size_gt1": int((sizes > 1).sum()),
        "images_in_groups_gt1": int(sizes[sizes > 1].sum()),
        "size_histogram": {str(k): int(v) for k, v in sizes.value_counts().sort_index().items()},
    }


def _cross_split_by_key(key: pd.Series, split: np.ndarray) -> dict[str, int]:
    """Pairs of rows with equal ``key`` in different splits, per split pair."""
    tab = pd.crosstab(key.to_numpy(), split).reindex(columns=list(SPLITS), fill_value=0)
    return {f"{p}|{q}": int((tab[p] * tab[q]).sum()) for p, q in combinations(SPLITS, 2)}


def stratum_drift(manifest: pd.DataFrame, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> dict:
    """Per-stratum split proportions and their drift from ``fractions``."""
    tab = pd.crosstab(strata(manifest), manifest["split"]).reindex(columns=list(SPLITS), fill_value=0)
    n = tab.sum(axis=1)
    prop = tab.div(n, axis=0)
    drift = (prop - np.asarray(fractions)).abs().max(axis=1)
    per_source = {}
    for src in sorted(manifest["source"].unique()):
        sel = tab.index.str.startswith(src + "|")
        rows = tab.loc[sel]
        per_source[src] = {
            "proportions": {s: float(rows[s].sum() / rows.to_numpy().sum()) for s in SPLITS},
            "max_drift_strata_ge_100": float(drift[sel & (n >= 100)].max()) if (sel & (n >= 100)).any() else None,
            "max_drift_all_strata": float(drift[sel].max()),
            "n_strata": int(sel.sum()),
        }
    table = {k: {"n": int(n[k]), **{s: int(tab.loc[k, s]) for s in SPLITS}, "max_drift": float(drift[k])}
             for k in tab.index}
    return {"per_source": per_source, "table": table}
