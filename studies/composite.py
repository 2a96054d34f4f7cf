"""Synthetic multi-face photos made of dataset crops at known positions, and crop-overlap
measures; used by the tests, the benchmark and the detector-agreement study.

A FairFace crop is itself a padding-0.25 chip, so the region ``align`` crops for a face
pasted at ``(x0, y0)`` with scale ``s`` should be the pasted square: the intersection over
union of ``chip_quad`` with that square measures how closely a crop is reproduced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class Composite:
    image: np.ndarray  # uint8 [H, W, 3]
    boxes: np.ndarray  # [F, 4] x0, y0, x1, y1 of each pasted crop
    sources: list[str]  # the crop file of each box


def background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour field: textured enough to be photo-like, with no faces in it."""
    coarse = rng.integers(40, 220, size=(4, 6, 3), dtype=np.uint8)
    return np.array(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))


def make_composite(
    crops: Sequence[str | Path],
    rng: np.random.Generator,
    face_px: tuple[int, int] = (140, 200),
    gap: int = 24,
) -> Composite:
    """Pastes ``crops`` in one row at random sizes in ``face_px`` (crop side, pixels) onto a
    random background with ``gap`` pixels between and around them; the row's vertical
    offsets vary so the boxes do not share an edge."""
    sides = rng.integers(face_px[0], face_px[1] + 1, size=len(crops))
    width = int(sides.sum() + gap * (len(crops) + 1))
    height = int(sides.max() + 3 * gap)
    canvas = background(height, width, rng)
    boxes, x = [], gap
    for path, side in zip(crops, sides):
        with Image.open(path) as im:
            face = np.asarray(im.convert("RGB").resize((int(side), int(side)), Image.BILINEAR))
        y = int(rng.integers(gap, height - side - gap + 1))
        canvas[y : y + side, x : x + side] = face
        boxes.append((x, y, x + side, y + side))
        x += int(side) + gap
    return Composite(canvas, np.array(boxes, dtype=np.float64), [str(p) for p in crops])


def box_quad(box: Sequence[float]) -> np.ndarray:
    """[x0, y0, x1, y1] -> its 4 corners, clockwise from the top-left."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def quad_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (rotated) quadrilaterals [4, 2] (x, y), by rasterising both at 1/4 px over
    their joint bounding box; pass ``box_quad(box)`` for an axis-aligned box."""
    from skimage.draw import polygon

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    # Disjoint bounding boxes cannot overlap; skipping them avoids rasterising the whole
    # photo for every far-apart pair (which made a 200-photo benchmark crawl).
    if np.any(a.max(axis=0) <= b.min(axis=0)) or np.any(b.max(axis=0) <= a.min(axis=0)):
        return 0.0
    lo = np.minimum(a.min(axis=0), b.min(axis=0))
    k = 4.0  # sub-pixel resolution
    shape = tuple(int(v) + 2 for v in np.ceil((np.maximum(a.max(axis=0), b.max(axis=0)) - lo) * k)[::-1])
    masks = []
    for q in (a, b):
        m = np.zeros(shape, bool)
        rr, cc = polygon((q[:, 1] - lo[1]) * k, (q[:, 0] - lo[0]) * k, shape)
        m[rr, cc] = True
        masks.append(m)
    union = np.logical_or(*masks).sum()
    return float(np.logical_and(*masks).sum() / union) if union else 0.0


def match_faces(quads: Sequence[np.ndarray], boxes: np.ndarray, min_iou: float = 0.3) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching of crop regions to pasted boxes by IoU.

    Returns:
        (face index, box index, IoU) for each matched pair with IoU >= ``min_iou``.
    """
    scores = np.array([[quad_iou(q, box_quad(b)) for b in boxes] for q in quads]).reshape(len(quads), len(boxes))
    pairs = []
    while scores.size and scores.max() >= min_iou:
        i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
        pairs.append((int(i), int(j), float(scores[i, j])))
        scores[i, :], scores[:, j] = -1, -1
    return pairs


def crop_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two same-size images' pixels (1 = identical up to brightness)."""
    x = a.astype(np.float64).ravel() - a.mean()
    y = b.astype(np.float64).ravel() - b.mean()
    return float(x @ y / np.sqrt((x @ x) * (y @ y)))
