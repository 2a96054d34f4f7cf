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

from ff_keras import __version__, labels

INFO_NAME = "model_info.json"
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
    # Per-head softmax temperature fitted on val (1.0 = uncalibrated).
    temperature: dict[str, float] = field(default_factory=dict)
    input_contract: str = INPUT_CONTRACT
    outputs: str = "logits"  # "logits" (training model) | "probabilities" (exported)
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
    """Reads the sidecar next to ``artifact`` and checks its class order against the schema."""
    path = info_path(artifact)
    if not path.exists():
        raise FileNotFoundError(f"no {INFO_NAME} beside {artifact} (expected {path})")
    data = json.loads(path.read_text())
    labels.check_label_spaces(data.get("classes", {}))
    return ModelInfo(**data)
