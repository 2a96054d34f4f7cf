"""The shipped ONNX release written as ``.keras`` and SavedModel, for users who load those formats.

The release's ONNX is more than the network: tf2onnx's export of ``softmax(logits)`` plus, added to
the graph afterwards (``export.write_adjusted_onnx``), the flip mean, the race prior correction,
output temperatures and logit biases (release 4.1: race biases per predicted gender). Here the
network is rebuilt in Keras from the file's own initializers (``convert.onnx_weights``) and wrapped
in the same steps with Keras built-in ops, so the ``.keras`` file loads with plain
``keras.saving.load_model`` (no custom objects) and the SavedModel with ``tf.saved_model.load``.
Both are checked against ONNX Runtime on real faces (``EXPORT_ATOL``), then each written file is
read back as ``export.py`` checks its own artifacts.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from ff_keras.inference.export import (
    EXPORT_ATOL,
    LOG_EPS,
    N_PARITY,
    ExportReport,
    check_parity,
    export_keras,
    export_saved_model,
    to_float32,
)
from ff_keras.model_info import ModelInfo, load_info, save_info


def release_keras_model(network, info: ModelInfo):
    """``image`` -> the release's outputs, from the rebuilt logits ``network``: softmax per head,
    mean over the image and its mirror (``tta == "flip"``), prior correction, output temperatures,
    logit biases (optionally per class of another head; ``export.adjusted_reference``'s arithmetic,
    in the graph)."""
    import keras
    from keras import ops

    network = to_float32(network)
    size = info.image_size
    image = keras.Input((size, size, 3), name="image", dtype="float32")
    views = [image, ops.flip(image, axis=2)] if info.tta == "flip" else [image]
    logits = [network(v, training=False) for v in views]
    outputs = {}
    for head in info.heads:
        p = sum(ops.softmax(out[head], axis=-1) for out in logits) / len(logits)
        if head in info.prior_correction:
            p = p * np.asarray(info.prior_correction[head], np.float32)
            p = p / ops.sum(p, axis=-1, keepdims=True)
        if head in info.temperature:
            p = ops.softmax(ops.log(ops.clip(p, LOG_EPS, 1.0)) / float(info.temperature[head]), axis=-1)
        outputs[head] = p
    before = dict(outputs)  # a bias step conditions on the other head's output before any bias step
    for head, spec in info.logit_bias.items():
        b = np.asarray(spec["bias"], np.float32)
        if spec.get("by"):  # one row of biases per face, picked by the other head's predicted class
            b = ops.take(b, ops.argmax(before[spec["by"]], axis=-1), axis=0)
        outputs[head] = ops.softmax(ops.log(ops.clip(before[head], LOG_EPS, 1.0)) + b, axis=-1)
    for head in info.heads:
        outputs[head] = keras.layers.Identity(name=f"{head}_probs", dtype="float32")(outputs[head])
    for head in info.regression_heads:
        years = sum(out[head] for out in logits) / len(logits)
        outputs[head] = keras.layers.Identity(name=f"{head}_out", dtype="float32")(years)
    return keras.Model(image, outputs, name="ff_keras_release")


def export_release(onnx_path: str | Path, config: str | Path, out_dir: str | Path, data_root: Path,
                   n_images: int = N_PARITY) -> ExportReport:
    """Writes ``out_dir/{<stem>.onnx, <stem>.keras, saved_model/, model_info.json}``: the release's ONNX
    (copied) beside its ``.keras`` and SavedModel, all three read by one sidecar.

    Raises:
        ParityError: if Keras disagrees with ONNX Runtime, or a written file with Keras, beyond tolerance.
        ValueError: if ``config`` does not describe the network in the file.
    """
    from ff_keras.config import load_config
    from ff_keras.convert.onnx_weights import load_onnx_weights
    from ff_keras.data.crops import fairface_val_crops
    from ff_keras.inference.predictor import OnnxPredictor, load_images
    from ff_keras.models.multihead import build_model

    onnx_path = Path(onnx_path)
    info = load_info(onnx_path)
    cfg = load_config(config, [f"data.image_size={info.image_size}"])
    network = build_model(cfg)  # the graph only: every weight comes from the file
    load_onnx_weights(network, onnx_path)
    model = release_keras_model(network, info)

    images = load_images(fairface_val_crops(data_root, n_images), info.image_size)
    heads = [*info.heads, *info.regression_heads]
    want = OnnxPredictor(onnx_path, info).predict(images)
    chunks = [model(images[i : i + 32], training=False) for i in range(0, len(images), 32)]
    got = {h: np.concatenate([np.asarray(c[h]) for c in chunks]) for h in heads}  # years [N, 1]: check_parity

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = ExportReport(out, n_parity_images=len(images))
    report.parity["keras_vs_onnx"] = check_parity("keras_vs_onnx", want, got, heads, EXPORT_ATOL)
    stem = onnx_path.stem
    if onnx_path.resolve() != (out / onnx_path.name).resolve():
        shutil.copyfile(onnx_path, out / onnx_path.name)
    report.artifacts["onnx"] = str(out / onnx_path.name)
    for fmt, path, write in (("keras", out / f"{stem}.keras", export_keras),
                             ("saved_model", out / "saved_model", export_saved_model)):
        report.parity[fmt] = write(model, path, images, got)
        report.artifacts[fmt] = str(path)
    save_info(replace(info, extra={**info.extra, "release_parity": report.parity}), out)
    return report
