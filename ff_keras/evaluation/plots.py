"""matplotlib figures of the evaluation report (Agg backend, PNG files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_confusion(cm: Sequence[Sequence[int]], classes: Sequence[str], title: str, path: Path) -> Path:
    """Row-normalised confusion matrix (recall per true class), classes in schema order."""
    cm = np.asarray(cm, float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = 1.0 + 0.55 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                f"{norm[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_groups(groups: dict[str, dict], title: str, path: Path) -> Path:
    """Per-group accuracy bars with 95 % CI whiskers, one panel per grouping."""
    names = [g for g in groups if groups[g]["groups"]]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, grouping in zip(axes[0], names):
        rows = groups[grouping]["groups"]
        acc = np.array([r["accuracy"] for r in rows])
        ci = np.array([r["ci"] for r in rows], float)
        err = np.nan_to_num(np.abs(ci.T - acc))
        ax.bar(range(len(rows)), acc, yerr=err, capsize=2, color="tab:blue")
        ax.set_xticks(
            range(len(rows)), [f"{r['group']} ({r['n']})" for r in rows], rotation=70, ha="right", fontsize=7
        )
        ax.set(ylim=(0, 1), title=grouping, ylabel="accuracy")
    fig.suptitle(title)
    return _save(fig, path)


def plot_reliability(summary: dict, title: str, path: Path) -> Path:
    """Reliability diagram before and after temperature scaling."""
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    for key, label in (
        ("reliability_before", "T=1"),
        ("reliability_after", f"T={summary['temperature']:.2f}"),
    ):
        r = summary[key]
        used = np.asarray(r["count"]) > 0
        ax.plot(np.asarray(r["confidence"])[used], np.asarray(r["accuracy"])[used], "o-", label=label)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title)
    ax.legend(loc="upper left")
    return _save(fig, path)
