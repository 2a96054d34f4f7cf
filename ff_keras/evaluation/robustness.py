"""Crop-robustness benchmark: accuracy on face crops cut differently from FairFace's chips.

FairFace chips are dlib alignments with padding 0.25 (the face box spans 1 / 1.5 of the
side). Services and other aligners crop tighter, looser, non-square, smaller or more
compressed; each variant below re-cuts a chip that way, and the model sees the result
through the same resize policy as every other input (``predictor.prepare_face``).
Variants are data (name -> parameters), so a new one is one line.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ff_keras import labels
from ff_keras.evaluation.metrics import encode

FAIRFACE_PADDING = 0.25
CROP_VARIANTS: dict[str, dict[str, float]] = {
    "standard": {},
    "central_90": {"central": 0.90},
    "central_75": {"central": 0.75},
    "central_60": {"central": 0.60},
    "padding_0.4": {"padding": 0.40},
    "aspect_0.8": {"aspect": 0.8},
    "aspect_1.25": {"aspect": 1.25},
    "lowres_64": {"lowres": 64},
    "lowres_48": {"lowres": 48},
    "jpeg_30": {"jpeg_quality": 30},
}
# Largest allowed drop from the standard crop, per head (accuracy points as fractions).
TOLERANCE = {"gender": 0.02, "race": 0.04}


def apply_variant(image: Image.Image, variant: Mapping[str, float]) -> Image.Image:
    """Re-cuts an RGB face chip as ``variant`` says.

    * ``central`` f: the central f x f of the chip (a tighter crop);
    * ``padding`` p: zoom out to padding p around the same face box, black border beyond the chip;
    * ``aspect`` a: the largest centred crop of width/height a, stretched back to a square;
    * ``lowres`` s: down to s x s pixels and back up (bilinear);
    * ``jpeg_quality`` q: re-encoded as JPEG at quality q.
    """
    img = image.convert("RGB")
    w, h = img.size
    unknown = set(variant) - {"central", "padding", "aspect", "lowres", "jpeg_quality"}
    if unknown:
        raise ValueError(f"unknown crop variant parameter(s) {sorted(unknown)}")
    if "central" in variant:
        f = float(variant["central"])
        if not 0 < f <= 1:
            raise ValueError(f"central fraction must be in (0, 1], got {f}")
        cw, ch = round(w * f), round(h * f)
        img = img.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))
    if "padding" in variant:
        scale = (1 + 2 * float(variant["padding"])) / (1 + 2 * FAIRFACE_PADDING)
        side_w, side_h = round(w * scale), round(h * scale)
        canvas = Image.new("RGB", (side_w, side_h))
        canvas.paste(img, ((side_w - w) // 2, (side_h - h) // 2))
        img = canvas
    if "aspect" in variant:
        a = float(variant["aspect"])
        cw, ch = (round(h * a), h) if a < 1 else (w, round(w / a))
        box = ((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)
        side = max(img.size)
        img = img.crop(box).resize((side, side), Image.BILINEAR)
    if "lowres" in variant:
        s = int(variant["lowres"])
        size = img.size
        img = img.resize((s, s), Image.BILINEAR).resize(size, Image.BILINEAR)
    if "jpeg_quality" in variant:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(variant["jpeg_quality"]))
        buf.seek(0)
        img = Image.open(buf).convert("RGB")
    return img


def variant_batches(
    root: Path, rel_paths: list[str], size: int, variants: Mapping[str, Mapping[str, float]], batch_size: int = 64
):
    """Yields ``(variant name, start row, float32 batch [B, size, size, 3])`` over every variant."""
    from ff_keras.inference.predictor import prepare_face

    for start in range(0, len(rel_paths), batch_size):
        chips = []
        for p in rel_paths[start : start + batch_size]:
            with Image.open(root / p) as im:
                chips.append(im.convert("RGB"))
        for name, params in variants.items():
            yield name, start, np.stack([prepare_face(apply_variant(c, params), size) for c in chips])


def evaluate_variants(
    predictor,
    table: pd.DataFrame,
    root: Path,
    variants: Mapping[str, Mapping[str, float]] = CROP_VARIANTS,
    batch_size: int = 64,
) -> dict:
    """Accuracy per head per variant on FairFace rows of ``table`` (race-7, gender, age-9).

    Returns:
        ``{"n": rows, "accuracy": {variant: {head: acc}}, "drop": {variant: {head: standard - acc}},
        "within_tolerance": {variant: bool}}``
    """
    rows = table.loc[table["source"] == "fairface"].reset_index(drop=True)
    if rows.empty:
        raise ValueError("the robustness benchmark needs FairFace rows (race-7 labels)")
    heads = [h for h in labels.CONTRACT_HEADS if h in predictor.heads]
    truth = {h: encode(rows, h) for h in heads}
    preds = {name: {h: np.empty(len(rows), np.int64) for h in heads} for name in variants}
    for name, start, x in variant_batches(root, rows["rel_path"].tolist(), predictor.info.image_size, variants,
                                          batch_size):
        probs = predictor.predict(x)
        for h in heads:
            preds[name][h][start : start + len(x)] = probs[h].argmax(1)
    acc = {name: {h: float((preds[name][h] == truth[h]).mean()) for h in heads} for name in variants}
    ref = acc.get("standard")
    out = {"n": len(rows), "accuracy": acc}
    if ref is not None:
        out["drop"] = {name: {h: ref[h] - a[h] for h in heads} for name, a in acc.items()}
        out["within_tolerance"] = {name: all(out["drop"][name][h] <= tol for h, tol in TOLERANCE.items() if h in heads)
                                   for name in variants}
    return out


def markdown_table(result: dict) -> str:
    """Accuracy per variant and head, with the drop from the standard crop in brackets."""
    heads = list(next(iter(result["accuracy"].values())))
    lines = ["| crop | " + " | ".join(heads) + " | within tolerance |", "|---" * (len(heads) + 2) + "|"]
    for name, acc in result["accuracy"].items():
        cells = [f"{acc[h]:.3f}" + (f" ({-result['drop'][name][h]:+.3f})" if name != "standard" else "") for h in heads]
        ok = result.get("within_tolerance", {}).get(name)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'yes' if ok else 'no'} |")
    return "\n".join(lines)
