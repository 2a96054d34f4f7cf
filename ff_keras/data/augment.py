"""Batch augmentation that runs on the accelerator inside the training step.

``augment_batch`` takes the pipeline's uint8 batch and returns float32 in [0, 255];
normalisation is not done here, it lives in the model, so exported models take raw RGB.
Every random draw is a stateless op keyed by an explicit seed, so a step is reproducible
from its seed, and all draws are per image but vectorised over the batch (no Python loop).
The draws (a few numbers per image) are made first with TF's Philox kernels; the pixel work
then runs as one XLA-compiled function (``cfg.jit_compile``), which fuses the ops into a
few passes over the batch. Drawing outside XLA keeps results identical compiled or not.

Colour jitter follows torchvision's ``ColorJitter(b, c, s, h)`` semantics on each image:
brightness ``x * f``, contrast ``blend(x, mean(gray(x)))``, saturation ``blend(x, gray(x))``
with factors uniform in ``[max(0, 1 - v), 1 + v]``, and a hue shift uniform in ``[-h, h]``
of the HSV hue circle, clamping to [0, 255] after each. One deviation: torchvision draws a
random order of the four ops per call; here the order is fixed (brightness, contrast,
saturation, hue), which keeps the batch vectorised.
"""

from __future__ import annotations

import math

import tensorflow as tf

from ff_keras.config import AugmentConfig

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma), as in tf.image.rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)


def _uniform(shape, seed: tf.Tensor, low: float = 0.0, high: float = 1.0) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, low, high, alg="philox")


