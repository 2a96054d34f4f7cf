"""What INT8 costs in accuracy and gains in speed and size (``scripts/export.py --int8``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ff_keras import labels
from ff_keras.inference.predictor import OnnxPredictor, argmax_agreement, load_images
from ff_keras.model_info import load_info
from studies.throughput import images_per_second


def compare_int8(
    fp32_path: str | Path, int8_path: str | Path, table: pd.DataFrame, data_root: Path, threads: int | None = None
) -> dict:
    """Argmax agreement, accuracy per head (where the table has labels) and speed-up of INT8.

    ``table`` has ``rel_path`` plus label columns named like the heads (``gender``, ``race``) or
    ``age_bin`` for ``age``; rows whose source does not label a head (``labels.SOURCE_HEADS``,
    e.g. UTKFace for ``race``) are left out of that head.
    """
    info = replace(load_info(fp32_path), outputs="probabilities")
    fp32 = OnnxPredictor(fp32_path, info, threads)
    int8 = OnnxPredictor(int8_path, info, threads)
    images = load_images([Path(data_root) / p for p in table["rel_path"]], info.image_size)
    p32, p8 = fp32.predict(images), int8.predict(images)
    report: dict = {"n_images": len(images), "argmax_agreement": argmax_agreement(p32, p8, info.heads)}
    accuracy = {}
    for head in info.heads:
        column = labels.label_column(head)
        if column not in table:
            continue
        names = info.classes[head]
        truth = table[column].map({n: i for i, n in enumerate(names)})
        known = truth.notna().to_numpy().copy()
        if "source" in table:  # UTKFace's "White" is a race_utk label, not a FairFace race one
            known &= labels.labelled_mask(table, head)
        if known.any():
            y = truth[known].astype(int).to_numpy()
            accuracy[head] = {
                "fp32": float(np.mean(p32[head][known].argmax(-1) == y)),
                "int8": float(np.mean(p8[head][known].argmax(-1) == y)),
                "n": int(known.sum()),
            }
            accuracy[head]["change"] = accuracy[head]["int8"] - accuracy[head]["fp32"]
    report["accuracy"] = accuracy
    report["speed"] = {}
    for batch in (1, 32):
        a, b = images_per_second(fp32, images, batch), images_per_second(int8, images, batch)
        report["speed"][f"batch{batch}"] = {"fp32_img_s": a, "int8_img_s": b, "speedup": b / a}
    report["size_mb"] = {
        "fp32": Path(fp32_path).stat().st_size / 1e6,
        "int8": Path(int8_path).stat().st_size / 1e6,
    }
    return report
