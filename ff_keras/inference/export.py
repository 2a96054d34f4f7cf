"""Export a training checkpoint to ``.keras``, SavedModel and ONNX, each verified after writing.

All three carry the same inference contract (``model_info.INPUT_CONTRACT``): input ``image``
float32 [N, H, W, 3] RGB 0-255; outputs ``age``/``gender``/``race`` probabilities =
softmax(logits / T_head) and, when the model was trained with it, ``age_years`` [N, 1] (age in
years, as regressed). Every writer reloads what it wrote and compares it with the Keras
reference on real faces; a violation raises ``ParityError`` so a bad artifact never ships.
The SavedModel is read back in a fresh process, as a downstream service would.
"""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ff_keras import labels
from ff_keras.data.crops import fairface_val_crops
from ff_keras.inference.predictor import LOG_EPS, apply_logit_bias, argmax_agreement, load_images, softmax
from ff_keras.model_info import ModelInfo, check_ambiguity, load_info, onnx_metadata, save_info

log = logging.getLogger(__name__)

KERAS_ATOL = 1e-6  # same graph, same runtime: only serialisation can differ
EXPORT_ATOL = 1e-4  # other runtimes (TF graph, ONNX Runtime) reorder float ops
OPSET = 17
N_PARITY = 64


class ParityError(AssertionError):
    """An exported artifact disagrees with the Keras reference beyond tolerance."""


@dataclass
class ExportReport:
    out_dir: Path
    artifacts: dict[str, str] = field(default_factory=dict)
    parity: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    n_parity_images: int = 0


def check_parity(
    name: str, reference: dict[str, np.ndarray], got: dict[str, np.ndarray], heads: Sequence[str], atol: float
) -> dict[str, dict[str, float]]:
    """Max-abs difference and argmax agreement per head; raises ParityError if either fails."""
    result = {}
    for h in heads:
        want, have = reference[h], got[h]
        if h in labels.REGRESSION_HEADS:  # [N] or [N, 1] years; argmax means nothing here
            want, have = want.reshape(-1), have.reshape(-1)
        if have.shape != want.shape:
            raise ParityError(f"{name}: head {h} shape {got[h].shape} != reference {reference[h].shape}")
        agree = 1.0 if h in labels.REGRESSION_HEADS else argmax_agreement({h: want}, {h: have}, [h])[h]
        result[h] = {"max_abs": float(np.max(np.abs(have - want))), "argmax_agreement": agree}
    bad = {h: r for h, r in result.items() if r["max_abs"] > atol or r["argmax_agreement"] < 1.0}
    if bad:
        raise ParityError(f"{name} disagrees with Keras (atol {atol}, argmax must agree 100%): {bad}")
    log.info("parity %s: %s", name, result)
    return result


# === Inference model ===


