"""The sidecar that travels with every saved model: class order, input contract, calibration.

Written as ``model_info.json`` in the same folder as the ``.keras`` / SavedModel / ONNX
artifact, and embedded in ONNX ``metadata_props``. Loading code checks the class order
against ``labels`` so a model can never be read with the wrong label names.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ff_keras import labels
from ff_keras.version import __version__

INFO_NAME = "model_info.json"
TTA_MODES = ("none", "flip")  # test-time augmentation baked into an exported graph
INPUT_CONTRACT = (
    "image: float32 [N, H, W, 3], RGB 0-255, an aligned face crop (dlib 5-point, padding 0.25) "
    "resized to image_size x image_size; normalisation happens inside the model"
)


@dataclass
class ModelInfo:
    image_size: int
    backbone: str
    classes: dict[str, list[str]] = field(default_factory=labels.label_spaces)
    heads: list[str] = field(default_factory=lambda: list(labels.CONTRACT_HEADS))
    # Regression outputs of this artifact beside the class heads: ``age_years`` = predicted
    # age in years, float32 [N, 1], no softmax. Empty for artifacts exported without them.
    regression_heads: list[str] = field(default_factory=list)
    # Per-head softmax temperature fitted on val (1.0 = uncalibrated).
    temperature: dict[str, float] = field(default_factory=dict)
    input_contract: str = INPUT_CONTRACT
    outputs: str = "logits"  # "logits" (training model) | "probabilities" (exported)
    # "flip": the exported graph averages each output over the image and its mirror image
    # (two backbone passes per face); "none": one pass.
    tta: str = "none"
    # Per-head class weights the exported probabilities were multiplied by and renormalised
    # with (post-hoc prior correction, ``export.add_prior_correction``); empty = none.
    prior_correction: dict[str, list[float]] = field(default_factory=dict)
    # Per-head threshold on the top probability: a face whose top probability is below it is
    # answered ``ambiguous`` (with its runner-up). Fitted on val for a stated accuracy of the
    # answered faces (provenance in ``extra["ambiguity"]``); empty = no flag.
    ambiguity: dict[str, float] = field(default_factory=dict)
    # Post-network logit biases of the exported graph (``export.add_logit_bias``), per head:
    # ``{"by": None | other head, "bias": [C] | [G, C]}``; empty = none.
    logit_bias: dict[str, dict] = field(default_factory=dict)
    # Confusion counts of this artifact on val (``annotate.confusion``): {"split", "manifests",
    # "rows", "heads": {head: [[count true=i, predicted=j]]}}; used to correct composition
    # estimates of a collection (adjusted classify-and-count). Empty = not measured.
    val_confusion: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def info_path(artifact: str | Path) -> Path:
    """Sidecar location for an artifact path (file or SavedModel directory)."""
    p = Path(artifact)
    return (p if p.is_dir() and not (p / "saved_model.pb").exists() else p.parent) / INFO_NAME


def save_info(info: ModelInfo, folder: str | Path) -> Path:
    path = Path(folder) / INFO_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(info.to_json())
    return path


def load_info(artifact: str | Path) -> ModelInfo:
    """Reads the sidecar next to ``artifact`` and checks its class order against the schema.

    Raises:
        FileNotFoundError: if there is no sidecar.
        ValueError: if it is not valid JSON or has unknown, missing or ill-typed fields.
    """
    path = info_path(artifact)
    if not path.exists():
        raise FileNotFoundError(f"no {INFO_NAME} beside {artifact} (expected {path})")
    try:
        data = json.loads(path.read_text())
        labels.check_label_spaces(data.get("classes", {}))
        info = ModelInfo(**data)
    except (json.JSONDecodeError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} is not a valid model sidecar: {err}") from err
    if not isinstance(info.image_size, int) or info.image_size < 1:
        raise ValueError(f"{path}: image_size must be a positive integer, got {info.image_size!r}")
    if info.tta not in TTA_MODES:
        raise ValueError(f"{path}: unknown tta {info.tta!r}; expected one of {list(TTA_MODES)}")
    unknown = [h for h in info.regression_heads if h not in labels.REGRESSION_HEADS]
    if unknown:
        raise ValueError(f"{path}: unknown regression heads {unknown}; known: {list(labels.REGRESSION_HEADS)}")
    check_ambiguity(info.ambiguity, info.heads, str(path))
    return info


def check_ambiguity(thresholds: dict[str, float], heads: list[str], where: str) -> None:
    """Raises ``ValueError`` naming the head when a threshold is for no head or outside [0, 1]."""
    for head, t in thresholds.items():
        if head not in heads:
            raise ValueError(f"{where}: ambiguity threshold for unknown head {head!r}; heads are {heads}")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
            raise ValueError(f"{where}: ambiguity threshold of {head} must be a number in [0, 1], got {t!r}")


# === ONNX metadata ===


def onnx_metadata(info: ModelInfo) -> dict[str, str]:
    """The sidecar facts written into an ONNX file's ``metadata_props``."""
    return {
        "classes": json.dumps({h: info.classes[h] for h in info.heads}),
        "image_size": str(info.image_size),
        "input_contract": info.input_contract,
        "outputs": "probabilities = softmax(logits / temperature)",
        "regression_heads": json.dumps(list(info.regression_heads)),
        "temperature": json.dumps({h: info.temperature.get(h, 1.0) for h in info.heads}),
        "backbone": info.backbone,
        "tta": info.tta,
        "prior_correction": json.dumps(info.prior_correction),
        "ambiguity": json.dumps(info.ambiguity),
        "logit_bias": json.dumps(info.logit_bias),
        "version": info.version,
    }


