"""Pure-numpy reader of dlib's face-recognition ResNet file (``.dat``).

dlib serialises a network recursively (``dlib/dnn/core.h``): every wrapper writes its
version int and then its sub-network *before* its own layer, so the file holds all
wrapper versions outermost-first, then the input layer, then each layer's details
innermost-first (input -> output order). Integers use dlib's variable-length code
(``serialize.h``: a control byte = byte count | 0x80 if negative, then little-endian
bytes); scalars that are floats use ``float_details`` (int64 mantissa, int16 exponent);
tensors are raw little-endian float32 (``cuda/tensor.h``), so reading is fast.
"""

from __future__ import annotations

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