def _force_float32(config: Any) -> Any:
    """Rewrites every mixed dtype policy in a serialised Keras config to float32."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and isinstance(config.get("config"), dict):
            name = config["config"].get("name", "")
            if name.startswith("mixed_"):
                config = {**config, "config": {**config["config"], "name": "float32"}}
            return config
        return {k: _force_float32(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_force_float32(v) for v in config]
    if isinstance(config, str) and config.startswith("mixed_"):
        return "float32"
    return config


def to_float32(model):
    """Rebuilds a mixed-precision model with float32 layers and copies its weights over.

    float16 activations would make ONNX/TF outputs differ from training-time numerics in a
    runtime-dependent way, and ORT's CPU kernels are float32 anyway.
    """
    if all(layer.dtype_policy.name == "float32" for layer in _all_layers(model)):
        return model
    config = _force_float32(copy.deepcopy(model.get_config()))
    clone = model.__class__.from_config(config)
    clone.set_weights(model.get_weights())
    bad = [layer.name for layer in _all_layers(clone) if layer.dtype_policy.name != "float32"]
    if bad:
        raise RuntimeError(f"float32 rebuild left non-float32 layers: {bad[:5]}")
    return clone


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def inference_model(model, info: ModelInfo):
    """Wraps a logits model: ``image`` -> {head: softmax(logits / T_head)} for the contract heads.

    Raises:
        ValueError: if the model holds augmentation layers (they belong in tf.data) or lacks a head.
    """
    import keras

    augment = [layer.name for layer in _all_layers(model) if type(layer).__name__.startswith("Random")]
    if augment:
        raise ValueError(f"model contains augmentation layers {augment}; remove them before export")
    model = to_float32(model)
    size = info.image_size
    image = keras.Input((size, size, 3), name="image", dtype="float32")
    logits = model(image, training=False)
    outputs = {}
    for head in [*info.heads, *info.regression_heads]:
        if head not in logits:
            raise ValueError(f"model has no {head!r} output; it has {sorted(logits)}")
    for head in info.heads:
        t = float(info.temperature.get(head, 1.0))
        if t <= 0:
            raise ValueError(f"temperature for {head} must be > 0, got {t}")
        scaled = keras.layers.Rescaling(1.0 / t, name=f"{head}_temperature")(logits[head])
        outputs[head] = keras.layers.Softmax(name=f"{head}_probs", dtype="float32")(scaled)
    for head in info.regression_heads:  # years as the model predicts them: no softmax
        outputs[head] = keras.layers.Identity(name=f"{head}_out", dtype="float32")(logits[head])
    return keras.Model(image, outputs, name="ff_keras_inference")


def _keras_predict(model, images: np.ndarray, heads: Sequence[str], batch: int = 32) -> dict[str, np.ndarray]:
    chunks = [model(images[i : i + batch], training=False) for i in range(0, len(images), batch)]
    return {h: np.concatenate([np.asarray(c[h]) for c in chunks]) for h in heads}


def _serving_fn(model, size: int):
    import tensorflow as tf

    spec = [tf.TensorSpec([None, size, size, 3], tf.float32, name="image")]

    @tf.function(input_signature=spec)
    def serve(image):
        return model(image, training=False)

    return serve, spec


# === Writers (each verifies what it wrote) ===


def export_keras(model, path: Path, images: np.ndarray, reference: dict[str, np.ndarray]) -> dict:
    import keras

    model.save(path)
    reloaded = keras.saving.load_model(path, compile=False)
    got = _keras_predict(reloaded, images, list(reference))
    return check_parity("keras", reference, got, list(reference), KERAS_ATOL)


_SAVED_MODEL_RUNNER = """
import sys, numpy as np, tensorflow as tf
fn = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
x = np.load(sys.argv[2])
outs = [fn(image=tf.constant(x[i:i + 32])) for i in range(0, len(x), 32)]
np.savez(sys.argv[3], **{k: np.concatenate([o[k].numpy() for o in outs]) for k in outs[0]})
"""


def saved_model_outputs_fresh_process(path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """Runs the SavedModel's ``serving_default`` in a new interpreter (no shared TF state)."""
    with tempfile.TemporaryDirectory() as tmp:
        x_path, y_path = Path(tmp) / "x.npy", Path(tmp) / "y.npz"
        np.save(x_path, images)
        proc = subprocess.run(
            [sys.executable, "-c", _SAVED_MODEL_RUNNER, str(path), str(x_path), str(y_path)],
            check=False, capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        if proc.returncode != 0:
            raise ParityError(f"SavedModel {path} failed to load/run in a fresh process:\n{proc.stderr[-2000:]}")
        with np.load(y_path) as y:
            return {k: y[k] for k in y.files}


def export_saved_model(model, path: Path, images: np.ndarray, reference: dict[str, np.ndarray]) -> dict:
    import keras

    serve, _ = _serving_fn(model, images.shape[1])
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve)
    archive.write_out(str(path), verbose=False)
    got = saved_model_outputs_fresh_process(path, images)
    return check_parity("saved_model", reference, got, list(reference), EXPORT_ATOL)


def export_onnx(
    model, path: Path, info: ModelInfo, images: np.ndarray, reference: dict[str, np.ndarray], opset: int = OPSET
) -> dict:
    """tf2onnx conversion with a dynamic ``batch`` axis, metadata, full checker and ORT parity."""
    import onnx
    import tf2onnx

    serve, spec = _serving_fn(model, info.image_size)
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset)
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    for out in proto.graph.output:
        out.type.tensor_type.shape.dim[0].dim_param = "batch"
    outputs = [o.name for o in proto.graph.output]
    if sorted(outputs) != sorted([*info.heads, *info.regression_heads]) or proto.graph.input[0].name != "image":
        raise ParityError(f"ONNX graph has input {proto.graph.input[0].name!r}, outputs {outputs}")
    onnx.helper.set_model_props(proto, onnx_metadata(info))
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return _check_onnx(path, info, images, reference, "onnx", EXPORT_ATOL)


