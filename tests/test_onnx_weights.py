"""convert_weights.py onnx: an exported ONNX file back to a trainable Keras checkpoint."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from export_helpers import REPO, tiny_checkpoint

# A dlib-ResNet model (no batch normalisation) small enough to export in seconds.
DLIB_TINY = ["model.backbone=dlib_resnet", "model.width=0.125", "data.image_size=112", "model.embed_dim=16"]


def _dlib_checkpoint(folder):
    """A tiny dlib-ResNet checkpoint with every weight redrawn (nothing left at its initial value)."""

    from ff_keras.config import load_config
    from ff_keras.model_info import ModelInfo, save_info
    from ff_keras.models.multihead import build_model

    cfg = load_config(REPO / "configs" / "smoke.yaml", DLIB_TINY)
    model = build_model(cfg)
    rng = np.random.default_rng(1)
    model.set_weights([rng.normal(0, 0.5 / np.sqrt(max(1, w.shape[-2] if w.ndim > 1 else 1)), w.shape)
                       .astype("float32") for w in model.get_weights()])
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "ckpt.keras")
    save_info(ModelInfo(image_size=cfg.data.image_size, backbone=cfg.model.backbone), folder)
    return folder / "ckpt.keras", model


def _weighted_layers(model) -> dict:
    import keras

    found = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.update(_weighted_layers(layer))
        elif layer.weights:
            found[layer.name] = layer
    return found


def _convert(onnx_path, out_dir, *overrides):
    return subprocess.run([sys.executable, "scripts/convert_weights.py", "onnx", "--input", str(onnx_path),
                           "--config", "configs/smoke.yaml", "--out-dir", str(out_dir), "--n-images", "16",
                           *overrides], check=False, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_adjusted_dlib_export_is_rebuilt_weight_for_weight_and_checked(tmp_path, data_root):
    import keras

    from ff_keras.data.crops import fairface_val_crops
    from ff_keras.inference.export import adjusted_info, export_checkpoint, write_adjusted_onnx
    from ff_keras.inference.predictor import load_images
    from ff_keras.model_info import load_info, save_info

    ckpt, original = _dlib_checkpoint(tmp_path / "ckpt")
    export_checkpoint(ckpt, tmp_path / "export", data_root, n_images=16)
    src = tmp_path / "export" / "model.onnx"
    # As released: flip TTA, a race prior correction and output temperatures inside the graph.
    faces = load_images(fairface_val_crops(data_root, 16), 112)
    weights, temps = {"race": [0.7, 1.0, 0.9, 1.0, 1.1, 1.0, 1.4]}, {"age": 0.8, "gender": 0.7, "race": 1.3}
    (tmp_path / "released").mkdir()
    write_adjusted_onnx(src, tmp_path / "released" / "model.onnx", load_info(src), faces, flip=True,
                        prior_weights=weights, temperatures=temps)
    save_info(adjusted_info(load_info(src), True, weights, temps), tmp_path / "released")

    proc = _convert(tmp_path / "released" / "model.onnx", tmp_path / "out", *DLIB_TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not in the file: ['race_utk']" in proc.stdout and "match ONNX Runtime on 16 real faces" in proc.stdout
    rebuilt = keras.saving.load_model(tmp_path / "out" / "model" / "model.keras", compile=False)
    assert load_info(tmp_path / "out" / "model" / "model.keras").outputs == "logits"
    want, have = _weighted_layers(original), _weighted_layers(rebuilt)
    assert set(want) == set(have) and len(want) >= 30  # every convolution, the embedding and the heads
    for name, layer in want.items():
        if name == "race_utk":  # training-only: not in the file, left as built
            continue
        for a, b in zip(layer.get_weights(), have[name].get_weights(), strict=True):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-6, err_msg=name)


def test_export_with_batch_norm_is_refused_naming_the_layers(tmp_path, data_root):
    from ff_keras.inference.export import export_checkpoint

    export_checkpoint(tiny_checkpoint(tmp_path / "ckpt"), tmp_path / "export", data_root, n_images=16)
    proc = _convert(tmp_path / "export" / "model.onnx", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "holds no weights for layers" in proc.stderr and "batch normalisation" in proc.stderr, proc.stderr[-800:]
    assert not (tmp_path / "out" / "model" / "model.keras").exists()


def test_missing_file_is_a_clear_error(tmp_path):
    proc = _convert(tmp_path / "nope.onnx", tmp_path / "out")
    assert proc.returncode == 2 and "nope.onnx" in proc.stderr, proc.stderr[-800:]


def test_values_that_do_not_fit_their_layer_are_refused():
    import keras

    from ff_keras.convert.onnx_weights import _to_keras_layout

    dense = keras.layers.Dense(3)
    dense.build((None, 4))
    with pytest.raises(ValueError, match=r"no value of shape \(4, 3\)"):
        _to_keras_layout([np.zeros((3, 4), np.float32), np.zeros(3, np.float32)], dense)
    norm = keras.layers.BatchNormalization()
    norm.build((None, 4))
    with pytest.raises(ValueError, match="same shape"):
        _to_keras_layout([np.zeros(4, np.float32)] * 4, norm)
