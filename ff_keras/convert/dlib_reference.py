"""dlib's own outputs, the parity reference of the Keras dlib_resnet port.

Needs the ``dlib`` package (imported on call) and the ``.dat`` files shipped by the
``face-recognition-models`` pip package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ff_keras.convert.dlib_weights import load_dlib_weights
from ff_keras.data.crops import fairface_val_crops, main_face_box, read_crops
from ff_keras.data.preprocess import normalize_np
from ff_keras.data.readers import resolve_data_root
from ff_keras.models.backbones import dlib_resnet
from ff_keras.paths import face_models_dir


def default_dat_path() -> Path:
    """The ``.dat`` shipped by the ``face-recognition-models`` pip package."""
    return face_models_dir() / "dlib_face_recognition_resnet_model_v1.dat"


def dlib_reference(rgb_images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """dlib's own aligned 150 px chips and 128-d descriptors, the parity reference.

    Face: ``data.crops.main_face_box``; 5 landmarks; ``get_face_chip(size=150, padding=0.25)``
    as in dlib's example. The descriptor is ``compute_face_descriptor(chip)``: dlib's raw fc
    output (not L2-normalised; norms are ~1.3-1.5).

    Returns:
        (chips uint8 [N, 150, 150, 3], descriptors float32 [N, 128])
    """
    import dlib

    models = default_dat_path().parent
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    net = dlib.face_recognition_model_v1(str(default_dat_path()))
    chips, descriptors = [], []
    for i, rgb in enumerate(rgb_images):
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"image {i}: need uint8 RGB (H, W, 3), got {rgb.dtype} {rgb.shape}")
        rect, _ = main_face_box(detector, rgb)
        chip = dlib.get_face_chip(rgb, predictor(rgb, rect), size=150, padding=0.25)
        chips.append(chip)
        descriptors.append(np.asarray(net.compute_face_descriptor(chip), np.float32))
    return np.stack(chips), np.stack(descriptors)


def verify_against_dlib(weights: Path, n_images: int = 8, atol: float = 1e-4) -> float:
    """Max abs difference to dlib's own descriptors on real FairFace faces; raises above ``atol``."""
    images = read_crops(fairface_val_crops(resolve_data_root(), n_images))
    chips, want = dlib_reference(images)
    model = dlib_resnet.build(150, embedding="descriptor")
    load_dlib_weights(model, weights)
    diff = float(np.abs(model.predict(normalize_np(chips, dlib_resnet.SPEC), verbose=0) - want).max())
    if not diff <= atol:
        raise AssertionError(f"Keras vs dlib descriptors: max abs diff {diff:.2e} > {atol}")
    return diff


class BatchedDescriptor:
    """dlib's descriptor network in Keras, run on batches of dlib's 150 px chips.

    Reproduces ``compute_face_descriptor`` to ~5e-7 (``verify_against_dlib``) with a fraction
    of dlib's per-image CPU time, because the network runs batched.
    """

    def __init__(self, weights: Path, batch_size: int = 64):
        import tensorflow as tf

        self.model = dlib_resnet.build(150, embedding="descriptor")
        load_dlib_weights(self.model, Path(weights))
        self.batch_size = batch_size
        self._forward = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        """uint8 chips [N, 150, 150, 3] -> float32 descriptors [N, 128]."""
        out = [self._forward(normalize_np(chips[i : i + self.batch_size], dlib_resnet.SPEC)).numpy()
               for i in range(0, len(chips), self.batch_size)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 128), np.float32)
