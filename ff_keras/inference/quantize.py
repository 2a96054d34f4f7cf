"""Optional INT8 ONNX (onnxruntime.quantization); ``scripts/studies/int8.py`` measures its cost.

Static quantisation calibrates activation ranges on real face crops (a ``CalibrationDataReader``
over the same input contract as serving); dynamic quantisation needs no data but quantises
activations per call, which helps MatMul-heavy models more than convolutional ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

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
