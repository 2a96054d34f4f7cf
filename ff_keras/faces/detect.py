"""Face detectors behind one interface, plus the alignment that reproduces FairFace's crops.

FairFace's crops are ``dlib.get_face_chip(img, shape_5pt, size=300, padding=0.25)`` resized
to 224, with the 5 points from dlib's ``shape_predictor_5_face_landmarks.dat``. Whatever the
detector, the landmarks used for alignment always come from that same shape predictor, run
inside a box mapped to the box dlib's own detectors give, and refined once from its own
landmarks. MTCNN's five points (eye centres, nose tip, mouth corners) are a different
convention, so they are never used to align: that is what keeps the crops, and hence the
predicted labels, the same whichever detector found the face (see ``consistency``).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import numpy as np

from ff_keras.paths import face_models_dir

# "mtcnn" runs mtcnn 1.0.0's networks on ONNX Runtime (faces.mtcnn_onnx: no TensorFlow, same boxes
# and landmarks as the package); "mtcnn_tf" is the mtcnn package itself on TensorFlow (the [train]
# extra), kept as the reference the ONNX one is tested against.
DETECTORS: tuple[str, ...] = ("mtcnn", "dlib_hog", "dlib_cnn", "mtcnn_tf")
_MTCNN_FAMILY = ("mtcnn", "mtcnn_tf")
# MTCNN finds 94 % of FairFace faces pasted into photos against dlib HOG's 66 % (HOG misses
# turned and tilted faces) and still runs at >= 5 photos/s here: benchmarks/benchmark_faces.py.
DEFAULT_DETECTOR = "mtcnn"
PADDING = 0.25  # FairFace's get_face_chip padding
# Faces smaller than this (box side, pixels) are not looked for: below it the 5-point
# landmarks and a 64-224 px chip carry little information, and detectors slow down.
MIN_FACE = 40
# Second looks when a first finds no face: detectors, MTCNN most, miss faces that fill the
# frame (FairFace's own crops), so the image is searched again with a border of (fill, share
# of the longer side) around it. Of the 319 of FairFace's 3,138 test crops MTCNN missed,
# these looks find 292 (99.1 % found in all, through scripts/predict.py); a border of
# replicated edge pixels and one of the mean colour each find faces the other misses, and
# none found a face in 30 face-free textures.
RETRIES: tuple[tuple[str, float], ...] = (("edge", 0.25), ("mean", 0.25), ("mean", 0.5))
# MTCNN's last-stage threshold: 0.9 on the first look, lower on the second looks, which only
# run when nothing was found (0.7 recovers 262 of those 319 crops where 0.9 recovers 222).
ONET_THRESHOLD, RETRY_ONET_THRESHOLD = 0.9, 0.7
# A second look searches for a face that fills the frame: at least this share of the shorter
# side (never smaller than ``min_face``), which keeps it cheap on large photos.
RETRY_FACE_SHARE = 0.2
# The padded copies of second looks never hold more than this many pixels, whatever the image's
# shape (a 12000 x 32 strip padded by half its long side at full size is 4 GB).
RETRY_MAX_PIXELS = 4_000_000
# dlib's 5-point predictor reads pixels inside the face box; landmarks of a padded look are taken
# on a window this much (share of the box side) larger on each side, cut from a virtual padding.
_LANDMARK_MARGIN = 0.25

# Box of dlib's HOG/CNN detectors relative to MTCNN's box, measured on 47 FairFace crops
# both found (benchmarks/detector_agreement.py prints the same fit): dlib's box is square,
# 1.06x MTCNN's width, its centre 2.4 % of the width right and 7.5 % of the height lower.
_MTCNN_TO_DLIB = (1.06, 0.024, 0.075)
# Box that dlib's HOG detector gives, as a function of the 5 landmarks (fit on the same
# faces): side = k * landmark spread, centre = landmark centroid + (dx, dy) * side.
_LANDMARK_BOX = (2.10, 0.032, 0.186)


@dataclass
class Face:
    """One detected face in image pixel coordinates.

    ``box`` is [x, y, w, h] in dlib's box convention (square; MTCNN's taller box is mapped
    to it, so boxes are comparable across detectors); ``confidence`` is the detector's own
    score (MTCNN: probability; dlib HOG: SVM margin; dlib CNN: MMOD score), so it is only
    comparable within one detector. ``landmarks`` are dlib's 5 points [[x, y]] * 5 (eye
    corners, then the base of the nose) in the order of ``shape_predictor_5_face_landmarks``.
    """

    box: tuple[int, int, int, int]
    confidence: float
    landmarks: np.ndarray = field(repr=False)
    detector: str = ""

    def to_dict(self) -> dict:
        return {
            "box": [int(v) for v in self.box],
            "confidence": round(float(self.confidence), 4),
            "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks],
        }


# dlib's detectors and MTCNN's models are not safe to call from several threads at once.
# Each thread gets its own copies (the service decodes and detects in a small, fixed pool
# of threads), so concurrent requests detect in parallel instead of queueing on one lock.
_THREAD = threading.local()
_LOAD_LOCK = threading.Lock()  # building models touches Keras/TF global state


def _model(name: str):
    """This thread's instance of a detector or landmark model (built on first use)."""
    models = _THREAD.__dict__.setdefault("models", {})
    if name not in models:
        with _LOAD_LOCK:
            models[name] = _load_model(name)
    return models[name]


