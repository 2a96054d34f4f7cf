"""Predictor: one interface over .onnx / .keras / SavedModel, labels keyed by class names."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from export_helpers import REPO, tiny_export

from ff_keras import labels
from ff_keras.data.crops import fairface_val_crops
from ff_keras.inference.predictor import load_images, load_predictor

HEADS = list(labels.CONTRACT_HEADS)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, data_root):
    return tiny_export(tmp_path_factory.mktemp("pred"), data_root, formats=("onnx", "keras"), n_images=16)


@pytest.fixture(scope="module")
def faces(data_root):
    return load_images(fairface_val_crops(data_root, 10), 32)


def test_onnx_predictor_does_not_import_tensorflow(export_dir, data_root):
    code = (
        "import sys, numpy as np\n"
        "from ff_keras.inference.predictor import load_predictor, load_images\n"
        f"p = load_predictor({str(export_dir / 'model.onnx')!r}, threads=1)\n"
        f"x = load_images([{str(data_root / 'fairface/val/1.jpg')!r}], p.info.image_size)\n"
        "out = p.predict_labels(x)\n"
        "print(out[0]['race']['label'])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() in labels.RACES


def test_predict_labels_schema(export_dir, faces):
    p = load_predictor(export_dir / "model.onnx")
    assert p.backend == "onnx" and p.heads == HEADS
    out = p.predict_labels(faces)
    assert len(out) == len(faces)
    for item in out:
        assert sorted(item) == sorted(HEADS)
        for head, pred in item.items():
            assert list(pred["probabilities"]) == list(labels.HEAD_CLASSES[head])
            assert pred["label"] == max(pred["probabilities"], key=pred["probabilities"].get)
            assert sum(pred["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_chunked_inference_and_uint8_input(export_dir, faces):
    whole = load_predictor(export_dir / "model.onnx", batch_size=32).predict(faces)
    chunked = load_predictor(export_dir / "model.onnx", batch_size=3).predict(faces.astype(np.uint8))
    for h in HEADS:
        np.testing.assert_allclose(chunked[h], whole[h], atol=1e-5)


def test_onnx_spinning_switch_reaches_the_session_and_keeps_outputs(export_dir, faces):
    spin = load_predictor(export_dir / "model.onnx", threads=2)
    calm = load_predictor(export_dir / "model.onnx", threads=2, spinning=False)
    entry = "session.intra_op.allow_spinning"
    assert calm.session.get_session_options().get_session_config_entry(entry) == "0"
    with pytest.raises(Exception, match="does not have configuration"):  # ORT's default (spin) applies
        spin.session.get_session_options().get_session_config_entry(entry)
    a, b = spin.predict(faces), calm.predict(faces)
    for h in HEADS:
        np.testing.assert_array_equal(a[h], b[h])


def test_backends_agree_and_checkpoint_logits_get_temperature(export_dir, faces):
    onnx = load_predictor(export_dir / "model.onnx").predict(faces)
    exported_keras = load_predictor(export_dir / "model.keras").predict(faces)
    # The training checkpoint outputs logits; the predictor applies softmax(logits / T) itself.
    ckpt = load_predictor(export_dir.parent / "ckpt" / "ckpt.keras")
    assert ckpt.info.outputs == "logits" and ckpt.backend == "keras"
    from_logits = ckpt.predict(faces)
    for h in HEADS:
        np.testing.assert_allclose(exported_keras[h], onnx[h], atol=1e-4)
        np.testing.assert_allclose(from_logits[h], onnx[h], atol=1e-4)


def test_bad_inputs_raise_clear_errors(export_dir, tmp_path):
    p = load_predictor(export_dir / "model.onnx")
    with pytest.raises(ValueError, match=r"shape \[N, 32, 32, 3\].*\(2, 64, 64, 3\)"):
        p.predict(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        load_predictor(tmp_path / "nope.onnx")
    orphan = tmp_path / "model.onnx"
    orphan.write_bytes((export_dir / "model.onnx").read_bytes())
    with pytest.raises(FileNotFoundError, match="model_info.json"):
        load_predictor(orphan)
    (tmp_path / "model_info.json").write_text((export_dir / "model_info.json").read_text())
    other = tmp_path / "weights.h5"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported model file"):
        load_predictor(other)
    info = json.loads((export_dir / "model_info.json").read_text())
    info["classes"]["race"] = list(reversed(info["classes"]["race"]))
    (tmp_path / "model_info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="race classes"):
        load_predictor(orphan)


def test_checkpoint_predictor_passes_regression_head_through(tmp_path, faces):
    import keras
    from export_helpers import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    p = load_predictor(ckpt)
    assert p.regression_heads == ["age_years"]
    out = p.predict(faces)
    raw = keras.saving.load_model(ckpt, compile=False)(faces.astype(np.float32), training=False)
    assert out["age_years"].shape == (len(faces),)
    np.testing.assert_allclose(out["age_years"], np.asarray(raw["age_years"]).reshape(-1), atol=1e-5)
    np.testing.assert_allclose(out["gender"].sum(-1), 1.0, atol=1e-5)  # classification heads softmaxed
