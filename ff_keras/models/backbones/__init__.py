"""Backbone registry: name -> module path of a module exposing ``build`` and ``SPEC``.

Each backbone module defines
    SPEC: BackboneSpec  (input normalisation the weights expect, embedding width;
                         ``ff_keras.data.preprocess`` defines the contract and applies it)
    build(image_size: int, width: float = 1.0, embedding: str = "pooled") -> keras.Model
        mapping a *normalised* float image (B, H, W, 3) to a pooled embedding (B, D)
    stage_of(layer_name: str) -> int  (0 = stem, 1.. = residual stages) for staged freezing
Modules are imported lazily so that, e.g., serving never imports unused builders.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ff_keras.data.preprocess import IMAGENET, BackboneSpec

__all__ = ["BACKBONES", "IMAGENET", "BackboneSpec", "get_backbone"]


BACKBONES: dict[str, str] = {
    "resnet18": "ff_keras.models.backbones.resnet",
    "resnet34": "ff_keras.models.backbones.resnet",
    "mobilenet_v2": "ff_keras.models.backbones.mobilenet_v2",
    "dlib_resnet": "ff_keras.models.backbones.dlib_resnet",
}


def get_backbone(name: str) -> ModuleType:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    return importlib.import_module(BACKBONES[name])
