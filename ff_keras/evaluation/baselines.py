"""Published figures (``docs/baselines.json``) placed beside our measured metrics.

The JSON holds only quoted numbers with their sources; this module looks up which of our
measured values matches each one (same head, metric, group or merged classes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ff_keras.paths import REPO

BASELINES_PATH = REPO / "docs" / "baselines.json"


def load(path: str | Path = BASELINES_PATH) -> list[dict]:
    """The quoted rows; each must name a model, metric, value, source and our counterpart."""
    rows = json.loads(Path(path).read_text())["quoted"]
    for i, row in enumerate(rows):
        missing = [k for k in ("model", "metric", "value", "source", "ours", "comparable") if k not in row]
        if missing:
            raise ValueError(f"{path} quoted[{i}] ({row.get('model')}) lacks {missing}")
    return rows


def merged_accuracy(confusion: list[list[int]], classes: list[str], merge: list[list[str]]) -> float:
    """Accuracy after treating each listed set of classes as one (a hit inside a set counts)."""
    cm = np.asarray(confusion, float)
    label = {c: c for c in classes}
    for group in merge:
        unknown = [c for c in group if c not in label]
        if unknown:
            raise ValueError(f"cannot merge unknown classes {unknown}; classes are {classes}")
        label.update({c: "+".join(group) for c in group})
    same = np.array([[label[a] == label[b] for b in classes] for a in classes])
    return float(cm[same].sum() / cm.sum())


def our_value(metrics: dict, ours: dict) -> float | None:
    """Our measured value for a quoted row, or None if that table/head was not evaluated."""
    table = metrics.get("tables", {}).get(ours["table"])
    if table is None:
        return None
    head, metric = ours["head"], ours["metric"]
    if head == "age_years":
        return table.get("age_years", {}).get(metric)
    if head not in table["heads"]:
        return None
    if "group" in ours:
        grouping, name = ours["group"]
        rows = [r for r in table["groups"][grouping][head]["groups"] if r["group"] == name]
        return rows[0][metric] if rows else None
    if "merge" in ours:
        m = table["heads"][head]
        return merged_accuracy(m["confusion"], m["classes"], ours["merge"])
    return table["heads"][head].get(metric)


def compare(metrics: dict, path: str | Path = BASELINES_PATH) -> list[dict]:
    """Rows of the comparison table: quoted value, source, and our measured value."""
    return [
        {
            "model": r["model"],
            "metric": r["metric"],
            "value": r["value"],
            "kind": "quoted",
            "source": r["source"],
            "comparable": r["comparable"],
            "ours": our_value(metrics, r["ours"]),
            "ours_kind": "measured",
        }
        for r in load(path)
    ]
