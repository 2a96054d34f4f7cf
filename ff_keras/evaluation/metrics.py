"""Held-out metrics from arrays: per-head scores, fairness slices and bootstrap CIs.

Pure numpy / sklearn / fairlearn (no TF), so every number can be checked on hand-made
arrays. Point estimates come from sklearn and fairlearn's ``MetricFrame``; confidence
intervals come from one seeded matrix of bootstrap row indices that is shared by every
metric of a table, so a head's accuracy and its group gap are resampled together.
Bootstrap statistics are computed from per-resample confusion counts (big_vision's
"sum, then divide once"), which keeps 1,000 resamples vectorised.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, count
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

from ff_keras import labels

# Groupings of the fairness slices; "race_x_gender" is derived from two columns.
GROUPINGS: tuple[str, ...] = ("race", "gender", "race_x_gender", "age_bin")
_CHUNK = 128  # bootstrap resamples per vectorised block (bounds memory on big splits)


# === Bootstrap ===


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """Seeded ``(n_boot, n)`` row indices drawn with replacement; shared by a whole table."""
    if n <= 0:
        raise ValueError(f"cannot bootstrap an empty table (n={n})")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n), dtype=np.int32)


def _chunks(idx: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(idx), _CHUNK):
        yield idx[start : start + _CHUNK]


def boot_group_counts(codes: np.ndarray, values: np.ndarray, n_groups: int, idx: np.ndarray):
    """Per-resample ``(sum of values, count)`` per group code, each ``(B, G)``."""
    sums, counts = [], []
    for block in _chunks(idx):
        b = len(block)
        flat = (np.arange(b)[:, None] * n_groups + codes[block]).ravel()
        sums.append(
            np.bincount(flat, weights=values[block].ravel(), minlength=b * n_groups).reshape(b, n_groups)
        )
        counts.append(np.bincount(flat, minlength=b * n_groups).reshape(b, n_groups))
    return np.concatenate(sums), np.concatenate(counts)


def boot_confusions(y_true: np.ndarray, y_pred: np.ndarray, k: int, idx: np.ndarray) -> np.ndarray:
    """Per-resample confusion matrices ``(B, K, K)`` (rows = truth, columns = prediction)."""
    codes = y_true.astype(np.int64) * k + y_pred
    _, counts = boot_group_counts(codes, np.zeros(len(codes)), k * k, idx)
    return counts.reshape(len(idx), k, k)


def scores_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro-F1 from ``(..., K, K)`` counts.

    Matches sklearn's defaults: balanced accuracy averages recall over classes present in
    the truth; macro-F1 averages over classes present in the truth or the predictions.
    """
    cm = cm.astype(np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    true_n, pred_n = cm.sum(-1), cm.sum(-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(true_n > 0, tp / true_n, np.nan)
        f1 = np.where(true_n + pred_n > 0, 2 * tp / (true_n + pred_n), np.nan)
        return {
            "accuracy": tp.sum(-1) / cm.sum((-2, -1)),
            "balanced_accuracy": np.nanmean(recall, -1),
            "macro_f1": np.nanmean(f1, -1),
        }


def percentile_ci(samples: np.ndarray, point: float, level: float) -> list[float]:
    """Percentile interval of the bootstrap samples, widened to include ``point``.

    Percentile intervals of min / max-type statistics (worst group, max gap) are biased
    away from the point estimate, so the interval is stretched to contain it instead of
    reporting a CI that excludes the measured value.
    """
    s = samples[np.isfinite(samples)]
    if not len(s) or not np.isfinite(point):
        return [float("nan"), float("nan")]
    lo, hi = np.quantile(s, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(min(lo, point)), float(max(hi, point))]


# === Per-head metrics ===


def encode(table: pd.DataFrame, head: str) -> np.ndarray:
    """Class ids of ``head`` in schema order, read from the table's label column."""
    column = labels.label_column(head)
    rows = table["rel_path"].tolist() if "rel_path" in table else None
    return labels.LabelEncoder(head).fit(table[column], rows).transform(table[column], rows)


def head_metrics(y_true: np.ndarray, probs: np.ndarray, head: str, idx: np.ndarray, level: float) -> dict:
    """Accuracy, balanced accuracy, macro-F1 (age: + off-by-one) with CIs and the confusion matrix."""
    k = len(labels.HEAD_CLASSES[head])
    if probs.ndim != 2 or probs.shape != (len(y_true), k):
        raise ValueError(f"{head} probabilities have shape {probs.shape}; expected ({len(y_true)}, {k})")
    y_pred = probs.argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns when a class is absent from a small split
        out = {
            "n": len(y_true),
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro")),
        }
    boot = scores_from_confusion(boot_confusions(y_true, y_pred, k, idx))
    if head == "age":
        # Bins are ordinal: a neighbouring bin is a near miss, not an error like any other.
        near = (np.abs(y_pred - y_true) <= 1).astype(np.float64)
        out["off_by_one"] = float(near.mean())
        boot["off_by_one"] = np.concatenate([near[b].mean(1) for b in _chunks(idx)])
    out["ci"] = {name: percentile_ci(boot[name], out[name], level) for name in boot}
    out["classes"] = list(labels.HEAD_CLASSES[head])
    out["confusion"] = confusion_matrix(y_true, y_pred, labels=np.arange(k)).tolist()
    return out


def mae_metrics(years: np.ndarray, predicted: np.ndarray, idx: np.ndarray, level: float) -> dict:
    """Mean absolute error in years (rows with known age only) with its CI."""
    err = np.abs(np.asarray(predicted, np.float64).reshape(-1) - years)
    mae = float(err.mean())
    boot = np.concatenate([err[b].mean(1) for b in _chunks(idx)])
    return {"n": len(err), "mae": mae, "ci": {"mae": percentile_ci(boot, mae, level)}}


# === Fairness slices ===


def group_labels(table: pd.DataFrame, grouping: str) -> pd.Series:
    """The sensitive-feature column for a grouping (``race_x_gender`` joins two columns)."""
    if grouping == "race_x_gender":
        return (table["race"].astype(str) + " × " + table["gender"].astype(str)).rename(grouping)
    if grouping not in table:
        raise ValueError(f"unknown grouping {grouping!r}; known: {GROUPINGS}")
    return table[grouping].astype(str).rename(grouping)


_ORDER = {
    name: i
    for i, name in reversed(
        list(enumerate(labels.AGE_BINS + labels.GENDERS + labels.RACES + labels.UTK_RACES))
    )
}


def _schema_order(group: str) -> tuple:
    """Sort key: schema order (age bins in natural order), not alphabetical."""
    return tuple((_ORDER.get(part, len(_ORDER)), part) for part in str(group).split(" × "))


def group_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, groups: pd.Series, idx: np.ndarray, level: float, min_group_n: int
) -> dict:
    """Per-group accuracy with n, plus worst group, max gap and ratio, each with a CI.

    Worst / gap / ratio are taken over groups with at least ``min_group_n`` rows, so a
    three-image group cannot decide the headline gap; every group is still listed.
    """
    groups = groups.reset_index(drop=True)
    frame = MetricFrame(
        metrics={"accuracy": accuracy_score, "n": count},
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=groups,
    )
    by_group = frame.by_group
    names = sorted(by_group.index, key=_schema_order)
    codes = pd.Categorical(groups, categories=names).codes.astype(np.int64)
    correct = (y_true == y_pred).astype(np.float64)
    hits, counts = boot_group_counts(codes, correct, len(names), idx)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot_acc = np.where(counts > 0, hits / counts, np.nan)
    rows = [
        {
            "group": g,
            "n": int(by_group.loc[g, "n"]),
            "accuracy": float(by_group.loc[g, "accuracy"]),
            "ci": percentile_ci(boot_acc[:, i], float(by_group.loc[g, "accuracy"]), level),
        }
        for i, g in enumerate(names)
    ]
    eligible = [i for i, r in enumerate(rows) if r["n"] >= min_group_n]
    out = {"groups": rows, "min_group_n": min_group_n, "eligible": [names[i] for i in eligible]}
    if len(eligible) < 2:
        out["note"] = f"fewer than 2 groups with n >= {min_group_n}: no worst group, gap or ratio"
        return out
    keep = groups.isin([names[i] for i in eligible]).to_numpy()
    summary = MetricFrame(
        metrics=accuracy_score, y_true=y_true[keep], y_pred=y_pred[keep], sensitive_features=groups[keep]
    )
    sub = boot_acc[:, eligible]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample may miss a whole group
        lo, hi = np.nanmin(sub, 1), np.nanmax(sub, 1)
        boot_ratio = np.where(hi > 0, lo / hi, np.nan)
    worst = float(summary.group_min())
    gap, ratio = (
        float(summary.difference(method="between_groups")),
        float(summary.ratio(method="between_groups")),
    )
    out["worst"] = {
        "group": str(summary.by_group.idxmin()),
        "accuracy": worst,
        "ci": percentile_ci(lo, worst, level),
    }
    out["gap"] = {"value": gap, "ci": percentile_ci(hi - lo, gap, level)}
    out["ratio"] = {"value": ratio, "ci": percentile_ci(boot_ratio, ratio, level)}
    return out


# === One table ===


def evaluate_table(
    table: pd.DataFrame,
    probs: Mapping[str, np.ndarray],
    source: str,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    min_group_n: int = 20,
) -> dict:
    """All metrics for one source's rows (the heads that source labels and the model has).

    Args:
        table: canonical rows of one source (``datasets`` columns), in prediction order.
        probs: per-head probabilities ``(N, K)`` (``age_years``: predicted years ``(N,)``).
        source: ``fairface`` or ``utkface``; picks the labelled heads (``labels.SOURCE_HEADS``).
    Returns:
        ``{"n", "heads": {head: ...}, "age_years"?, "groups": {grouping: {head: ...}}, "skipped"}``.
    """
    if source not in labels.SOURCE_HEADS:
        raise ValueError(f"unknown source {source!r}; known: {sorted(labels.SOURCE_HEADS)}")
    for head, p in probs.items():
        if len(p) != len(table):
            raise ValueError(f"{head} has {len(p)} predictions for {len(table)} {source} rows")
    table = table.reset_index(drop=True)
    idx = bootstrap_indices(len(table), n_boot, seed)
    labelled = labels.SOURCE_HEADS[source]
    heads = [h for h in labelled if h in labels.HEAD_CLASSES and h in probs]
    out: dict = {
        "n": len(table),
        "heads": {},
        "groups": {g: {} for g in GROUPINGS},
        "skipped": [h for h in labelled if h not in probs],
    }
    for head in heads:
        y = encode(table, head)
        p = np.asarray(probs[head], np.float64)
        out["heads"][head] = head_metrics(y, p, head, idx, level)
        for grouping in GROUPINGS:
            out["groups"][grouping][head] = group_metrics(
                y, p.argmax(1), group_labels(table, grouping), idx, level, min_group_n
            )
    if "age_years" in labelled and "age_years" in probs:
        known = table["age_years"].notna().to_numpy()
        if known.any():
            sub_idx = bootstrap_indices(int(known.sum()), n_boot, seed)
            out["age_years"] = mae_metrics(
                table.loc[known, "age_years"].to_numpy(np.float64),
                np.asarray(probs["age_years"]).reshape(len(table), -1)[known, 0],
                sub_idx,
                level,
            )
    return out