def _check_onnx(path: Path, info: ModelInfo, images, reference, name: str, atol: float) -> dict:
    from ff_keras.inference.predictor import OnnxPredictor

    got = OnnxPredictor(path, replace(info, outputs="probabilities")).predict(images)
    return check_parity(name, reference, got, list(reference), atol)


# === Adjusting an exported ONNX graph: flip TTA, class-prior correction ===


def _int64(name: str, values: Sequence[int]):
    from onnx import TensorProto, helper

    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64,
                                                                              [len(values)], values))


def _rename_outputs(graph, names: Sequence[str], suffix: str) -> dict[str, str]:
    """Points every producer and consumer of the graph outputs ``names`` at ``<name><suffix>``."""
    inner = {name: f"{name}{suffix}" for name in names}
    for node in graph.node:
        node.input[:] = [inner.get(n, n) for n in node.input]
        node.output[:] = [inner.get(n, n) for n in node.output]
    return inner


def add_flip_tta(proto: Any) -> Any:
    """The same ONNX graph run once on ``[image; mirrored image]``, each output the mean of the halves.

    Services calling the file get the flip-averaged predictions that ``scripts/evaluate.py
    --tta flip`` scores, at twice the compute, without code of their own. Probabilities stay
    normalised under the mean; ``age_years`` is averaged in years.
    """
    from onnx import helper

    out = copy.deepcopy(proto)
    graph = out.graph
    (image,) = [i.name for i in graph.input]
    outputs = [o.name for o in graph.output]
    both = "tta/image_and_mirror"
    for node in graph.node:  # the original graph now reads both halves
        node.input[:] = [both if n == image else n for n in node.input]
    inner = _rename_outputs(graph, outputs, "/tta_both")
    front = [
        _int64("tta/minus1", [-1]), _int64("tta/zero", [0]), _int64("tta/one", [1]), _int64("tta/width_axis", [2]),
        _int64("tta/lowest", [np.iinfo(np.int64).min]), _int64("tta/highest", [np.iinfo(np.int64).max]),
        # mirror = image[:, :, ::-1]; both = [image; mirror]; n = batch size
        helper.make_node("Slice", [image, "tta/minus1", "tta/lowest", "tta/width_axis", "tta/minus1"], ["tta/mirror"]),
        helper.make_node("Concat", [image, "tta/mirror"], [both], axis=0),
        helper.make_node("Shape", [image], ["tta/shape"]),
        helper.make_node("Slice", ["tta/shape", "tta/zero", "tta/one"], ["tta/n"]),
    ]
    back = []
    for name in outputs:
        halves = (f"tta/{name}_plain", f"tta/{name}_mirror")
        back += [
            helper.make_node("Slice", [inner[name], "tta/zero", "tta/n", "tta/zero"], [halves[0]]),
            helper.make_node("Slice", [inner[name], "tta/n", "tta/highest", "tta/zero"], [halves[1]]),
            helper.make_node("Mean", list(halves), [name]),
        ]
    nodes = [*front, *graph.node, *back]
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def add_prior_correction(proto: Any, weights: dict[str, Sequence[float]]) -> Any:
    """Each head's probabilities multiplied by per-class ``weights`` and renormalised.

    With weights ``prior ** -tau`` this is post-hoc logit adjustment (Menon et al., 2021): the
    argmax then favours classes the training rows under-represent (tau 1 targets balanced
    accuracy), without retraining.
    """
    from onnx import TensorProto, helper

    out = copy.deepcopy(proto)
    graph = out.graph
    inner = _rename_outputs(graph, list(weights), "/uncorrected")
    nodes = [_int64("prior/last_axis", [-1])]
    for head, w in weights.items():
        nodes += [
            helper.make_node("Constant", [], [f"prior/{head}_w"], value=helper.make_tensor(
                f"prior/{head}_w", TensorProto.FLOAT, [len(w)], [float(v) for v in w])),
            helper.make_node("Mul", [inner[head], f"prior/{head}_w"], [f"prior/{head}_weighted"]),
            helper.make_node("ReduceSum", [f"prior/{head}_weighted", "prior/last_axis"], [f"prior/{head}_sum"],
                             keepdims=1),
            helper.make_node("Div", [f"prior/{head}_weighted", f"prior/{head}_sum"], [head]),
        ]
    graph.node.extend(nodes)
    return out


