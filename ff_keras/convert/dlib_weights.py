"""dlib's face-recognition ResNet -> Keras weights: affines folded into convs, strict loading.

The layer sequence read by ``dlib_format`` is checked against
``ff_keras.models.backbones.dlib_resnet.dlib_layer_kinds`` and every parameter count/shape is
asserted: a different network fails loudly. Converted files are written by
``convert.weight_files.write_weights`` (name from the arrays' content, so it is the same for
every conversion of the same ``.dat``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ff_keras.convert.dlib_format import EXPECTED_PARAMS, DlibFormatError, DlibLayer, read_dlib_net
from ff_keras.convert.weight_files import read_weights, write_weights
from ff_keras.models.backbones import dlib_resnet

STEM = "dlib_resnet"  # converted files are weights/dlib_resnet_<sha8>.npz


def keras_weights(layers: list[DlibLayer]) -> dict[str, np.ndarray]:
    """Maps dlib layers to ``{"<keras layer>/kernel|bias": array}`` with affines folded.

    conv(x)*g + b == conv'(x) with kernel' = kernel*g (per output channel) and
    bias' = bias*g + b; dlib's NCHW filters (out, in, rows, cols) become HWIO.
    """
    kinds = [layer.kind for layer in layers]
    expected = dlib_resnet.dlib_layer_kinds()
    if kinds != expected:
        first = next(i for i, (a, b) in enumerate(zip(kinds + ["<end>"], expected + ["<end>"])) if a != b)
        raise DlibFormatError(
            f"dlib layer sequence differs from dlib_resnet at layer {first}: "
            f"found {kinds[first:first + 3]}, expected {expected[first:first + 3]}"
        )
    inp = layers[0].meta["mean"]
    if not np.allclose(inp, dlib_resnet.SPEC.mean, atol=1e-4) or layers[0].meta["size"] != (150, 150):
        raise DlibFormatError(f"input layer {layers[0].meta} does not match dlib_resnet.SPEC")
    n_conv_fc = sum(layer.num_params for layer in layers if layer.kind in ("con", "fc"))
    if n_conv_fc != EXPECTED_PARAMS:
        raise DlibFormatError(f"conv+fc parameter count {n_conv_fc:,} != {EXPECTED_PARAMS:,}")

    convs = [i for i, k in enumerate(kinds) if k == "con"]
    names = dlib_resnet.conv_layer_names()
    if len(convs) != len(names):
        raise DlibFormatError(f"{len(convs)} convolutions in the file, {len(names)} in dlib_resnet")
    out: dict[str, np.ndarray] = {}
    for name, i in zip(names, convs):
        con, aff = layers[i], layers[i + 1]
        if aff.meta.get("mode") != "conv" or aff.meta.get("disabled"):
            raise DlibFormatError(f"{name}: affine after it is {aff.meta}, want an enabled conv-mode affine")
        gamma, beta = aff.arrays["gamma"], aff.arrays["beta"]
        filters = con.arrays["filters"]
        if gamma.shape != (filters.shape[0],):
            raise DlibFormatError(f"{name}: affine of {gamma.shape} after {filters.shape[0]} filters")
        bias = con.arrays.get("biases", np.zeros(filters.shape[0], np.float32))
        out[f"{name}/kernel"] = (filters.transpose(2, 3, 1, 0) * gamma).astype(np.float32)
        out[f"{name}/bias"] = (bias * gamma + beta).astype(np.float32)
    fc = layers[-1]
    if fc.meta["num_inputs"] != 256 or fc.meta["num_outputs"] != 128 or "biases" in fc.arrays:
        raise DlibFormatError(f"fc layer {fc.meta} is not fc_no_bias 256 -> 128")
    out["descriptor/kernel"] = fc.arrays["weights"].reshape(256, 128)  # x @ W, already (in, out)
    return out


def _find_layers(model) -> dict[str, Any]:
    """All layers by name, looking into nested models (build_model may wrap the backbone)."""
    found: dict[str, Any] = {}
    for layer in model.layers:
        found[layer.name] = layer
        if hasattr(layer, "layers"):
            found.update(_find_layers(layer))
    return found


def load_dlib_weights(model, path: Path) -> list[str]:
    """Assigns converted dlib weights to the dlib_resnet layers of ``model``, strictly.

    Every conv of the backbone must receive a kernel and bias of the exact shape; the
    descriptor kernel may be left over only when the model has no ``descriptor`` layer
    ("pooled" embedding). Returns the names of the weights that were not used.
    """
    weights = read_weights(path)
    found = _find_layers(model)
    unused = []
    for key, value in weights.items():
        layer_name, attr = key.split("/")
        if layer_name not in found:
            if layer_name == "descriptor":
                unused.append(key)
                continue
            raise ValueError(f"{path}: model has no layer {layer_name!r} for weight {key!r}")
        var = {"kernel": found[layer_name].kernel, "bias": getattr(found[layer_name], "bias", None)}[attr]
        if var is None or tuple(var.shape) != value.shape:
            shape = None if var is None else tuple(var.shape)
            raise ValueError(f"{key}: file shape {value.shape} != model shape {shape}")
        var.assign(value)
    missing = [n for n in dlib_resnet.conv_layer_names() if f"{n}/kernel" not in weights]
    if missing:
        raise ValueError(f"{path}: no weights for {missing[:3]}...")
    return unused


def convert_dlib_model(dat_path: Path, out_dir: Path) -> Path:
    """Converts dlib's ``.dat`` to ``<out_dir>/dlib_resnet_<sha8>.npz``; returns the file written.

    The name's hash is ``weight_files.weights_digest`` of the converted arrays (not of the
    zip bytes, which hold timestamps), so converting the same ``.dat`` again gives the same
    file name and configs can pin it.
    """
    dat_path = Path(dat_path)
    if not dat_path.is_file():
        raise FileNotFoundError(f"dlib model {dat_path} not found")
    weights = keras_weights(read_dlib_net(dat_path))
    n = sum(v.size for v in weights.values())
    if n != EXPECTED_PARAMS:
        raise DlibFormatError(f"converted {n:,} parameters, expected {EXPECTED_PARAMS:,}")
    return write_weights(weights, out_dir, STEM, sep="_")
