"""Measurements over composite photos: end-to-end speed per detector, and whether two
detectors' crops of the same face lead to the same predicted labels."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from studies.composite import Composite, make_composite, match_faces, quad_iou
from ff_keras.faces.detect import align, chip_quad, detect_faces


def make_photos(crops: Sequence[Path], faces_per_photo: tuple[int, int], seed: int = 0) -> list[Composite]:
    """Groups ``crops`` into composites of ``faces_per_photo`` (min, max) faces each."""
    rng = np.random.default_rng(seed)
    photos, i = [], 0
    while i < len(crops):
        k = int(rng.integers(faces_per_photo[0], faces_per_photo[1] + 1))
        photos.append(make_composite(crops[i : i + k], rng))
        i += k
    return photos


def _detect_all(photos: Sequence[Composite], detector: str, size: int, min_face: int):
    """Detect + align every photo; returns per-photo (faces, chips, matches) and timings."""
    out, t_det, t_align = [], 0.0, 0.0
    for photo in photos:
        t0 = time.perf_counter()
        faces = detect_faces(photo.image, detector, min_face)
        t1 = time.perf_counter()
        chips = [align(photo.image, f, size) for f in faces]
        t2 = time.perf_counter()
        t_det, t_align = t_det + t1 - t0, t_align + t2 - t1
        out.append((faces, chips, match_faces([chip_quad(f) for f in faces], photo.boxes)))
    return out, t_det, t_align


def benchmark(
    photos: Sequence[Composite], predictor, detectors: Sequence[str], min_face: int, batch_size: int = 32
) -> dict:
    """Photos/s and faces/s end to end, with the time split between detection, alignment and
    classification, plus recall/false positives against the pasted boxes, per detector."""
    size = predictor.info.image_size
    n_pasted = int(sum(len(p.boxes) for p in photos))
    results = {}
    for det in detectors:
        _detect_all(photos[:1], det, size, min_face)  # warm-up: model loading, TF tracing
        predictor.predict(np.zeros((1, size, size, 3), np.float32))
        per_photo, t_det, t_align = _detect_all(photos, det, size, min_face)
        chips = [c for _, cs, _ in per_photo for c in cs]
        t0 = time.perf_counter()
        for i in range(0, len(chips), batch_size):
            predictor.predict(np.stack(chips[i : i + batch_size]))
        t_cls = time.perf_counter() - t0
        total = t_det + t_align + t_cls
        matched = sum(len(m) for _, _, m in per_photo)
        results[det] = {
            "photos": len(photos),
            "faces_pasted": n_pasted,
            "faces_found": len(chips),
            "recall": matched / n_pasted,
            "false_positives": len(chips) - matched,
            "photos_per_s": len(photos) / total,
            "faces_per_s": len(chips) / total,
            "seconds": {"detection": t_det, "alignment": t_align, "classification": t_cls, "total": total},
            "share": {"detection": t_det / total, "alignment": t_align / total, "classification": t_cls / total},
        }
    return results


def detector_agreement(
    photos: Sequence[Composite], predictor, detectors: tuple[str, str], min_face: int, batch_size: int = 32
) -> dict:
    """On faces both detectors find, how often their crops give the same top label per head;
    also each detector's agreement with the original dataset crop and the crops' overlap."""
    from ff_keras.inference.predictor import load_images

    size = predictor.info.image_size
    a, b = detectors
    found = {d: _detect_all(photos, d, size, min_face)[0] for d in detectors}
    chips = {a: [], b: []}
    originals, iou_between, iou_orig = [], [], {a: [], b: []}
    for p, photo in enumerate(photos):
        by_box = {d: {j: (i, iou) for i, j, iou in found[d][p][2]} for d in detectors}
        for j in sorted(set(by_box[a]) & set(by_box[b])):
            quads = {}
            for d in detectors:
                i, iou = by_box[d][j]
                chips[d].append(found[d][p][1][i])
                iou_orig[d].append(iou)
                quads[d] = chip_quad(found[d][p][0][i])
            iou_between.append(quad_iou(quads[a], quads[b]))
            originals.append(photo.sources[j])
    n = len(originals)
    if n == 0:
        raise ValueError(f"no face was found by both {a} and {b}")
    preds = {d: predictor.predict(np.stack(chips[d])) for d in detectors}
    preds["original"] = predictor.predict(load_images(originals, size))
    heads = predictor.heads

    def agree(x: str, y: str) -> dict[str, float]:
        return {h: float(np.mean(preds[x][h].argmax(-1) == preds[y][h].argmax(-1))) for h in heads}

    return {
        "faces_pasted": int(sum(len(p.boxes) for p in photos)),
        "faces_found_by_both": n,
        "found": {d: int(sum(len(m[2]) for m in found[d])) for d in detectors},
        f"agreement_{a}_vs_{b}": agree(a, b),
        f"agreement_{a}_vs_original": agree(a, "original"),
        f"agreement_{b}_vs_original": agree(b, "original"),
        "crop_iou_between": _summary(iou_between),
        "crop_iou_vs_original": {d: _summary(v) for d, v in iou_orig.items()},
    }


def _summary(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    return {"median": float(np.median(v)), "p10": float(np.percentile(v, 10)), "min": float(v.min())}