def add_output_temperature(proto: Any, temperatures: dict[str, float]) -> Any:
    """Each head's final probabilities re-tempered as ``softmax(log p / T)``.

    Calibrates what the file actually returns, after the flip mean and the prior correction
    (a temperature inside the network would change their argmax); per row it is monotone,
    so every prediction stays the same.
    """
    from onnx import TensorProto, helper

    out = copy.deepcopy(proto)
    graph = out.graph
    inner = _rename_outputs(graph, list(temperatures), "/untempered")
    nodes = [helper.make_node("Constant", [], ["temper/eps"], value=helper.make_tensor(
        "temper/eps", TensorProto.FLOAT, [], [LOG_EPS]))]
    for head, t in temperatures.items():
        if not t > 0:
            raise ValueError(f"temperature of {head} must be > 0, got {t}")
        nodes += [
            helper.make_node("Constant", [], [f"temper/{head}_inv_t"], value=helper.make_tensor(
                f"temper/{head}_inv_t", TensorProto.FLOAT, [], [1.0 / t])),
            helper.make_node("Max", [inner[head], "temper/eps"], [f"temper/{head}_clipped"]),
            helper.make_node("Log", [f"temper/{head}_clipped"], [f"temper/{head}_log"]),
            helper.make_node("Mul", [f"temper/{head}_log", f"temper/{head}_inv_t"], [f"temper/{head}_scaled"]),
            helper.make_node("Softmax", [f"temper/{head}_scaled"], [head], axis=-1),
        ]
    graph.node.extend(nodes)
    return out


def add_logit_bias(proto: Any, logit_bias: dict[str, dict]) -> Any:
    """Each head's final probabilities adjusted as ``softmax(log p + b)``.

    ``logit_bias[head] = {"bias": [C]}`` or ``{"by": other_head, "bias": [G, C]}``: then the row of
    ``bias`` is picked per face by the argmax of ``other_head`` as it was before any bias step
    (e.g. race biases conditioned on the predicted gender: Latino men and Middle Eastern women are
    confused with different races). Numpy twin: ``predictor.apply_logit_bias``.
    """
    from onnx import TensorProto, helper

    out = copy.deepcopy(proto)
    graph = out.graph
    inner = _rename_outputs(graph, list(logit_bias), "/unbiased")
    nodes = [helper.make_node("Constant", [], ["bias/eps"], value=helper.make_tensor(
        "bias/eps", TensorProto.FLOAT, [], [LOG_EPS]))]
    for head, spec in logit_bias.items():
        b = np.asarray(spec["bias"], np.float32)
        nodes += [
            helper.make_node("Constant", [], [f"bias/{head}_b"], value=helper.make_tensor(
                f"bias/{head}_b", TensorProto.FLOAT, list(b.shape), b.reshape(-1).tolist())),
            helper.make_node("Max", [inner[head], "bias/eps"], [f"bias/{head}_clipped"]),
            helper.make_node("Log", [f"bias/{head}_clipped"], [f"bias/{head}_log"]),
        ]
        added = f"bias/{head}_b"
        if spec.get("by"):
            by = inner.get(spec["by"], spec["by"])
            nodes += [
                helper.make_node("ArgMax", [by], [f"bias/{head}_by"], axis=-1, keepdims=0),
                helper.make_node("Gather", [f"bias/{head}_b", f"bias/{head}_by"], [f"bias/{head}_rows"], axis=0),
            ]
            added = f"bias/{head}_rows"
        nodes += [
            helper.make_node("Add", [f"bias/{head}_log", added], [f"bias/{head}_z"]),
            helper.make_node("Softmax", [f"bias/{head}_z"], [head], axis=-1),
        ]
    graph.node.extend(nodes)
    return out


def check_logit_bias(logit_bias: dict[str, dict], info: ModelInfo) -> None:
    """Raises ``ValueError`` naming the head when a bias does not fit the model's heads and classes."""
    for head, spec in logit_bias.items():
        if head not in info.heads:
            raise ValueError(f"logit bias for unknown head {head!r}; the model's heads are {info.heads}")
        by = spec.get("by")
        if by is not None and (by not in info.heads or by == head):
            raise ValueError(f"logit bias of {head}: 'by' must be another head of {info.heads}, got {by!r}")
        want = (len(info.classes[by]), len(info.classes[head])) if by else (len(info.classes[head]),)
        shape = np.shape(spec.get("bias"))
        if shape != want:
            raise ValueError(f"logit bias of {head}: expected a bias of shape {list(want)}, got {list(shape)}")
        if not np.isfinite(np.asarray(spec["bias"], float)).all():
            raise ValueError(f"logit bias of {head} has non-finite values")