def _load_model(name: str):
    if name == "mtcnn":
        from ff_keras.faces.mtcnn_onnx import MTCNN as OnnxMTCNN

        return OnnxMTCNN()
    if name == "mtcnn_tf":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from mtcnn import MTCNN

        return MTCNN()
    import dlib

    if name == "shape5":
        return dlib.shape_predictor(str(face_models_dir() / "shape_predictor_5_face_landmarks.dat"))
    if name == "dlib_hog":
        return dlib.get_frontal_face_detector()
    if name == "dlib_cnn":
        return dlib.cnn_face_detection_model_v1(str(face_models_dir() / "mmod_human_face_detector.dat"))
    raise KeyError(name)


def load_detector(detector: str) -> None:
    """Builds ``detector`` and the landmark model in this thread and runs them once, so a
    service fails at start-up, not on its first request, when one cannot load."""
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; choose one of {DETECTORS}")
    detect_faces(np.zeros((64, 64, 3), np.uint8), detector, retry_padded=False)
    _model("shape5")


def _resize_for(rgb: np.ndarray, min_face: int, native: int) -> tuple[np.ndarray, float]:
    """Downscales so that ``min_face`` px faces become the detector's ``native`` smallest size.

    Detecting on a smaller image is how a larger minimum face size buys speed (and it avoids
    mtcnn 1.0.0's broken pyramid for ``min_face_size`` > 20, which returns no faces).
    """
    scale = min(1.0, native / float(min_face))
    if scale >= 0.999:
        return rgb, 1.0
    from PIL import Image

    h, w = rgb.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR)), scale


def _raw_boxes(
    rgb: np.ndarray, detector: str, min_face: int, onet: float = ONET_THRESHOLD
) -> list[tuple[np.ndarray, float]]:
    """Detector boxes as ([x0, y0, x1, y1] float, score) in ``rgb`` pixels, already mapped to
    dlib's box convention for the shape predictor."""
    if detector in _MTCNN_FAMILY:
        small, s = _resize_for(rgb, min_face, 20)
        found = _model(detector).detect_faces(small, min_face_size=20, threshold_onet=onet)
        out = []
        for d in found:
            x, y, w, h = (v / s for v in d["box"])
            k, dx, dy = _MTCNN_TO_DLIB
            cx, cy, side = x + w / 2 + dx * w, y + h / 2 + dy * h, k * w
            out.append((np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]), d["confidence"]))
        return out
    if detector == "dlib_hog":
        # HOG's sliding window is 80 px; one 2x upsample reaches 40 px faces (4x the time).
        upsample = 1 if min_face < 80 else 0
        small, s = _resize_for(rgb, min_face, 80 / 2**upsample)
        rects, scores, _ = _model("dlib_hog").run(small, upsample, 0.0)
        return [(np.array([r.left(), r.top(), r.right(), r.bottom()]) / s, float(c)) for r, c in zip(rects, scores)]
    if detector == "dlib_cnn":
        upsample = 1 if min_face < 80 else 0
        small, s = _resize_for(rgb, min_face, 80 / 2**upsample)
        dets = _model("dlib_cnn")(small, upsample)
        return [
            (np.array([d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()]) / s, float(d.confidence))
            for d in dets
        ]
    raise ValueError(f"unknown detector {detector!r}; choose one of {DETECTORS}")


