"""torchvision-layout state dict (numpy arrays) -> Keras weights. Pure numpy, no torch.

Keras layer names are the contract: layer ``layer2_0_downsample_1`` reads torch keys
``layer2.0.downsample.1.*``. Conversion is strict in the nanoGPT sense: every Keras weight
must be assigned, every torch key used (or dropped on purpose and listed), every shape must
match; otherwise a ``ConversionError`` lists all offending keys and nothing is assigned.

Saved files (``save_converted``) are ``.npz`` archives keyed ``backbone/<layer>/<attr>`` and
``head/<head>/<attr>`` with a content SHA256 prefix in the file name (timm ``convert/``; ``weight_files``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from ff_keras import labels
from ff_keras.convert.weight_files import read_weights, write_weights

BACKBONE_NAME = "backbone"  # same as ff_keras.models.multihead.BACKBONE_NAME (no import: keep this light)


class ConversionError(ValueError):
    """A state dict that does not fit the Keras model; the message lists every problem."""


def _conv(w: np.ndarray) -> np.ndarray:  # torch (out, in, kh, kw) -> keras (kh, kw, in, out)
    return w.transpose(2, 3, 1, 0)


def _depthwise(w: np.ndarray) -> np.ndarray:  # torch (c, 1, kh, kw) -> keras (kh, kw, c, 1)
    return w.transpose(2, 3, 0, 1)


def _identity(w: np.ndarray) -> np.ndarray:
    return w


# Keras layer class -> [(keras attribute, torch suffix, transform)].
RULES: dict[str, list[tuple[str, str, Callable[[np.ndarray], np.ndarray]]]] = {
    "Conv2D": [("kernel", "weight", _conv), ("bias", "bias", _identity)],
    "DepthwiseConv2D": [("kernel", "weight", _depthwise), ("bias", "bias", _identity)],
    "Dense": [("kernel", "weight", np.transpose), ("bias", "bias", _identity)],
    "BatchNormalization": [("gamma", "weight", _identity), ("beta", "bias", _identity),
                           ("moving_mean", "running_mean", _identity),
                           ("moving_variance", "running_var", _identity)],
}
ALWAYS_DROPPED = ("num_batches_tracked",)


def torch_prefix(layer_name: str) -> str:
    """``layer2_0_downsample_1`` -> ``layer2.0.downsample.1`` (the naming contract)."""
    return layer_name.replace("_", ".")


@dataclass
class ConversionReport:
    """What a conversion did: Keras-layout arrays by ``<scope>/<layer>/<attr>`` and key bookkeeping."""

    weights: dict[str, np.ndarray] = field(default_factory=dict)
    used_keys: list[str] = field(default_factory=list)
    dropped_keys: list[str] = field(default_factory=list)

    def summary(self) -> str:
        n = sum(int(a.size) for a in self.weights.values())
        return (f"{len(self.weights)} Keras weights ({n:,} values) from {len(self.used_keys)} torch keys; "
                f"dropped {len(self.dropped_keys)}: {_abbrev(self.dropped_keys)}")


def _abbrev(keys: Sequence[str], n: int = 6) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" ... (+{len(keys) - n})" if len(keys) > n else "")


def _weight_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if layer.weights]


def _split(model: keras.Model) -> tuple[keras.Model, list[keras.layers.Layer]]:
    """(backbone, top-level head layers) of a build_model model, or (backbone, []) for a bare one."""
    names = [layer.name for layer in model.layers]
    if BACKBONE_NAME in names and isinstance(model.get_layer(BACKBONE_NAME), keras.Model):
        top = [la for la in _weight_layers(model) if la.name != BACKBONE_NAME]
        return model.get_layer(BACKBONE_NAME), top
    return model, []


def convert_state_dict(
    model: keras.Model,
    state: Mapping[str, np.ndarray],
    fc: str | None = None,
    fc_order: Sequence[str] = labels.SOURCE_HEAD_ORDER,
    drop: Sequence[str] = (),
) -> ConversionReport:
    """Assigns a torchvision-layout state dict to ``model`` (a backbone or a build_model model).

    Args:
        model: a bare backbone, or a ``build_model`` model (nested ``backbone`` + heads).
        state: torch key -> numpy array (``tensor.numpy()``), e.g. a torchvision ``.pth``.
        fc: torch prefix of one concatenated classifier (FairFace's 18-way ``fc``) whose rows
            are sliced onto the heads in ``fc_order`` with ``labels.head_slices``; the heads
            must sit directly on the pooled features (``model.embed_dim=0``).
        fc_order: head order of ``fc``'s rows (FairFace: race 7, gender 2, age 9).
        drop: torch key prefixes to leave unused on purpose (e.g. ImageNet ``fc.``).

    Raises:
        ConversionError: listing every missing, unused or mis-shaped key; nothing is assigned.
    """
    backbone, top = _split(model)
    planner = _Planner(state)
    for layer in _weight_layers(backbone):
        planner.take(layer, torch_prefix(layer.name), BACKBONE_NAME)
    if fc is not None:
        top = _plan_fc_heads(planner, model, top, fc, fc_order)
    for layer in top:  # heads/embedding the state dict cannot fill
        planner.problems.append(f"Keras layer {layer.name!r} has no source in the state dict")
    dropped = [k for k in state if k.rsplit(".", 1)[-1] in ALWAYS_DROPPED or k.startswith(tuple(drop))]
    unused = sorted(set(state) - planner.used - set(dropped))
    if unused:
        planner.problems.append(f"{len(unused)} unused torch keys: {_abbrev(unused, 20)}")
    if planner.problems:
        raise ConversionError(f"cannot convert into {model.name!r}:\n  " + "\n  ".join(planner.problems))
    for var, _, value in planner.plan:
        var.assign(value.astype(var.dtype))
    return ConversionReport({k: v for _, k, v in planner.plan}, sorted(planner.used), sorted(dropped))


class _Planner:
    """Collects (variable, report key, value) assignments and every problem; assigns nothing."""

    def __init__(self, state: Mapping[str, np.ndarray]):
        self.state = state
        self.plan: list[tuple[keras.Variable, str, np.ndarray]] = []
        self.problems: list[str] = []
        self.used: set[str] = set()

    def take(self, layer: keras.layers.Layer, prefix: str, scope: str, rows: slice | None = None) -> None:
        rules = RULES.get(type(layer).__name__)
        if rules is None:
            self.problems.append(f"no conversion rule for layer {layer.name!r} ({type(layer).__name__})")
            return
        for attr, suffix, fn in rules:
            var = getattr(layer, attr, None)
            if var is None:
                continue  # e.g. conv without bias
            key = f"{prefix}.{suffix}"
            if key not in self.state:
                self.problems.append(f"missing torch key {key!r} for {layer.name}/{attr}")
                continue
            self.used.add(key)
            src = np.asarray(self.state[key])
            value = fn(src[rows] if rows is not None else src)
            if tuple(value.shape) != tuple(var.shape):
                self.problems.append(f"shape mismatch {key!r}: torch {src.shape} -> {value.shape}, "
                                     f"Keras {layer.name}/{attr} {tuple(var.shape)}")
                continue
            self.plan.append((var, f"{scope}/{layer.name}/{attr}", value))


def _plan_fc_heads(planner: _Planner, model: keras.Model, top: list[keras.layers.Layer], fc: str,
                   fc_order: Sequence[str]) -> list[keras.layers.Layer]:
    """Plans the rows of one concatenated classifier onto the heads; returns the layers left over."""
    if not top:
        planner.problems.append(f"fc={fc!r} given but {model.name!r} has no heads (a bare backbone)")
    slices = labels.head_slices(fc_order)
    by_name = {la.name: la for la in top}
    for head, rows in slices.items():
        layer = by_name.pop(head, None)
        if layer is None:
            planner.problems.append(f"model has no head {head!r} for rows {rows.start}:{rows.stop} of {fc!r}")
            continue
        planner.take(layer, fc, "head", rows)
    n_rows = sum(s.stop - s.start for s in slices.values())
    if f"{fc}.weight" in planner.state and planner.state[f"{fc}.weight"].shape[0] != n_rows:
        planner.problems.append(f"{fc}.weight has {planner.state[f'{fc}.weight'].shape[0]} rows, "
                                f"heads {list(fc_order)} need {n_rows}")
    return list(by_name.values())


def save_converted(report: ConversionReport, out_dir: str | Path, stem: str) -> Path:
    """Writes ``<out_dir>/<stem>-<sha8>.npz`` and returns its path."""
    return write_weights(report.weights, out_dir, stem)


def _load_scope(layers: Sequence[keras.layers.Layer], arrays: Mapping[str, np.ndarray],
                scope: str, path: Path) -> None:
    """Strictly assigns every ``scope/<layer>/<attr>`` array to ``layers``' weights."""
    want: dict[str, keras.Variable] = {}
    for layer in layers:
        for attr, _, _ in RULES.get(type(layer).__name__, []):
            if getattr(layer, attr, None) is not None:
                want[f"{scope}/{layer.name}/{attr}"] = getattr(layer, attr)
    have = {k for k in arrays if k.startswith(f"{scope}/")}
    missing, extra = sorted(set(want) - have), sorted(have - set(want))
    bad = [f"{k}: file {arrays[k].shape} vs model {tuple(want[k].shape)}"
           for k in sorted(set(want) & have) if tuple(arrays[k].shape) != tuple(want[k].shape)]
    if missing or extra or bad or not want:
        raise ConversionError(f"{path} does not fit scope {scope!r}: missing [{_abbrev(missing)}]; "
                              f"unexpected [{_abbrev(extra)}]; mis-shaped {bad}")
    for key, var in want.items():
        var.assign(arrays[key].astype(var.dtype))


def load_backbone_weights(backbone: keras.Model, path: str | Path) -> None:
    """Loads the ``backbone/`` arrays of a ``save_converted`` file into a bare backbone, strictly."""
    _load_scope(_weight_layers(backbone), read_weights(path), BACKBONE_NAME, Path(path))


def load_converted(model: keras.Model, path: str | Path) -> None:
    """Loads backbone and heads (e.g. FairFace's released classifier) into a build_model model."""
    arrays, path = read_weights(path), Path(path)
    backbone, top = _split(model)
    _load_scope(_weight_layers(backbone), arrays, BACKBONE_NAME, path)
    _load_scope(top, arrays, "head", path)