def prior_correction_weights(prior: Sequence[float], tau: float) -> list[float]:
    """``prior ** -tau`` scaled to mean 1 (the scale cancels in the renormalisation)."""
    if tau < 0:
        raise ValueError(f"prior correction tau must be >= 0, got {tau}")
    prior = np.asarray(prior, np.float64)
    if prior.ndim != 1 or (prior <= 0).any():
        raise ValueError(f"class priors must be positive, got {prior.tolist()}")
    w = prior**-tau
    return (w / w.mean()).tolist()


def adjusted_reference(predictor, images: np.ndarray, flip: bool, weights: dict[str, Sequence[float]],
                       temperatures: dict[str, float] | None = None, logit_bias: dict[str, dict] | None = None) -> dict:
    """What the adjusted graph must return, computed with the source model in numpy."""
    out = predictor.predict(images)
    if flip:
        mirrored = predictor.predict(images[:, :, ::-1].copy())
        out = {h: (out[h] + mirrored[h]) / 2 for h in out}
    for head, w in weights.items():
        p = out[head] * np.asarray(w, np.float32)
        out[head] = p / p.sum(-1, keepdims=True)
    for head, t in (temperatures or {}).items():
        out[head] = softmax(np.log(np.clip(out[head], LOG_EPS, 1.0)), t)
    before = dict(out)  # conditioning heads are read before any bias step, as in the graph
    for head, spec in (logit_bias or {}).items():
        by = before[spec["by"]].argmax(-1) if spec.get("by") else None
        out[head] = apply_logit_bias(before[head], spec["bias"], by)
    return out


def check_untempered(src: str | Path, info: ModelInfo) -> None:
    """Output temperatures need an export without temperatures of its own: the two would stack."""
    if info.temperature:
        raise ValueError(f"{src} is already temperature-scaled inside its network ({info.temperature}); "
                         "calibrate an export made without temperatures")


def write_adjusted_onnx(src: str | Path, dst: str | Path, info: ModelInfo, images: np.ndarray, *,
                        flip: bool = False, prior_weights: dict[str, Sequence[float]] | None = None,
                        temperatures: dict[str, float] | None = None, logit_bias: dict[str, dict] | None = None,
                        ambiguity: dict[str, float] | None = None) -> dict:
    """Writes ``src`` with flip TTA, prior correction, output temperatures and/or logit biases (in
    that order) to ``dst`` (metadata updated, ``ambiguity`` thresholds included), checked against
    the source model run in numpy on real faces (raises ParityError). Returns the parity report;
    the adjusted sidecar is ``adjusted_info(info, ...)``."""
    import onnx
    from ff_keras.inference.predictor import OnnxPredictor

    prior_weights = dict(prior_weights or {})
    if flip and info.tta != "none":
        raise ValueError(f"{src} already averages over flips (tta={info.tta!r})")
    redone = [h for h in prior_weights if h in info.prior_correction]
    if redone:
        raise ValueError(f"{src} already corrects the class priors of {redone}")
    unknown = [h for h in prior_weights if h not in info.heads or len(prior_weights[h]) != len(info.classes[h])]
    if unknown:
        raise ValueError(f"prior weights for {unknown} do not match the model's heads {info.heads} and their classes")
    temperatures = dict(temperatures or {})
    if temperatures:
        check_untempered(src, info)
    if [h for h in temperatures if h not in info.heads]:
        raise ValueError(f"temperatures for {sorted(temperatures)} do not match the model's heads {info.heads}")
    logit_bias = dict(logit_bias or {})
    check_logit_bias(logit_bias, info)
    if [h for h in logit_bias if h in info.logit_bias]:
        raise ValueError(f"{src} already applies logit biases to {sorted(info.logit_bias)}")
    check_ambiguity(dict(ambiguity or {}), info.heads, "ambiguity")
    source = OnnxPredictor(src, replace(info, outputs="probabilities"))
    images = images.astype(np.float32)
    reference = adjusted_reference(source, images, flip, prior_weights, temperatures, logit_bias)
    proto = onnx.load(str(src))
    if flip:
        proto = add_flip_tta(proto)
    if prior_weights:
        proto = add_prior_correction(proto, prior_weights)
    if temperatures:
        proto = add_output_temperature(proto, temperatures)
    if logit_bias:
        proto = add_logit_bias(proto, logit_bias)
    onnx.checker.check_model(proto, full_check=True)
    new_info = adjusted_info(info, flip, prior_weights, temperatures, logit_bias, ambiguity)
    onnx.helper.set_model_props(proto, onnx_metadata(new_info))
    onnx.save(proto, str(dst))
    got = OnnxPredictor(dst, new_info).predict(images)
    return check_parity("onnx_adjusted", reference, got, list(reference), EXPORT_ATOL)


