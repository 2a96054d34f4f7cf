"""A tiny trained-model stand-in and its exports, shared by the export/predictor/serve tests.

The checkpoint is ``build_model(configs/smoke.yaml)`` (ResNet-18 at width 0.125, 32 px) with
head kernels redrawn at a larger scale, so probabilities are far from uniform and argmax
ties cannot make parity checks flaky. Temperatures differ from 1 so their use is tested.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEMPERATURE = {"age": 1.5, "gender": 0.7, "race": 1.2}


def tiny_checkpoint(folder: Path, policy: str | None = None, temperature: dict[str, float] | None = None) -> Path:
    """Writes ``folder/ckpt.keras`` + ``model_info.json`` (outputs = logits; ``TEMPERATURE`` unless
    ``temperature`` is given) and returns the path."""
    import keras

    from ff_keras.config import load_config
    from ff_keras.models.multihead import build_model
    from ff_keras.model_info import ModelInfo, save_info

    cfg = load_config(REPO / "configs" / "smoke.yaml")
    previous = keras.config.dtype_policy().name
    if policy:
        keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)  # the same tiny network in every process (tests need both genders predicted)
    try:
        model = build_model(cfg)
    finally:
        keras.config.set_dtype_policy(previous)
    rng = np.random.default_rng(0)
    for head in model.output:  # dict of logits keyed by head name
        layer = model.get_layer(head)
        layer.kernel.assign(rng.normal(0, 1.0, layer.kernel.shape).astype("float32"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ckpt.keras"
    model.save(path)
    temperature = dict(TEMPERATURE if temperature is None else temperature)
    info = ModelInfo(image_size=cfg.data.image_size, backbone=cfg.model.backbone, temperature=temperature)
    save_info(info, folder)
    return path


def tiny_export(folder: Path, data_root: Path, formats=("onnx",), n_images: int = 64) -> Path:
    """Checkpoint + export of ``formats`` into ``folder/export``; returns the export folder."""
    from ff_keras.inference.export import export_model, load_checkpoint
    from ff_keras.data.crops import fairface_val_crops
    from ff_keras.inference.predictor import load_images

    model, info = load_checkpoint(tiny_checkpoint(folder / "ckpt"))
    images = load_images(fairface_val_crops(data_root, n_images), info.image_size)
    export_model(model, info, folder / "export", images, formats=formats)
    return folder / "export"
