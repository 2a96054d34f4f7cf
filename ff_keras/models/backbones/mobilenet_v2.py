"""Torch-parity MobileNetV2 (torchvision layout) as a Keras functional model.

Layer names follow torchvision's state-dict keys with "." -> "_": ``features_0_0`` is the
stem conv ``features.0.0``, ``features_3_conv_1_0`` the depthwise conv of block 3, so
``ff_keras.convert.torchvision`` maps names mechanically. Strided convolutions use explicit symmetric
``ZeroPadding2D`` + ``valid`` (TF "same" pads asymmetrically for stride 2, torch does not);
BatchNorm uses torch's ``eps=1e-5``; activations are ReLU6.
"""

from __future__ import annotations

import re

import keras
from keras import layers

from ff_keras.data.preprocess import IMAGENET, BackboneSpec

SPEC = BackboneSpec(**IMAGENET, embedding_dim=1280)
# torchvision's inverted_residual_setting: expansion t, channels c, repeats n, stride s.
SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1))
BN_EPS = 1e-5
BN_MOMENTUM = 0.9


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: round to a multiple of 8, never down by > 10%."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _pad_if_strided(x, stride: int, name: str):
    return layers.ZeroPadding2D(1, name=f"{name}_pad")(x) if stride > 1 else x


def _conv_bn_relu6(x, filters: int, kernel: int, stride: int, prefix: str, depthwise: bool = False):
    """torchvision ``Conv2dNormActivation``: ``{prefix}_0`` conv, ``_1`` BN, ``_2`` ReLU6."""
    x = _pad_if_strided(x, stride, f"{prefix}_0")
    padding = "valid" if stride > 1 or kernel == 1 else "same"
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=False,
                                   name=f"{prefix}_0")(x)
    else:
        x = layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                          name=f"{prefix}_0")(x)
    x = layers.BatchNormalization(epsilon=BN_EPS, momentum=BN_MOMENTUM, name=f"{prefix}_1")(x)
    return layers.ReLU(max_value=6.0, name=f"{prefix}_2")(x)


def _inverted_residual(x, out_ch: int, stride: int, expand: int, prefix: str):
    in_ch = x.shape[-1]
    hidden = round(in_ch * expand)
    y, k = x, 0
    if expand != 1:
        y = _conv_bn_relu6(y, hidden, 1, 1, f"{prefix}_conv_{k}")
        k += 1
    y = _conv_bn_relu6(y, hidden, 3, stride, f"{prefix}_conv_{k}", depthwise=True)
    y = layers.Conv2D(out_ch, 1, use_bias=False, name=f"{prefix}_conv_{k + 1}")(y)
    y = layers.BatchNormalization(epsilon=BN_EPS, momentum=BN_MOMENTUM, name=f"{prefix}_conv_{k + 2}")(y)
    if stride == 1 and in_ch == out_ch:
        y = layers.Add(name=f"{prefix}_add")([x, y])
    return y


def build(image_size: int, width: float = 1.0, embedding: str = "pooled", name: str = "backbone") -> keras.Model:
    """Builds MobileNetV2 features + global average pool: normalised image -> (B, 1280).

    Args:
        image_size: input height = width in pixels.
        width: torchvision's ``width_mult`` (the last conv keeps 1280 channels when < 1).
        embedding: only "pooled".
        name: name of the returned functional model.
    """
    if embedding != "pooled":
        raise ValueError(f"mobilenet_v2 supports embedding='pooled' only, got {embedding!r}")
    inputs = keras.Input((image_size, image_size, 3), name="image_norm")
    x = _conv_bn_relu6(inputs, make_divisible(32 * width), 3, 2, "features_0")
    idx = 1
    for t, c, n, s in SETTING:
        for i in range(n):
            x = _inverted_residual(x, make_divisible(c * width), s if i == 0 else 1, t, f"features_{idx}")
            idx += 1
    x = _conv_bn_relu6(x, make_divisible(1280 * max(1.0, width)), 1, 1, f"features_{idx}")
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    return keras.Model(inputs, x, name=name)


def _feature_stages() -> list[int]:
    """Stage of each ``features.i``: 0 stem, then +1 at every stride-2 row of SETTING."""
    stages, stage = [0], 0
    for row, (_, _, n, s) in enumerate(SETTING):
        stage += 1 if (row == 0 or s == 2) else 0
        stages += [stage] * n
    return stages + [stage]  # the final 1x1 conv belongs to the last stage


_FEATURE_STAGES = _feature_stages()
_INDEX = re.compile(r"^features_(\d+)_")


def stage_of(layer_name: str) -> int:
    """0 for the stem ``features.0``, 1-5 for the resolution stages of the inverted residuals."""
    m = _INDEX.match(layer_name)
    return _FEATURE_STAGES[int(m.group(1))] if m else 0