def adjusted_info(info: ModelInfo, flip: bool, prior_weights: dict[str, Sequence[float]],
                  temperatures: dict[str, float] | None = None, logit_bias: dict[str, dict] | None = None,
                  ambiguity: dict[str, float] | None = None) -> ModelInfo:
    """The sidecar of an adjusted copy; output temperatures become ``temperature``, which is what
    evaluation divides out to report calibration before and after. New ``ambiguity`` thresholds
    replace the source's (they belong to the outputs they were fitted on)."""
    bias = {h: {"by": spec.get("by"), "bias": np.asarray(spec["bias"], float).tolist()}
            for h, spec in (logit_bias or {}).items()}
    return replace(info, outputs="probabilities", tta="flip" if flip else info.tta,
                   prior_correction={**info.prior_correction, **{h: list(w) for h, w in prior_weights.items()}},
                   temperature={**info.temperature, **(temperatures or {})},
                   logit_bias={**info.logit_bias, **bias},
                   ambiguity=dict(info.ambiguity if ambiguity is None else ambiguity))


# === Whole pipeline ===


def load_checkpoint(path: str | Path):
    """A training ``.keras`` checkpoint and its sidecar (the model uses built-in layers only)."""
    import keras

    return keras.saving.load_model(str(path), compile=False), load_info(path)


def export_model(
    model, info: ModelInfo, out_dir: str | Path, images: np.ndarray, opset: int = OPSET,
    formats: Sequence[str] = ("keras", "saved_model", "onnx"),
) -> ExportReport:
    """Writes the chosen formats plus ``model_info.json`` into ``out_dir``; raises ParityError."""
    if len(images) < N_PARITY:
        log.warning("parity checked on only %d images (fewer than the %d that make a 1e-4 bound meaningful "
                    "over real faces)", len(images), N_PARITY)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    outputs = list(model.output) if isinstance(model.output, dict) else list(model.output_names)
    info = replace(
        info,
        heads=[h for h in info.heads if h in labels.CONTRACT_HEADS] or list(labels.CONTRACT_HEADS),
        regression_heads=[h for h in labels.REGRESSION_HEADS if h in outputs],
    )
    wrapper = inference_model(model, info)
    images = images.astype(np.float32)
    reference = _keras_predict(wrapper, images, [*info.heads, *info.regression_heads])
    report = ExportReport(out, n_parity_images=len(images))
    writers = {
        "keras": (out / "model.keras", lambda p: export_keras(wrapper, p, images, reference)),
        "saved_model": (out / "saved_model", lambda p: export_saved_model(wrapper, p, images, reference)),
        "onnx": (out / "model.onnx", lambda p: export_onnx(wrapper, p, info, images, reference, opset)),
    }
    for fmt in formats:
        path, write = writers[fmt]
        report.parity[fmt] = write(path)
        report.artifacts[fmt] = str(path)
    exported = replace(info, outputs="probabilities", extra={**info.extra, "parity": report.parity, "opset": opset})
    save_info(exported, out)
    return report


def export_checkpoint(
    checkpoint: str | Path, out_dir: str | Path, data_root: Path, n_images: int = N_PARITY, **kwargs
) -> ExportReport:
    """``scripts/export.py``: checkpoint + sidecar -> all formats, parity on real faces."""
    model, info = load_checkpoint(checkpoint)
    images = load_images(fairface_val_crops(data_root, n_images), info.image_size)
    return export_model(model, info, out_dir, images, **kwargs)
