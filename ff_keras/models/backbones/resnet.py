"""Torch-parity ResNet-18/34 (basic block) as a Keras functional model.

Layer names are the converter's contract: ``layer2_0_downsample_1`` is torchvision's
``layer2.0.downsample.1`` (``name.replace("_", ".")``), so ``ff_keras.convert.torchvision`` needs no
name table. The graph mirrors torchvision numerics exactly:

* torch pads strided convolutions symmetrically (``padding=k//2``) while TF's "same"
  pads asymmetrically when ``stride > 1``, so every strided conv and the stem use an
  explicit ``ZeroPadding2D`` followed by a ``valid`` convolution;
* max-pool pads with zeros, which is safe because it follows a ReLU (inputs >= 0);
* BatchNorm uses torch's ``eps=1e-5`` and ``momentum=0.1`` (Keras ``momentum=0.9``);
* convolutions have no bias (the BatchNorm beta plays that role).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import keras
from keras import layers

from ff_keras.data.preprocess import IMAGENET, BackboneSpec

SPEC = BackboneSpec(**IMAGENET, embedding_dim=512)
# Blocks per stage; ``ff_keras.models.multihead`` passes ``VARIANTS[name]`` to ``build``.
VARIANTS: dict[str, dict] = {
    "resnet18": {"blocks": (2, 2, 2, 2)},
    "resnet34": {"blocks": (3, 4, 6, 3)},
}
STAGE_WIDTHS = (64, 128, 256, 512)
BN_EPS = 1e-5
BN_MOMENTUM = 0.9


def _channels(c: int, width: float) -> int:
    return max(1, round(c * width))


def _conv_bn(x, filters: int, kernel: int, stride: int, conv_name: str, bn_name: str):
    """Conv (no bias) + BN with torch's symmetric padding ``kernel // 2``."""
    pad = kernel // 2
    if stride > 1 or kernel > 3:
        # Explicit symmetric padding: TF "same" pads (0, 1) for stride 2, torch (1, 1).
        if pad:
            x = layers.ZeroPadding2D(pad, name=f"{conv_name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"  # stride 1, odd kernel: identical to torch's symmetric pad
    x = layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False, name=conv_name)(x)
    return layers.BatchNormalization(epsilon=BN_EPS, momentum=BN_MOMENTUM, name=bn_name)(x)


def _basic_block(x, filters: int, stride: int, prefix: str):
    """torchvision ``BasicBlock``: conv3x3-bn-relu-conv3x3-bn (+ downsample) + add, relu."""
    shortcut = x
    y = _conv_bn(x, filters, 3, stride, f"{prefix}_conv1", f"{prefix}_bn1")
    y = layers.ReLU(name=f"{prefix}_relu1")(y)
    y = _conv_bn(y, filters, 3, 1, f"{prefix}_conv2", f"{prefix}_bn2")
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, stride, f"{prefix}_downsample_0", f"{prefix}_downsample_1")
    y = layers.Add(name=f"{prefix}_add")([y, shortcut])
    return layers.ReLU(name=f"{prefix}_out")(y)


def build(
    image_size: int,
    width: float = 1.0,
    embedding: str = "pooled",
    blocks: Sequence[int] = VARIANTS["resnet34"]["blocks"],
    name: str = "backbone",
) -> keras.Model:
    """Builds the ResNet trunk: normalised image (B, S, S, 3) -> pooled features (B, 512*width).

    Args:
        image_size: input height = width in pixels.
        width: channel multiplier (1.0 = torchvision; < 1 only for tiny test models).
        embedding: only "pooled" (global average pool, torchvision's ``avgpool``).
        blocks: basic blocks per stage, e.g. (3, 4, 6, 3) for ResNet-34.
        name: name of the returned functional model.
    """
    if embedding != "pooled":
        raise ValueError(f"resnet supports embedding='pooled' only, got {embedding!r}")
    if len(blocks) != len(STAGE_WIDTHS):
        raise ValueError(f"blocks must have {len(STAGE_WIDTHS)} entries, got {tuple(blocks)}")
    inputs = keras.Input((image_size, image_size, 3), name="image_norm")
    x = _conv_bn(inputs, _channels(64, width), 7, 2, "conv1", "bn1")
    x = layers.ReLU(name="relu")(x)
    x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="maxpool")(x)
    for stage, (n_blocks, filters) in enumerate(zip(blocks, STAGE_WIDTHS), start=1):
        for j in range(n_blocks):
            stride = 2 if (j == 0 and stage > 1) else 1
            x = _basic_block(x, _channels(filters, width), stride, f"layer{stage}_{j}")
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    return keras.Model(inputs, x, name=name)


_STAGE = re.compile(r"^layer(\d+)_")


def stage_of(layer_name: str) -> int:
    """0 for the stem (conv1/bn1/maxpool), i for torchvision's ``layer{i}``."""
    m = _STAGE.match(layer_name)
    return int(m.group(1)) if m else 0
