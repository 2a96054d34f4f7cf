"""Dataset face crops: which ones to sample, how to read them, and where the face sits in one.

FairFace's validation crops (``fairface/val/<i>.jpg``, 224 px dlib chips with padding 0.25)
are the real faces every parity check, benchmark and study uses; ``fairface_val_crops`` is
the one way to pick them. ``main_face_box`` is the one rule for the face inside a crop when
dlib's own pipeline needs a box: HOG misses ~25 % of tight dataset crops, so when it finds
nothing the central 2/3 of the crop (where a padding-0.25 chip puts the face) is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def fairface_val_crops(data_root: str | Path, n: int, seed: int | None = None) -> list[Path]:
    """``n`` FairFace validation crops: the first ``n`` (``1.jpg`` ...), or with ``seed`` a
    reproducible random draw of ``n`` distinct crops (in file order).

    Raises:
        FileNotFoundError: naming the missing crops (or the folder) under ``data_root``.
    """
    folder = Path(data_root) / "fairface" / "val"
    if seed is None:
        paths = [folder / f"{i}.jpg" for i in range(1, n + 1)]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"FairFace val crops missing under {data_root}: {missing[:3]}")
        return paths
    files = sorted(folder.glob("*.jpg"), key=lambda p: int(p.stem))
    if len(files) < n:
        raise FileNotFoundError(f"need {n} FairFace val crops under {data_root}, found {len(files)}")
    idx = np.random.default_rng(seed).choice(len(files), size=n, replace=False)
    return [files[i] for i in sorted(idx)]


def read_crops(paths: Sequence[str | Path], size: int | None = None) -> list[np.ndarray]:
    """uint8 RGB arrays of ``paths``; with ``size``, resized to ``size x size`` (PIL bilinear)."""
    out = []
    for p in paths:
        with Image.open(p) as im:
            rgb = im.convert("RGB")
            out.append(np.asarray(rgb.resize((size, size), Image.BILINEAR) if size else rgb))
    return out


def main_face_box(detector, rgb: np.ndarray):
    """The face of a dataset crop as a ``dlib.rectangle``, and whether HOG found it.

    ``detector`` is ``dlib.get_frontal_face_detector()``: its largest detection, else the
    central 2/3 of the crop.
    """
    import dlib

    h, w = rgb.shape[:2]
    dets = detector(rgb, 0)
    if len(dets):
        return max(dets, key=lambda r: r.width() * r.height()), True
    return dlib.rectangle(w // 6, h // 6, w - w // 6, h - h // 6), False