def _landmarks(rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    import dlib

    rect = dlib.rectangle(*(round(float(v)) for v in box))
    shape = _model("shape5")(rgb, rect)
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)


def landmark_box(landmarks: np.ndarray) -> np.ndarray:
    """The dlib-detector-like box implied by 5 landmarks ([x0, y0, x1, y1]); it depends on the
    face only, not on which detector found it."""
    k, dx, dy = _LANDMARK_BOX
    centre = landmarks.mean(axis=0)
    side = k * float(np.linalg.norm(landmarks - centre, axis=1).mean()) * 2
    cx, cy = centre[0] + dx * side, centre[1] + dy * side
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def detect_faces(
    rgb: np.ndarray,
    detector: str = DEFAULT_DETECTOR,
    min_face: int = MIN_FACE,
    max_pixels: int | None = None,
    retry_padded: bool = True,
) -> list[Face]:
    """Finds faces and their dlib 5-point landmarks, sorted left to right.

    Args:
        rgb: uint8 [H, W, 3] RGB image.
        detector: one of ``DETECTORS``.
        min_face: smallest face side in pixels to look for.
        max_pixels: detect on a copy shrunk to at most this many pixels (boxes and landmarks
            are mapped back; landmarks come from the full image), which bounds the time one
            photo can take; faces smaller than ``min_face`` in that copy are not found.
        retry_padded: when nothing is found, look again on copies with a border added
            (``RETRIES``): detectors miss faces that fill the frame (an already cropped face).
            The border is added to a reduced copy of at most ``max_pixels`` (and never more
            than ``RETRY_MAX_PIXELS``) with the border included, never to the full image.
    """
    rgb = check_rgb(rgb)
    faces = _detect(rgb, detector, min_face, max_pixels)
    h, w = rgb.shape[:2]
    large_face = max(min_face, round(RETRY_FACE_SHARE * min(h, w)))
    limit = min(max_pixels or RETRY_MAX_PIXELS, RETRY_MAX_PIXELS)
    for fill, share in RETRIES if retry_padded else ():
        if faces:
            break
        pad = round(share * max(h, w))
        small, scale = _shrunk(rgb, min(1.0, (limit / ((h + 2 * pad) * (w + 2 * pad))) ** 0.5))
        small_pad = round(pad * scale)
        padded = _with_border(small, small_pad, fill)
        colour = padded[0, 0].copy()  # the fill colour the landmarks' view must match
        faces = []
        for box, score in _boxes(padded, detector, max(1, round(large_face * scale)), None, RETRY_ONET_THRESHOLD):
            box = (box - small_pad) / scale
            points = _landmarks_padded(rgb, box, pad, fill, colour)
            points = _landmarks_padded(rgb, landmark_box(points), pad, fill, colour)
            faces.append(_face(box, score, points, detector))
    return sorted(faces, key=lambda f: (f.box[0], f.box[1]))


def _with_border(rgb: np.ndarray, pad: int, fill: str) -> np.ndarray:
    if fill == "edge":
        return np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    h, w = rgb.shape[:2]
    out = np.empty((h + 2 * pad, w + 2 * pad, 3), np.uint8)
    out[:] = rgb.reshape(-1, 3).mean(0).astype(np.uint8)
    out[pad : pad + h, pad : pad + w] = rgb
    return out


