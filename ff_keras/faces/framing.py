"""How a face crop a client cut itself compares with the FairFace chip the model was measured on.

A service sent pre-cut crops (``/predict`` without ``detect``) cannot see that the model loses
10 points of gender and race when the face fills the frame (``evaluation.robustness``: central
60 % of the chip), or that a whole photo was sent as one face. The check finds the face in the
crop, works out the region FairFace's alignment would cut around it (``detect.chip_quad``) and
reports the crop's side as a multiple of that chip's side: 1.0 is FairFace's own framing, 0.6
the central 60 %, 1.2 a padding of 0.4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ff_keras.faces.detect import DEFAULT_DETECTOR, Face, chip_quad, detect_faces

# Crop side / FairFace chip side called "ok". The model was measured to lose at most ~1.5 points
# of gender and ~3.7 of race from central 90 % (0.9) out to padding 0.4 (1.2) (docs/evaluation.md "Crops it
# handles"); the bounds are wider by the estimate's own spread (benchmarks/benchmark_framing.py on
# val, MTCNN: FairFace's own chips read 0.93-1.37 from the 5th to the 95th percentile, padding 0.4
# up to 1.64), so that few crops inside the measured range are flagged.
OK_SCALE = (0.82, 1.8)
SEVERAL_FACES_SIDE = 0.5  # a second face counts when its side is at least this share of the largest's
STATUSES = ("ok", "tighter", "looser", "several_faces", "no_face")


@dataclass(frozen=True)
class Framing:
    """``scale``: crop side / FairFace chip side for the largest face found (None: no face)."""

    status: str
    scale: float | None
    faces_found: int

    @property
    def message(self) -> str:
        lo, hi = OK_SCALE
        where = f"image side {self.scale:.2f} x FairFace's chip around this face" if self.scale is not None else ""
        return {
            "ok": f"{where} (ok: {lo}-{hi})",
            "tighter": f"{where}, under {lo}: the face fills more of the image than in the crops the model was "
                       "measured on, which costs 4 to 10+ points of accuracy; send the whole photo with detect=true",
            "looser": f"{where}, over {hi}: the face fills less of the image than in the crops the model was "
                      "measured on; send the whole photo with detect=true",
            "several_faces": f"{self.faces_found} faces in the image, classified as one; send it with detect=true",
            "no_face": "no face found in the image; the prediction may not describe a face",
        }[self.status]

    def to_dict(self) -> dict:
        scale = None if self.scale is None else round(self.scale, 3)
        return {"status": self.status, "scale": scale, "faces_found": self.faces_found, "message": self.message}


def crop_scale(face: Face, width: int, height: int) -> float:
    """Side of a ``width`` x ``height`` crop (geometric mean) over the side of FairFace's chip of ``face``."""
    quad = chip_quad(face)
    return float(np.sqrt(width * height) / np.linalg.norm(quad[1] - quad[0]))


def check_framing(rgb: np.ndarray, detector: str = DEFAULT_DETECTOR, max_pixels: int | None = None) -> Framing:
    """Finds the faces in a crop (uint8 [H, W, 3]) and says how its framing compares with FairFace's.

    ``max_pixels``: detect on a copy at most this large (``detect.detect_faces``), bounding the time.
    """
    faces = detect_faces(rgb, detector, max_pixels=max_pixels)
    if not faces:
        return Framing("no_face", None, 0)
    largest = max(faces, key=lambda f: f.box[2])
    # Faces much smaller than the largest (people in the background) do not change the answer.
    faces = [f for f in faces if f.box[2] >= SEVERAL_FACES_SIDE * largest.box[2]]
    scale = crop_scale(largest, rgb.shape[1], rgb.shape[0])
    if len(faces) > 1:
        status = "several_faces"
    elif scale < OK_SCALE[0]:
        status = "tighter"
    elif scale > OK_SCALE[1]:
        status = "looser"
    else:
        status = "ok"
    return Framing(status, scale, len(faces))
