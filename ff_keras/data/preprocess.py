"""Image geometry and normalisation shared by the data pipeline, the model and serving.

Resize policy for every path (tf.data and numpy serving): take the largest centred
square crop of the image, then resize it to ``size x size`` with plain bilinear
interpolation (half-pixel centres, as ``tf.image.resize``), skipped when the crop already
has that size. A face crop keeps its aspect ratio (no stretching) and its centre; the
longer side loses an equal margin on each side. FairFace (224x224) and UTKFace (200x200)
are square, so for them the crop is a no-op. No antialiasing: TF's antialiased resize
(ScaleAndTranslate) ran ~8x slower than decoding and would make the input pipeline
resize-bound, and at the shrink factors used here (224 -> 160) its effect is small.
``square_resize_np`` implements the same arithmetic in numpy (equal within 1 grey level).

Normalisation is ``(x / scale - mean) / std`` with the constants of the backbone's
``BackboneSpec`` (defined here: it is a preprocessing contract), computed everywhere as one
multiply-add (``normalization_affine``). It runs inside the model (``normalization_layer``),
so exported models take raw RGB 0-255; ``normalize_np`` / ``normalize_tf`` are the same
arithmetic for tools and references outside the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # TF is imported lazily: the serving path uses only the numpy helpers.
    import tensorflow as tf


@dataclass(frozen=True)
class BackboneSpec:
    """Preprocessing contract of a backbone's weights: x_norm = (x/scale - mean) / std."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float  # divide raw 0-255 RGB by this first
    embedding_dim: int


IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale=255.0)


def imagenet_spec() -> BackboneSpec:
    """ImageNet mean/std on a 0-255 input; ``embedding_dim`` is irrelevant here."""
    return BackboneSpec(embedding_dim=0, **IMAGENET)


def normalization_affine(spec: BackboneSpec) -> tuple[list[float], list[float]]:
    """Per-channel ``(multiplier, offset)`` with ``x_norm = x * multiplier + offset``.

    ``(x/scale - mean)/std == x * (1 / (scale*std)) - mean/std``: one multiply-add, the
    arithmetic of the model's ``Rescaling`` layer, so every path computes the same numbers.
    """
    multiplier = [1.0 / (spec.scale * s) for s in spec.std]
    offset = [-m / s for m, s in zip(spec.mean, spec.std)]
    return multiplier, offset


def normalize_np(images: np.ndarray, spec: BackboneSpec) -> np.ndarray:
    """Raw RGB 0-255 (uint8 or float, ``[..., 3]``) -> normalised float32, in numpy."""
    multiplier, offset = normalization_affine(spec)
    return np.asarray(images, np.float32) * np.float32(multiplier) + np.float32(offset)


def normalize_tf(images: tf.Tensor, spec: BackboneSpec) -> tf.Tensor:
    """The same as ``normalize_np`` with TF ops (float32 out)."""
    import tensorflow as tf

    multiplier, offset = normalization_affine(spec)
    return tf.cast(images, tf.float32) * np.float32(multiplier) + np.float32(offset)


def normalization_layer(spec: BackboneSpec, name: str = "normalize"):
    """``normalize_tf`` as one serialisable Keras layer: the model's first layer (ONNX-exportable)."""
    import keras

    multiplier, offset = normalization_affine(spec)
    return keras.layers.Rescaling(scale=multiplier, offset=offset, name=name)


def center_square(height: tf.Tensor, width: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Offsets (top, left) and side of the largest centred square, as int32 tensors."""
    import tensorflow as tf

    side = tf.minimum(height, width)
    return (height - side) // 2, (width - side) // 2, side


def square_resize_tf(image: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 ``[H, W, 3]`` -> uint8 ``[size, size, 3]`` by the module's resize policy."""
    import tensorflow as tf

    shape = tf.shape(image)
    top, left, side = center_square(shape[0], shape[1])
    image = image[top : top + side, left : left + side]

    def _resize() -> tf.Tensor:
        out = tf.image.resize(image, (size, size), method="bilinear", antialias=False)
        # Bilinear weights are convex, so out stays in [0, 255]: rounding half up is one add
        # and a truncating cast (round + clip + cast took ~40 % of a 200 -> 224 px load).
        return tf.cast(out + 0.5, tf.uint8)

    # Skipping the resize when the crop already fits keeps FairFace-at-224 decode-bound.
    out = tf.cond(tf.equal(side, size), lambda: image, _resize)
    return tf.ensure_shape(out, (size, size, 3))


def _bilinear_np(image: np.ndarray, size: int) -> np.ndarray:
    # tf.image.resize(bilinear, half_pixel_centers): source = (dst + 0.5) * scale - 0.5,
    # clamped to the image; interpolate along x first, then y, in float32.
    def taps(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(size, dtype=np.float32) + 0.5) * (n_in / size) - 0.5, 0, n_in - 1)
        low = np.floor(pos).astype(np.int64)
        return low, np.minimum(low + 1, n_in - 1), (pos - low).astype(np.float32)

    y0, y1, fy = taps(image.shape[0])
    x0, x1, fx = taps(image.shape[1])
    img = image.astype(np.float32)
    fx = fx[None, :, None]
    top = img[y0][:, x0] + (img[y0][:, x1] - img[y0][:, x0]) * fx
    bottom = img[y1][:, x0] + (img[y1][:, x1] - img[y1][:, x0]) * fx
    out = top + (bottom - top) * fy[:, None, None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)  # round half up, as square_resize_tf


def square_resize_np(image: np.ndarray | Image.Image, size: int) -> np.ndarray:
    """Numpy twin of ``square_resize_tf`` for TF-free serving (PIL image or uint8 array)."""
    if isinstance(image, Image.Image):
        image = image.convert("RGB") if image.mode != "RGB" else image
    arr = np.asarray(image, np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    h, w = arr.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    arr = arr[top : top + side, left : left + side, :3]
    return arr if side == size else _bilinear_np(arr, size)
