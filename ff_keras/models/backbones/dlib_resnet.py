"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) in Keras.

Mirrors ``anet_type`` of dlib's ``examples/dnn_face_recognition_ex.cpp`` (weights by
Davis King, trained on ~3 M faces). dlib writes the network outermost-first; read
inside-out it is: 7x7/2 conv 32 -> affine -> relu -> 3x3/2 max-pool, then five levels
(``alevel4`` .. ``alevel0``) of residual blocks with 32, 64, 128, 256, 256 filters
(3, 4, 3, 3, 1 blocks; all but the first level start with a down-sampling block),
then a global average (256-d, "pooled") and a 128-d ``fc_no_bias`` ("descriptor").

dlib semantics kept here, each checked in dlib's source:
- ``con_`` pads ``k//2`` only when the stride is 1 and *not at all* for strided
  convolutions (``layers.h``: ``_padding_y = _stride_y!=1? 0 : _nr/2``); pools too.
  So strided convs and pools are ``padding="valid"`` and stride-1 3x3 convs ``"same"``.
- ``affine_`` is batch norm folded to a fixed per-channel scale and shift with no
  trainable parameters (``get_layer_params()`` is empty). It always follows a conv,
  so the converter folds it into that conv's kernel and bias (exact algebra); the Keras
  net has no normalisation layers and exactly dlib's 5,607,488 parameters.
- ``add_prev_`` adds tensors of different shapes by treating missing elements as zero
  (``tt::add``), aligned at index 0. Down-sampling blocks add a 2x2/2 average-pooled
  shortcut with fewer channels, and at 150 px the 8x8 level yields a 3x3 block output
  next to a 4x4 pooled shortcut, so both are zero-padded at the end (bottom/right,
  high channels) to the larger shape before ``Add``.
- ``input_rgb_image`` feeds ``(pixel - mean_rgb) / 256`` (``input.h``): see ``SPEC``.
"""

from __future__ import annotations

import re

import keras
from keras import layers

from ff_keras.data.preprocess import BackboneSpec

# (filters, blocks, first block down-samples) for dlib's alevel4 .. alevel0.
STAGES: tuple[tuple[int, int, bool], ...] = (
    (32, 3, False),
    (64, 4, True),
    (128, 3, True),
    (256, 3, True),
    (256, 1, True),
)
STEM_FILTERS = 32
DESCRIPTOR_DIM = 128
EMBEDDINGS = ("pooled", "descriptor")

# x_norm = (x / 1 - mean) / 256, exactly input_rgb_image's float arithmetic.
SPEC = BackboneSpec(
    mean=(122.782, 117.001, 104.298), std=(256.0, 256.0, 256.0), scale=1.0, embedding_dim=256
)
MIN_IMAGE_SIZE = 103  # smallest input whose last down-sampling conv still sees 3x3
HEAD_STAGE = len(STAGES) + 1  # stage_of() for the global pool and the descriptor layer


def _conv(x, filters: int, kernel: int, stride: int, name: str):
    # dlib pads k//2 for stride 1 and nothing for stride > 1 (see module docstring).
    padding = "same" if stride == 1 else "valid"
    return layers.Conv2D(filters, kernel, strides=stride, padding=padding, name=name)(x)


def _zero_pad_to(x, height: int, width: int, channels: int, name: str):
    """Zero-pads at the high end of H, W and C, as dlib's ``tt::add`` treats missing elements."""
    _, h, w, c = x.shape
    if (h, w) != (height, width):
        x = layers.ZeroPadding2D(((0, height - h), (0, width - w)), name=f"{name}_padhw")(x)
    if c != channels:
        # Standard layers only (no Lambda/custom layer) so .keras/ONNX export needs no imports.
        x = layers.Reshape((height, width, c, 1), name=f"{name}_expand")(x)
        x = layers.ZeroPadding3D(((0, 0), (0, 0), (0, channels - c)), name=f"{name}_padc")(x)
        x = layers.Reshape((height, width, channels), name=f"{name}_squeeze")(x)
    return x


