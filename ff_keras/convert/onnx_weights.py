"""Trained weights read back out of an exported ONNX file into the Keras graph that produced it.

A fresh machine holds the released ``models/*.onnx`` but not the training checkpoint behind
it, and fine-tuning from the release needs the weights in Keras. tf2onnx keeps every
variable as an initializer named after its Keras layer (``.../stage1_block0_conv1_1/
convolution/ReadVariableOp:0`` for a kernel, ``.../Squeeze:0`` or ``.../BiasAdd/...`` for a
bias), with convolution kernels in ONNX's ``[out, in, kh, kw]`` layout. Matching is by layer
name and strict: every value found must fit its layer exactly, and only training-only heads
(``race_utk``: exports drop them) may be absent; they keep their initial weights and are
reported. Architectures with batch normalisation are refused by that rule: the export folds
BN into the convolutions, so the separate values no longer exist in the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from ff_keras.labels import CONTRACT_HEADS, REGRESSION_HEADS

# ``<prefix>/<layer>_<k>/<op...>``: tf2onnx's name for a variable read inside layer ``<layer>``.
_SEGMENT = re.compile(r"^(?P<layer>.+?)(?:_\d+)?$")


@dataclass
class OnnxWeightsReport:
    loaded: list[str] = field(default_factory=list)  # layers whose every weight came from the file
    missing: list[str] = field(default_factory=list)  # training-only heads the file does not hold

    def summary(self) -> str:
        return f"{len(self.loaded)} layers loaded, not in the file: {self.missing or 'none'}"


def _weighted_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _weighted_layers(layer)
        elif layer.weights:
            yield layer


def onnx_initializers_by_layer(path: str | Path, layer_names: set[str]) -> dict[str, list[np.ndarray]]:
    """Float initializers of ``path`` grouped under the layer name their tensor name contains."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    grouped: dict[str, list[np.ndarray]] = {}
    for tensor in proto.graph.initializer:
        value = numpy_helper.to_array(tensor)
        if value.dtype != np.float32:
            continue
        owners = {m["layer"] for seg in tensor.name.split("/") if (m := _SEGMENT.match(seg))} & layer_names
        owners |= set(tensor.name.split("/")) & layer_names
        if len(owners) == 1:
            grouped.setdefault(owners.pop(), []).append(value)
    return grouped


def _to_keras_layout(values: list[np.ndarray], layer: keras.layers.Layer) -> list[np.ndarray]:
    """The layer's weights in its own order, from the file's (unordered) values; raises on any misfit."""
    if isinstance(layer, keras.layers.Conv2D):
        values = [v.transpose(2, 3, 1, 0) if v.ndim == 4 else v for v in values]
    shapes = [tuple(w.shape) for w in layer.weights]
    if len(set(shapes)) < len(shapes):
        raise ValueError(f"layer {layer.name!r} has weights of the same shape {shapes}: which file value "
                         "is which cannot be told from the ONNX file")
    pending = list(values)
    ordered = []
    for weight in layer.weights:
        shape = tuple(weight.shape)
        fits = [i for i, v in enumerate(pending) if v.shape == shape or (v.size == np.prod(shape) and v.ndim <= 1)]
        if not fits:
            raise ValueError(f"layer {layer.name!r}: no value of shape {shape} for {weight.path} in the ONNX file "
                             f"(found shapes {[v.shape for v in values]})")
        ordered.append(pending.pop(fits[0]).reshape(shape))
    if pending:
        raise ValueError(f"layer {layer.name!r}: the ONNX file holds {len(pending)} more value(s) than its "
                         f"weights ({[v.shape for v in pending]})")
    return ordered


def load_onnx_weights(model: keras.Model, path: str | Path) -> OnnxWeightsReport:
    """Sets every weight of ``model`` from ``path`` (a tf2onnx export of the same graph).

    Raises:
        ValueError: naming the layers the file lacks (other than training-only heads) or a
            value that does not fit its layer.
    """
    layers = list(_weighted_layers(model))
    exported = {*CONTRACT_HEADS, *REGRESSION_HEADS}
    optional = {name for name in model.output if name not in exported} if isinstance(model.output, dict) else set()
    grouped = onnx_initializers_by_layer(path, {layer.name for layer in layers})
    if not grouped:
        raise ValueError(f"{path}: no initializer is named after a layer of {model.name!r}; "
                         "is it an export of this architecture?")
    report = OnnxWeightsReport(missing=[layer.name for layer in layers if layer.name not in grouped])
    absent = [name for name in report.missing if name not in optional]
    if absent:
        raise ValueError(f"{path} holds no weights for layers {absent[:8]}{' ...' if len(absent) > 8 else ''} "
                         f"of {model.name!r} (batch normalisation is folded away on export; only "
                         f"training-only heads {sorted(optional)} may be absent)")
    for layer in layers:
        if layer.name in grouped:
            layer.set_weights(_to_keras_layout(grouped[layer.name], layer))
            report.loaded.append(layer.name)
    return report