def check_onnx_agrees(
    info: ModelInfo, metadata: dict[str, str], input_shape: list, outputs: list[str], path: str | Path
) -> None:
    """Raises ``ValueError`` (one line naming both sides) when an ONNX file and its sidecar
    disagree on input size, classes or outputs: such a pair would fail every request."""
    where = f"{path} and its {INFO_NAME}"
    dims = list(input_shape)[1:]
    expected = [info.image_size, info.image_size, 3]
    if len(dims) == 3 and all(isinstance(d, int) for d in dims) and dims != expected:
        raise ValueError(
            f"{where} disagree: the model's input is {dims}, the sidecar says image_size {info.image_size}"
        )
    if "image_size" in metadata and metadata["image_size"] != str(info.image_size):
        raise ValueError(
            f"{where} disagree: ONNX metadata image_size {metadata['image_size']}, sidecar {info.image_size}"
        )
    if "classes" in metadata:
        classes = json.loads(metadata["classes"])
        wrong = [h for h in info.heads if h in classes and classes[h] != list(info.classes[h])]
        if wrong:
            raise ValueError(f"{where} disagree on the class names of {wrong}")
    if metadata.get("tta", "none") != info.tta:
        raise ValueError(f"{where} disagree: ONNX metadata tta {metadata.get('tta', 'none')!r}, sidecar {info.tta!r}")
    if "prior_correction" in metadata and not _same_weights(json.loads(metadata["prior_correction"]),
                                                            info.prior_correction):
        raise ValueError(f"{where} disagree on the prior correction: ONNX metadata {metadata['prior_correction']}, "
                         f"sidecar {json.dumps(info.prior_correction)}")
    if "ambiguity" in metadata and not _same_weights({h: [t] for h, t in json.loads(metadata["ambiguity"]).items()},
                                                     {h: [t] for h, t in info.ambiguity.items()}):
        raise ValueError(f"{where} disagree on the ambiguity thresholds: ONNX metadata {metadata['ambiguity']}, "
                         f"sidecar {json.dumps(info.ambiguity)}")
    if "logit_bias" in metadata and not _same_bias(json.loads(metadata["logit_bias"]), info.logit_bias):
        raise ValueError(f"{where} disagree on the logit biases: ONNX metadata {metadata['logit_bias']}, "
                         f"sidecar {json.dumps(info.logit_bias)}")
    missing = [h for h in [*info.heads, *info.regression_heads] if h not in outputs]
    if missing:
        raise ValueError(
            f"{where} disagree: the sidecar lists heads {missing} the model lacks (it has {outputs})"
        )


def _same_bias(a: dict[str, dict], b: dict[str, dict]) -> bool:
    def flat(values: Any) -> list[float]:
        return [x for v in values for x in flat(v)] if isinstance(values, list) else [float(values)]

    def keyed(d: dict[str, dict]) -> dict[str, list[float]]:
        return {f"{h}|{s.get('by')}": flat(s["bias"]) for h, s in d.items()}

    return _same_weights(keyed(a), keyed(b))


def _same_weights(a: dict[str, list[float]], b: dict[str, list[float]]) -> bool:
    return sorted(a) == sorted(b) and all(len(a[h]) == len(b[h]) and all(
        abs(x - y) <= 1e-6 * max(1.0, abs(y)) for x, y in zip(a[h], b[h])) for h in a)
