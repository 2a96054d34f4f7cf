"""Pure-numpy reader of dlib's face-recognition ResNet (``.dat``) and loader into Keras.

dlib serialises a network recursively (``dlib/dnn/core.h``): every wrapper writes its
version int and then its sub-network *before* its own layer, so the file holds all
wrapper versions outermost-first, then the input layer, then each layer's details
innermost-first (input -> output order). Integers use dlib's variable-length code
(``serialize.h``: a control byte = byte count | 0x80 if negative, then little-endian
bytes); scalars that are floats use ``float_details`` (int64 mantissa, int16 exponent);
tensors are raw little-endian float32 (``cuda/tensor.h``), so reading is fast.

The layer sequence is checked against :func:`ff_keras.models.backbones.dlib_resnet.dlib_layer_kinds`
and every parameter count/shape is asserted: a different network fails loudly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

EXPECTED_PARAMS = 5_607_488  # dlib's own count for dlib_face_recognition_resnet_model_v1


class DlibFormatError(ValueError):
    """The byte stream is not the dlib network this reader understands."""


class _Reader:
    def __init__(self, data: bytes):
        self.buf = data
        self.pos = 0

    def _fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{what} at byte {self.pos} of {len(self.buf)}")

    def int(self) -> int:
        ctrl = self.buf[self.pos]
        size = ctrl & 0x0F
        if size == 0 or size > 8 or ctrl & 0x70:
            raise self._fail(f"bad integer control byte {ctrl:#x}")
        val = int.from_bytes(self.buf[self.pos + 1 : self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -val if ctrl & 0x80 else val

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        if exponent >= 32000:  # float_details::is_inf / is_ninf / is_nan
            return {32000: np.inf, 32001: -np.inf}.get(exponent, np.nan)
        return float(np.ldexp(float(mantissa), exponent))

    def bool(self) -> bool:
        ch = self.buf[self.pos : self.pos + 1]
        if ch not in (b"0", b"1"):
            raise self._fail(f"bad bool {ch!r}")
        self.pos += 1
        return ch == b"1"

    def string(self) -> str:
        n = self.int()
        s = self.buf[self.pos : self.pos + n]
        self.pos += n
        return s.decode("ascii")

    def at_string(self, prefix: bytes) -> bool:
        """Whether a string starting with ``prefix`` comes next (and not an int)."""
        n = len(prefix)
        return self.buf[self.pos + 2 : self.pos + 2 + n] == prefix and self.buf[self.pos] == 1

    def tensor(self) -> np.ndarray:
        if (version := self.int()) != 2:
            raise self._fail(f"tensor version {version} (want 2)")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        end = self.pos + 4 * count
        if end > len(self.buf):
            raise self._fail(f"tensor {shape} runs past the end")
        arr = np.frombuffer(self.buf, "<f4", count, self.pos).reshape(shape)
        self.pos = end
        return arr.astype(np.float32)

    def alias(self) -> tuple[int, ...]:
        if (version := self.int()) != 1:
            raise self._fail(f"alias_tensor version {version} (want 1)")
        return tuple(self.int() for _ in range(4))


@dataclass
class DlibLayer:
    """One dlib computational layer: its kind (e.g. ``con``), hyper-parameters and arrays."""

    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_params(self) -> int:
        return int(sum(a.size for k, a in self.arrays.items() if k == "params"))


def _weighted(r: _Reader, kind: str, params: np.ndarray, meta: dict[str, Any], key: str) -> DlibLayer:
    """Tail shared by ``con_`` and ``fc_``: weight/bias alias shapes, multipliers, use_bias."""
    shapes = [r.alias(), r.alias()]
    if kind == "fc":
        meta["bias_mode"] = r.int()  # FC_HAS_BIAS = 0, FC_NO_BIAS = 1
    meta["multipliers"] = [r.float() for _ in range(4)]
    meta["use_bias"] = r.bool() if meta.pop("has_use_bias") else True
    if meta.get("bias_mode", 0) or not meta["use_bias"]:
        shapes = shapes[:1]
    sizes = [int(np.prod(s)) for s in shapes]
    if sum(sizes) != params.size:
        raise DlibFormatError(f"{kind}: {params.size} parameters do not split into {shapes}")
    flat = params.ravel()
    arrays = {"params": params, key: flat[: sizes[0]].reshape(shapes[0])}
    if len(shapes) == 2:
        arrays["biases"] = flat[sizes[0] :]
    return DlibLayer(kind, meta, arrays)


def _read_details(r: _Reader) -> DlibLayer:
    """Reads one layer's details, dispatching on dlib's version string (``layers.h``)."""
    tag = r.string()
    if tag in ("con_4", "con_5"):
        params = r.tensor()
        keys = ("num_filters", "nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
        meta = {k: r.int() for k in keys} | {"has_use_bias": tag == "con_5"}
        return _weighted(r, "con", params, meta, "filters")
    if tag in ("fc_2", "fc_3"):
        meta = {"num_outputs": r.int(), "num_inputs": r.int(), "has_use_bias": tag == "fc_3"}
        return _weighted(r, "fc", r.tensor(), meta, "weights")
    if tag in ("affine_", "affine_2"):  # batch norm folded by dlib; an unfolded bn_con2 is refused
        params = r.tensor()
        n_gamma = int(np.prod(r.alias()))
        if int(np.prod(r.alias())) + n_gamma != params.size:
            raise DlibFormatError(f"affine: {params.size} parameters != gamma + beta")
        flat = params.ravel()
        mode = {0: "conv", 1: "fc"}.get(r.int(), "?")  # dlib's layer_mode enum
        disabled = r.bool() if tag == "affine_2" else False
        arrays = {"params": params, "gamma": flat[:n_gamma], "beta": flat[n_gamma:]}
        return DlibLayer("affine", {"mode": mode, "disabled": disabled}, arrays)
    if tag in ("max_pool_2", "avg_pool_2"):
        keys = ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
        return DlibLayer(tag[:-2], {k: r.int() for k in keys})
    if tag in ("relu_", "add_prev_"):
        return DlibLayer(tag[:-1])
    raise DlibFormatError(f"unsupported dlib layer {tag!r} at byte {r.pos}")


def read_dlib_net(dat_path: Path) -> list[DlibLayer]:
    """Parses a dlib ``loss_metric`` network file into its layers, input -> output.

    Tag and skip wrappers carry no data; they appear as ``DlibLayer("tag")`` so the
    sequence can be checked against the architecture. The first entry is ``input``.
    """
    r = _Reader(Path(dat_path).read_bytes())
    try:
        return _read_net(r, dat_path)
    except (IndexError, UnicodeDecodeError) as err:  # ran off the end / garbage string
        raise r._fail(f"{dat_path}: truncated or corrupt ({err})") from err


def _read_net(r: _Reader, dat_path: Path) -> list[DlibLayer]:
    if r.int() != 1 or (loss := r.string()) not in ("loss_metric_", "loss_metric_2"):
        raise DlibFormatError(f"{dat_path}: not a dlib loss_metric network")
    if loss == "loss_metric_2":
        r.float(), r.float()  # margin, distance threshold: training-only
    wrappers: list[int] = []  # version of each wrapper, outermost first
    while not r.at_string(b"input_"):
        wrappers.append(r.int())
        if len(wrappers) > 10_000:
            raise r._fail("no input layer found")
    if r.string() != "input_rgb_image_sized":
        raise r._fail("input layer is not input_rgb_image_sized")
    inp = DlibLayer("input", {"mean": (r.float(), r.float(), r.float()), "size": (r.int(), r.int())})
    layers = [inp]
    for depth, version in enumerate(reversed(wrappers)):
        if depth == 0 or version >= 2:  # add_layer: details then training state
            layer = _read_details(r)
            r.bool(), r.bool(), r.bool()  # setup called, gradient stale, output disabled
            for _ in range(3):  # x_grad, cached_output, params_grad / grad_final
                r.tensor()
            if depth == 0 and version >= 3:
                r.int()  # _sample_expansion_factor of the input-adjacent layer
            layers.append(layer)
        else:  # add_tag_layer / add_skip_layer: nothing after the sub-network
            layers.append(DlibLayer("tag"))
    if r.pos != len(r.buf):
        raise r._fail("trailing bytes after the network")
    return layers


# === Keras weights ===


def keras_weights(layers: list[DlibLayer]) -> dict[str, np.ndarray]:
    """Maps dlib layers to ``{"<keras layer>/kernel|bias": array}`` with affines folded.

    conv(x)*g + b == conv'(x) with kernel' = kernel*g (per output channel) and
    bias' = bias*g + b; dlib's NCHW filters (out, in, rows, cols) become HWIO.
    """
    from ff_keras.models.backbones import dlib_resnet

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
    with np.load(path) as npz:
        weights = {k: npz[k] for k in npz.files}
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
    from ff_keras.models.backbones import dlib_resnet

    missing = [n for n in dlib_resnet.conv_layer_names() if f"{n}/kernel" not in weights]
    if missing:
        raise ValueError(f"{path}: no weights for {missing[:3]}...")
    return unused


def convert_dlib_model(dat_path: Path, out_path: Path) -> Path:
    """Converts dlib's ``.dat`` to a Keras-ready ``.npz``; returns the file written.

    If ``out_path`` is a directory (or has no suffix) the file is named
    ``dlib_resnet_<sha256[:8]>.npz`` after its own content (timm convention).
    """
    dat_path, out_path = Path(dat_path), Path(out_path)
    if not dat_path.is_file():
        raise FileNotFoundError(f"dlib model {dat_path} not found")
    weights = keras_weights(read_dlib_net(dat_path))
    n = sum(v.size for v in weights.values())
    if n != EXPECTED_PARAMS:
        raise DlibFormatError(f"converted {n:,} parameters, expected {EXPECTED_PARAMS:,}")
    import io

    buf = io.BytesIO()
    np.savez(buf, **weights)
    data = buf.getvalue()
    if out_path.is_dir() or not out_path.suffix:
        out_path = out_path / f"dlib_resnet_{hashlib.sha256(data).hexdigest()[:8]}.npz"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(data)
    return out_path


def dlib_reference(rgb_images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """dlib's own aligned 150 px chips and 128-d descriptors, the parity reference.

    Face: the largest HOG detection, else the central 2/3 of the crop (where a padding
    0.25 chip puts it); 5 landmarks; ``get_face_chip(size=150, padding=0.25)`` as in
    dlib's example. The descriptor is ``compute_face_descriptor(chip)``: dlib's raw fc
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
        h, w = rgb.shape[:2]
        dets = detector(rgb, 0)
        rect = max(dets, key=lambda r: r.area()) if len(dets) else dlib.rectangle(w // 6, h // 6, w - w // 6, h - h // 6)
        chip = dlib.get_face_chip(rgb, predictor(rgb, rect), size=150, padding=0.25)
        chips.append(chip)
        descriptors.append(np.asarray(net.compute_face_descriptor(chip), np.float32))
    return np.stack(chips), np.stack(descriptors)


def normalise(chips: np.ndarray) -> np.ndarray:
    """dlib's ``input_rgb_image``: (pixel - mean_rgb) / 256 in float32."""
    from ff_keras.models.backbones.dlib_resnet import SPEC

    return (chips.astype(np.float32) - np.asarray(SPEC.mean, np.float32)) / np.float32(256.0)


def default_dat_path() -> Path:
    """The ``.dat`` shipped by the ``face-recognition-models`` pip package."""
    from ff_keras.splits.identity import face_models_dir

    return face_models_dir() / "dlib_face_recognition_resnet_model_v1.dat"


def verify_against_dlib(weights: Path, n_images: int = 8, atol: float = 1e-4) -> float:
    """Max abs difference to dlib's own descriptors on real FairFace faces; raises above ``atol``."""
    from PIL import Image

    from ff_keras.models.backbones import dlib_resnet
    from ff_keras.data.readers import resolve_data_root

    root = resolve_data_root() / "fairface" / "val"
    images = [np.asarray(Image.open(root / f"{i}.jpg").convert("RGB")) for i in range(1, n_images + 1)]
    chips, want = dlib_reference(images)
    model = dlib_resnet.build(150, embedding="descriptor")
    load_dlib_weights(model, weights)
    diff = float(np.abs(model.predict(normalise(chips), verbose=0) - want).max())
    if not diff <= atol:
        raise AssertionError(f"Keras vs dlib descriptors: max abs diff {diff:.2e} > {atol}")
    return diff