def _block(x, filters: int, stride: int, name: str):
    """dlib ``ares``/``ares_down``: relu(block(x) + shortcut), affines folded into convs."""
    y = _conv(x, filters, 3, stride, f"{name}_conv1")
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(y, filters, 3, 1, f"{name}_conv2")
    shortcut = x
    if stride != 1:
        shortcut = layers.AveragePooling2D(2, 2, padding="valid", name=f"{name}_pool")(x)
    shape = [max(a, b) for a, b in zip(y.shape[1:], shortcut.shape[1:])]
    y = _zero_pad_to(y, *shape, name=f"{name}_res")
    shortcut = _zero_pad_to(shortcut, *shape, name=f"{name}_short")
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def build(
    image_size: int, width: float = 1.0, embedding: str = "pooled", name: str = "backbone"
) -> keras.Model:
    """Builds the network on a normalised image (see ``SPEC``).

    Args:
        image_size: square input side; 150 is dlib's, any size >= 103 works (the stack
            is size-agnostic; the zero padding of residual sums follows static shapes).
        width: filter multiplier; only 1.0 can load dlib's weights (smaller for tests).
        embedding: "pooled" (256-d global average) or "descriptor" (dlib's 128-d output).
        name: name of the returned model (``ff_keras.models.multihead`` looks the backbone up by it).

    Returns:
        keras.Model mapping (B, S, S, 3) normalised float32 to (B, D).
    """
    if embedding not in EMBEDDINGS:
        raise ValueError(f"embedding {embedding!r} not in {EMBEDDINGS}")
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"dlib_resnet needs an int image_size >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width!r}")

    def scaled(filters: int) -> int:
        return max(1, round(filters * width))

    # === Layers (stem) ===
    inputs = keras.Input((image_size, image_size, 3), name="dlib_input")
    x = _conv(inputs, scaled(STEM_FILTERS), 7, 2, "stem_conv")
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.MaxPooling2D(3, 2, padding="valid", name="stem_pool")(x)
    # === Layers (residual stages, dlib alevel4 -> alevel0) ===
    for s, (filters, blocks, down) in enumerate(STAGES, start=1):
        for b in range(blocks):
            stride = 2 if down and b == 0 else 1
            x = _block(x, scaled(filters), stride, f"stage{s}_block{b}")
    # === Functional Model ===
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if embedding == "descriptor":
        x = layers.Dense(DESCRIPTOR_DIM, use_bias=False, name="descriptor")(x)
    return keras.Model(inputs, x, name=name)


def stage_of(layer_name: str) -> int:
    """0 = input and stem, 1..5 = residual stages, 6 = global pool / descriptor."""
    if layer_name == "dlib_input" or layer_name.startswith("stem_"):
        return 0
    if m := re.match(r"stage(\d+)_", layer_name):
        return int(m.group(1))
    if layer_name in ("pool", "descriptor"):
        return HEAD_STAGE
    raise ValueError(f"layer {layer_name!r} is not part of dlib_resnet")


def dlib_layer_kinds() -> list[str]:
    """The layer sequence dlib's reader must find (input -> output); tags/skips are 'tag'."""
    kinds = ["input", "con", "affine", "relu", "max_pool"]
    for _, blocks, down in STAGES:
        for b in range(blocks):
            body = ["tag", "con", "affine", "relu", "con", "affine"]
            shortcut = ["tag", "tag", "avg_pool"] if down and b == 0 else []
            kinds += body + shortcut + ["add_prev", "relu"]
    return kinds + ["avg_pool", "fc"]


def conv_layer_names() -> list[str]:
    """Keras names of the convolutions in dlib's order (each carries a folded affine)."""
    names = ["stem_conv"]
    for s, (_, blocks, _) in enumerate(STAGES, start=1):
        names += [f"stage{s}_block{b}_conv{i}" for b in range(blocks) for i in (1, 2)]
    return names