def _gray(x: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(x * tf.constant(_LUMA, x.dtype), axis=-1, keepdims=True)


def _blend(x: tf.Tensor, other: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(factor * x + (1.0 - factor) * other, 0.0, 255.0)


def _per_image(v: tf.Tensor) -> tf.Tensor:
    return tf.reshape(v, [-1, 1, 1, 1])


CROP_AREA_SAMPLING = ("uniform", "log_uniform")


def _crop_areas(n: tf.Tensor, cfg: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    if cfg.crop_area_sampling not in CROP_AREA_SAMPLING:
        raise ValueError(f"augment.crop_area_sampling={cfg.crop_area_sampling!r}; expected one of "
                         f"{list(CROP_AREA_SAMPLING)}")
    if not 0 < cfg.crop_scale_min <= cfg.crop_scale_max:
        raise ValueError(f"augment.crop_scale_min/max must satisfy 0 < min <= max, got "
                         f"{cfg.crop_scale_min}, {cfg.crop_scale_max}")
    if cfg.crop_area_sampling == "uniform":
        return _uniform([n], seed, cfg.crop_scale_min, cfg.crop_scale_max)
    return tf.exp(_uniform([n], seed, math.log(cfg.crop_scale_min), math.log(cfg.crop_scale_max)))


def draw_params(n: tf.Tensor, cfg: AugmentConfig, seed: tf.Tensor) -> dict[str, tf.Tensor]:
    """Per-image random parameters ([n] each; ``crop`` is [n, 4] = top, left, h, w)."""
    seeds = tf.unstack(tf.random.split(seed, 6, alg="philox"))
    # Later additions fold their own seeds in, so the draws above stay as they were.
    extra = [tf.random.experimental.stateless_fold_in(seed, k, alg="philox") for k in (6, 7)]
    p = {}
    if cfg.random_resized_crop:
        area = _crop_areas(n, cfg, seeds[0])
        s1, s2 = tf.unstack(tf.random.split(seeds[0], 2, alg="philox"))
        ratio = tf.exp(_uniform([n], s1, math.log(cfg.crop_ratio_min), math.log(cfg.crop_ratio_max)))
        # Fractions of the (square) input's side; above 1 (zoom-out) the box extends past the image
        # on that side and the image sits anywhere inside it.
        side_max = max(1.0, math.sqrt(cfg.crop_scale_max))
        w = tf.minimum(tf.sqrt(area * ratio), side_max)
        h = tf.minimum(tf.sqrt(area / ratio), side_max)
        top, left = tf.unstack(_uniform([2, n], s2) * tf.stack([1.0 - h, 1.0 - w]))
        p["crop"] = tf.stack([top, left, h, w], axis=1)
    if cfg.lowres_prob > 0:
        s1, s2 = tf.unstack(tf.random.split(extra[0], 2, alg="philox"))
        p["lowres"] = _uniform([n], s1) < cfg.lowres_prob
        p["lowres_size"] = _uniform([], s2, 0.0, 1.0)  # one size per batch: resize needs a static-rank shape
    if cfg.jpeg_prob > 0:
        s1, s2 = tf.unstack(tf.random.split(extra[1], 2, alg="philox"))
        p["jpeg"] = _uniform([n], s1) < cfg.jpeg_prob
        p["jpeg_quality"] = tf.cast(_uniform([n], s2, cfg.jpeg_quality_min, 95.999), tf.int32)
    if cfg.flip:
        p["flip"] = _uniform([n], seeds[1]) < 0.5
    for i, name in enumerate(("brightness", "contrast", "saturation"), start=2):
        strength = getattr(cfg, name)
        if strength > 0:
            p[name] = _uniform([n], seeds[i], max(0.0, 1.0 - strength), 1.0 + strength)
    if cfg.hue > 0:
        p["hue"] = _uniform([n], seeds[5], -cfg.hue, cfg.hue)
    return p


def resized_crop(x: tf.Tensor, boxes: tf.Tensor) -> tf.Tensor:
    """Crops ``boxes`` [B, 4] (top, left, h, w as fractions) and resizes back to the input size.

    Uses ``tf.image.crop_and_resize`` (bilinear), which XLA cannot compile, so it runs
    before the compiled part; a gather-based version compiled but ran ~10x slower on CPU.
    """
    top, left, h, w = tf.unstack(boxes, axis=1)
    corners = tf.stack([top, left, top + h, left + w], axis=1)
    out = tf.image.crop_and_resize(x, corners, tf.range(tf.shape(x)[0]), tf.shape(x)[1:3])
    return tf.clip_by_value(out, 0.0, 255.0)


def low_resolution(x: tf.Tensor, mask: tf.Tensor, size_fraction: tf.Tensor, min_size: int) -> tf.Tensor:
    """Shrinks the masked images to one drawn size (``min_size`` .. input side) and enlarges them back.

    Models what a small face in a photo looks like once upsampled to the model's input.
    """
    side = tf.shape(x)[1]
    lo = tf.cast(tf.minimum(min_size, side), tf.float32)
    s = tf.cast(tf.round(lo + size_fraction * (tf.cast(side, tf.float32) - lo)), tf.int32)
    small = tf.image.resize(x, tf.stack([s, s]), method="bilinear", antialias=True)
    back = tf.clip_by_value(tf.image.resize(small, tf.shape(x)[1:3], method="bilinear"), 0.0, 255.0)
    return tf.where(_per_image(mask), back, x)


def jpeg_recompress(x: tf.Tensor, mask: tf.Tensor, quality: tf.Tensor) -> tf.Tensor:
    """Re-encodes the masked images as JPEG at their drawn quality (a host op, per image)."""

    def one(args):
        img, q, on = args
        u8 = tf.cast(tf.round(img), tf.uint8)
        return tf.cond(on, lambda: tf.cast(tf.image.adjust_jpeg_quality(u8, q), tf.float32), lambda: img)

    return tf.map_fn(one, (x, quality, mask), fn_output_signature=tf.float32)


def apply_params(x: tf.Tensor, p: dict[str, tf.Tensor]) -> tf.Tensor:
    """The per-pixel work for parameters from ``draw_params`` (float 0-255; not the crop)."""
    if "flip" in p:
        x = tf.where(_per_image(p["flip"]), tf.reverse(x, axis=[2]), x)
    if "brightness" in p:
        x = tf.clip_by_value(x * _per_image(p["brightness"]), 0.0, 255.0)
    if "contrast" in p:
        mean = tf.reduce_mean(_gray(x), axis=[1, 2, 3], keepdims=True)
        x = _blend(x, mean, _per_image(p["contrast"]))
    if "saturation" in p:
        x = _blend(x, _gray(x), _per_image(p["saturation"]))
    if "hue" in p:
        hsv = tf.image.rgb_to_hsv(x / 255.0)
        hue = tf.math.floormod(hsv[..., 0] + tf.reshape(p["hue"], [-1, 1, 1]), 1.0)
        x = tf.image.hsv_to_rgb(tf.stack([hue, hsv[..., 1], hsv[..., 2]], axis=-1)) * 255.0
        x = tf.clip_by_value(x, 0.0, 255.0)
    return x


_apply_xla = tf.function(apply_params, jit_compile=True)


def augment_batch(
    images: tf.Tensor,
    cfg: AugmentConfig,
    seed: tf.Tensor | tf.random.Generator,
    training: bool,
) -> tf.Tensor:
    """uint8/float ``[B, H, W, 3]`` -> float32 ``[B, H, W, 3]`` in [0, 255].

    Args:
        images: raw RGB batch, as yielded by ``data.make_dataset``.
        cfg: which augmentations run and how strong; ``cfg.jit_compile`` runs the pixel
            work as one XLA-compiled function. With ``random_resized_crop`` on, the crop
            is not XLA-compilable (nor are the low-resolution and JPEG steps): do not wrap
            this in an outer ``jit_compile`` function.
        seed: int ``[2]`` stateless seed (same seed -> same output), or a
            ``tf.random.Generator`` that supplies a fresh seed per call.
        training: False returns the images unchanged (as float32).
    """
    x = tf.cast(images, tf.float32)
    if not training:
        return x
    if isinstance(seed, tf.random.Generator):
        seed = seed.make_seeds(1)[:, 0]
    params = draw_params(tf.shape(x)[0], cfg, tf.cast(seed, tf.int64))
    if "crop" in params:
        x = resized_crop(x, params.pop("crop"))
    if "lowres" in params:
        x = low_resolution(x, params.pop("lowres"), params.pop("lowres_size"), cfg.lowres_min_size)
    if "jpeg" in params:
        x = jpeg_recompress(x, params.pop("jpeg"), params.pop("jpeg_quality"))
    if not params:
        return x
    return (_apply_xla if cfg.jit_compile else apply_params)(x, params)
