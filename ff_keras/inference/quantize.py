"""Optional INT8 ONNX (onnxruntime.quantization) and what it costs (``compare_int8``, ``scripts/export.py --int8``).

Static quantisation calibrates activation ranges on real face crops (a ``CalibrationDataReader``
over the same input contract as serving); dynamic quantisation needs no data but quantises
activations per call, which helps MatMul-heavy models more than convolutional ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from ff_keras import labels
from ff_keras.inference.predictor import OnnxPredictor, argmax_agreement, load_images
from ff_keras.inference.throughput import images_per_second
from ff_keras.model_info import load_info

MODES = ("static", "dynamic")


class FaceCalibrationReader(CalibrationDataReader):
    """Feeds ``image`` batches of real faces to the static quantiser."""

    def __init__(self, images: np.ndarray, batch_size: int = 16):
        self._batches: Iterator[np.ndarray] = iter(
            [images[i : i + batch_size].astype(np.float32) for i in range(0, len(images), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"image": batch}


def quantize_onnx(
    src: str | Path, dst: str | Path, mode: str = "static", calib_images: np.ndarray | None = None
) -> Path:
    """Writes an INT8 copy of ``src`` to ``dst`` (per-channel QDQ weights for static mode)."""
    if mode not in MODES:
        raise ValueError(f"unknown quantisation mode {mode!r}; expected one of {MODES}")
    dst = Path(dst)
    if mode == "dynamic":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return dst
    if calib_images is None or len(calib_images) == 0:
        raise ValueError("static quantisation needs calibration images (real faces)")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Shape inference + graph optimisation first, as ORT recommends for static QDQ.
    prepped = dst.with_suffix(".prep.onnx")
    quant_pre_process(str(src), str(prepped))
    reader = FaceCalibrationReader(calib_images)
    quantize_static(
        str(prepped), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )
    prepped.unlink()
    return dst


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