def _landmarks_padded(rgb: np.ndarray, box: np.ndarray, pad: int, fill: str, colour: np.ndarray) -> np.ndarray:
    """Landmarks of ``box`` as if ``rgb`` had a ``pad`` border of ``fill``, without building the
    padded image: only a window around the box is filled in (edge pixels or ``colour``)."""
    h, w = rgb.shape[:2]
    margin = _LANDMARK_MARGIN * float(box[2] - box[0])
    x0, y0 = (max(-pad, int(np.floor(v - margin))) for v in box[:2])
    x1 = min(w + pad, int(np.ceil(box[2] + margin)))
    y1 = min(h + pad, int(np.ceil(box[3] + margin)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return _landmarks(rgb, box)
    xs, ys = np.arange(x0, x1), np.arange(y0, y1)
    window = rgb[np.clip(ys, 0, h - 1)[:, None], np.clip(xs, 0, w - 1)[None, :]]
    if fill != "edge":
        window[(ys < 0) | (ys >= h)] = colour
        window[:, (xs < 0) | (xs >= w)] = colour
    offset = np.array([x0, y0], np.float32)
    return _landmarks(window, box - np.tile(offset, 2)) + offset


def _shrunk(rgb: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
    """``rgb`` resized by ``scale`` (bilinear; unchanged at 1) and the scale actually applied."""
    if scale >= 1.0:
        return rgb, 1.0
    from PIL import Image

    h, w = rgb.shape[:2]
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR)), scale


def _boxes(
    rgb: np.ndarray, detector: str, min_face: int, max_pixels: int | None, onet: float = ONET_THRESHOLD
) -> list[tuple[np.ndarray, float]]:
    """Detector boxes in ``rgb`` pixels, found on a copy of at most ``max_pixels``."""
    h, w = rgb.shape[:2]
    scale = 1.0 if not max_pixels or h * w <= max_pixels else (max_pixels / (h * w)) ** 0.5
    small, scale = _shrunk(rgb, scale)
    return [(box / scale, score) for box, score in _raw_boxes(small, detector, max(1, round(min_face * scale)), onet)]


def _face(box: np.ndarray, score: float, points: np.ndarray, detector: str) -> Face:
    x0, y0, x1, y1 = box
    xywh = (round(float(x0)), round(float(y0)), round(float(x1 - x0)), round(float(y1 - y0)))
    return Face(xywh, float(score), points, detector)


def _detect(
    rgb: np.ndarray, detector: str, min_face: int, max_pixels: int | None, onet: float = ONET_THRESHOLD
) -> list[Face]:
    faces = []
    for box, score in _boxes(rgb, detector, min_face, max_pixels, onet):
        # Two passes: the detector's box seeds the landmarks, then the box implied by those
        # landmarks seeds them again, so detectors with different boxes converge on one shape.
        points = _landmarks(rgb, box)
        points = _landmarks(rgb, landmark_box(points))
        faces.append(_face(box, score, points, detector))
    return faces


def align(rgb: np.ndarray, face: Face, size: int, padding: float = PADDING) -> np.ndarray:
    """The aligned uint8 [size, size, 3] chip for ``face``: FairFace's ``get_face_chip`` crop."""
    import dlib

    return np.asarray(dlib.get_face_chip(check_rgb(rgb), _shape(face), size=size, padding=padding), np.uint8)


def chip_quad(face: Face, padding: float = PADDING) -> np.ndarray:
    """Corners [4, 2] (x, y) in image pixels of the region ``align`` crops, clockwise from the
    chip's top-left; used to measure how well a crop reproduces another."""
    import dlib

    det = dlib.get_face_chip_details(_shape(face), size=2, padding=padding)
    r, a = det.rect, det.angle
    c = np.array([r.center().x, r.center().y])
    half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * np.array([r.width(), r.height()]) / 2
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return c + half @ rot.T


def _shape(face: Face):
    import dlib

    rect = dlib.rectangle(*(round(float(v)) for v in landmark_box(face.landmarks)))
    return dlib.full_object_detection(rect, [dlib.point(round(float(x)), round(float(y))) for x, y in face.landmarks])


def detect_and_align(
    rgb: np.ndarray,
    detector: str = DEFAULT_DETECTOR,
    size: int = 224,
    min_face: int = MIN_FACE,
    max_pixels: int | None = None,
) -> tuple[list[Face], np.ndarray]:
    """Detection + alignment in one call (the service's ``/predict?detect=true`` hook).

    Returns:
        (faces, chips uint8 [F, size, size, 3]); F may be 0.
    """
    faces = detect_faces(rgb, detector, min_face, max_pixels)
    chips = [align(rgb, f, size) for f in faces]
    return faces, (np.stack(chips) if chips else np.zeros((0, size, size, 3), np.uint8))


def check_rgb(rgb: np.ndarray) -> np.ndarray:
    """Contiguous uint8 [H, W, 3]; raises a clear error for anything else (dlib would segfault
    or print a C++ message)."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)
