"""The one-call Python API: ``ff_keras.analyze(photo)`` and the reusable ``FaceAnalyzer``.

It joins the pieces a user would otherwise have to learn (decode, ``faces.detect``, the crop
contract, ``inference.predictor``, ``faces.framing``) and returns the records the service and
``ff-keras predict --json`` return, one per face::

    {"box": [x, y, w, h], "confidence": 0.99, "landmarks": [[x, y]] * 5,
     "heads": {"age": {"label": "20-29", "probabilities": {...}}, "gender": ..., "race": ...},
     "age_years": 27.3, "framing": {...}}     # framing only with detect=False

Everything runs on ONNX Runtime and numpy (MTCNN included): no TensorFlow is imported unless the
model itself is a ``.keras`` file or a SavedModel.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from ff_keras.inference.predictor import Predictor

# A path, encoded bytes (JPEG, PNG or WebP), a PIL image or a uint8 RGB array [H, W, 3].
ImageInput = Union[str, Path, bytes, "Image.Image", np.ndarray]


def to_rgb(image: ImageInput, name: str | None = None) -> np.ndarray:
    """Any accepted input -> uint8 [H, W, 3] RGB. Files and bytes are decoded as the service decodes
    uploads (format judged by the bytes, EXIF orientation applied).

    Raises:
        ValueError: naming the image (``name``, the path, or its type) when it cannot be used.
    """
    from PIL import Image

    from ff_keras.data.image_decode import decode_image, to_rgb8
    from ff_keras.faces.detect import check_rgb

    if isinstance(image, (str, Path)):
        return decode_image(image, name or str(image)).rgb
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(bytes(image), name or "image bytes").rgb
    if isinstance(image, Image.Image):
        return to_rgb8(image)
    if isinstance(image, np.ndarray):
        try:
            return check_rgb(image)
        except ValueError as err:
            raise ValueError(f"{name or 'array'}: {err}") from err
    raise TypeError(f"{name or 'image'}: expected a path, bytes, a PIL image or a uint8 RGB array, "
                    f"got {type(image).__name__}")


class FaceAnalyzer:
    """A loaded model and detector, reused across calls (loading takes about a second).

    Args:
        model: ``.onnx`` (or ``.keras`` / SavedModel) with ``model_info.json`` beside it; default
            ``$FF_MODEL``, else the release shipped in the package.
        detector: ``"mtcnn"`` (ONNX Runtime), ``"dlib"`` / ``"dlib_hog"``, ``"dlib_cnn"``, ``"mtcnn_tf"``
            (needs TensorFlow), or ``"none"`` (every image already is an aligned face).
        batch_size: faces per model call.
        min_face: smallest face side to look for, pixels.
        max_pixels: detect on a copy of at most this many pixels (bounds the time of huge photos).
        threads: ONNX Runtime intra-op threads (None: its default).
    """

    def __init__(self, model: str | Path | None = None, detector: str = "mtcnn", batch_size: int = 32,
                 min_face: int | None = None, max_pixels: int | None = None, threads: int | None = None):
        from ff_keras.faces.analyze import resolve_detector
        from ff_keras.faces.detect import MIN_FACE
        from ff_keras.inference.predictor import load_predictor
        from ff_keras.paths import default_model

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.detector = resolve_detector(detector)
        self.predictor: Predictor = load_predictor(model or default_model(), threads, batch_size)
        self.min_face = MIN_FACE if min_face is None else min_face
        self.max_pixels = max_pixels

    @property
    def heads(self) -> list[str]:
        return self.predictor.heads

    def analyze(self, images: ImageInput | Sequence[ImageInput], detect: bool = True) -> list[dict] | list[list[dict]]:
        """Labels for every face in one image (-> list of records) or in a list of images
        (-> one list of records per image, in order); faces of all images share model batches.

        ``detect=False`` takes each whole image as one aligned face (as the service's
        ``detect=false``) and adds ``framing``: how its framing compares with the crops the
        model was measured on.
        """
        one = not isinstance(images, (list, tuple))
        batch = [images] if one else list(images)
        rgbs = [to_rgb(im, f"images[{i}]" if not one and not isinstance(im, (str, Path)) else None)
                for i, im in enumerate(batch)]
        records, chips = [], []
        for rgb in rgbs:
            found, crops = self._faces(rgb, detect)
            records.append(found)
            chips.append(crops)
        size = self.predictor.info.image_size
        results = self.predictor.predict_results(np.concatenate(chips) if chips else np.zeros((0, size, size, 3)))
        it = iter(results)
        for found in records:
            for rec in found:
                rec.update(next(it))
        return records[0] if one else records

    def _faces(self, rgb: np.ndarray, detect: bool) -> tuple[list[dict], np.ndarray]:
        from ff_keras.faces.analyze import NO_DETECTOR, _face_fields
        from ff_keras.inference.predictor import prepare_face

        size = self.predictor.info.image_size
        if detect and self.detector != NO_DETECTOR:
            from ff_keras.faces.detect import detect_and_align

            faces, chips = detect_and_align(rgb, self.detector, size, self.min_face, self.max_pixels)
            return [_face_fields(f, rgb) for f in faces], chips
        record = _face_fields(None, rgb)
        if self.detector != NO_DETECTOR:
            from ff_keras.faces.framing import check_framing

            record["framing"] = check_framing(rgb, self.detector, self.max_pixels).to_dict()
        return [record], prepare_face(rgb, size)[None]

    def predict_crops(self, crops: np.ndarray | Sequence[ImageInput]) -> list[dict]:
        """Labels for aligned face crops (FairFace's 5-point alignment, padding 0.25): a uint8/float
        array [N, H, W, 3] RGB 0-255 or a list of images; any size (resized as the model expects)."""
        from ff_keras.inference.predictor import prepare_face

        size = self.predictor.info.image_size
        if isinstance(crops, np.ndarray) and crops.ndim == 4 and crops.shape[1:] == (size, size, 3):
            batch = crops.astype(np.float32, copy=False)
        elif isinstance(crops, np.ndarray) and crops.ndim == 4 and crops.shape[3] == 3:
            batch = np.stack([prepare_face(np.clip(c, 0, 255).astype(np.uint8), size) for c in crops]) \
                if len(crops) else np.zeros((0, size, size, 3), np.float32)
        elif isinstance(crops, np.ndarray):
            raise ValueError(f"crops must be an array [N, H, W, 3], got shape {crops.shape}")
        else:
            faces = [prepare_face(to_rgb(c, f"crops[{i}]"), size) for i, c in enumerate(crops)]
            batch = np.stack(faces) if faces else np.zeros((0, size, size, 3), np.float32)
        return self.predictor.predict_results(batch)


@functools.lru_cache(maxsize=4)
def _shared(model: str, detector: str) -> FaceAnalyzer:
    return FaceAnalyzer(model, detector)


def analyze(image: ImageInput | Sequence[ImageInput], detect: bool = True, model: str | Path | None = None,
            detector: str = "mtcnn") -> list[dict] | list[list[dict]]:
    """``FaceAnalyzer(model, detector).analyze(image, detect)`` with the analyzer kept for later calls."""
    from ff_keras.paths import default_model

    return _shared(str(model or default_model()), detector).analyze(image, detect)
