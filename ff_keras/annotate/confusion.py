"""The val confusion matrix per head, measured once and shipped in the model's sidecar.

Counting a classifier's top labels over a collection is biased whenever the classifier is
wrong in a systematic way (FairFace race: Latino faces are recalled at ~0.3 and land in other
classes). Adjusted classify-and-count (Forman 2008, ``annotate.audit``) undoes that bias with
``P(predicted | true)``, which has to come from labelled data the model was not trained on:
the val rows of the committed split. Storing the counts (not rates) in ``model_info.json``
keeps the sample size with them, and every release carries its own matrix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ff_keras import labels, model_info

# FairFace val rows of the committed split (splits/fairface.csv).
DEFAULT_SOURCES = ("fairface",)


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """int64 [k, k]: row = true class, column = predicted class."""
    return np.bincount(np.asarray(y_true) * k + np.asarray(y_pred), minlength=k * k).reshape(k, k)


def measure_val_confusion(
    model_path: str | Path,
    manifests_dir: str = "splits",
    sources: tuple[str, ...] = DEFAULT_SOURCES,
    split: str = "val",
    limit: int = 0,
    batch_size: int = 64,
) -> dict:
    """Predicts ``split`` rows with the model and returns the sidecar's ``val_confusion`` value."""
    from ff_keras.config import load_config
    from ff_keras.data.readers import resolve_data_root
    from ff_keras.evaluation import metrics
    from ff_keras.evaluation.run import load_rows, predict_rows
    from ff_keras.inference.predictor import load_predictor

    cfg = load_config(None, [f"data.manifests_dir={manifests_dir}", f"data.sources=[{','.join(sources)}]"])
    predictor = load_predictor(model_path, batch_size=batch_size)
    table = load_rows(cfg, split, limit)
    probs, _ = predict_rows(predictor, table, resolve_data_root(cfg.data.root), "none", batch_size)
    heads = {}
    for head in predictor.heads:
        if head not in labels.HEAD_CLASSES:
            continue
        rows = labels.labelled_mask(table, head)
        if rows.any():
            y = metrics.encode(table.loc[rows], head)
            cm = confusion_counts(y, probs[head][rows].argmax(-1), len(labels.HEAD_CLASSES[head]))
            heads[head] = cm.tolist()
    return {"split": split, "manifests": manifests_dir, "sources": list(sources), "rows": len(table),
            "heads": heads}


def store_val_confusion(model_path: str | Path, **kwargs) -> Path:
    """Measures the confusion (``measure_val_confusion`` arguments) and writes it into the
    ``model_info.json`` beside ``model_path``; returns the sidecar's path."""
    value = measure_val_confusion(model_path, **kwargs)
    info = model_info.load_info(model_path)
    info.val_confusion = value
    return model_info.save_info(info, model_info.info_path(model_path).parent)


def confusion_rates(info: model_info.ModelInfo, head: str) -> np.ndarray:
    """``P(predicted = j | true = i)`` [k, k] from the sidecar's counts.

    Raises:
        ValueError: when the sidecar has no val confusion for ``head`` (older models), naming the fix.
    """
    counts = info.val_confusion.get("heads", {}).get(head)
    if counts is None:
        raise ValueError(f"the model's {model_info.INFO_NAME} has no val confusion for {head!r}; run "
                         "`python scripts/audit.py --store-val-confusion --model MODEL` to measure and store it")
    cm = np.asarray(counts, dtype=np.float64)
    return cm / np.maximum(cm.sum(axis=1, keepdims=True), 1.0)
