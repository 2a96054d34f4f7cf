"""Export: the CLI writes all three formats whose outputs match Keras on 64 real faces."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from export_helpers import REPO, TEMPERATURE, tiny_checkpoint

from ff_keras import labels
from ff_keras.inference.export import (
    EXPORT_ATOL,
    KERAS_ATOL,
    ParityError,
    check_parity,
    export_model,
    inference_model,
    saved_model_outputs_fresh_process,
    to_float32,
)
from ff_keras.data.crops import fairface_val_crops
from ff_keras.inference.predictor import load_images, softmax

HEADS = list(labels.CONTRACT_HEADS)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_root):
    """Runs ``scripts/export.py`` on a tiny checkpoint, as an operator would."""
    tmp = tmp_path_factory.mktemp("export")
    ckpt = tiny_checkpoint(tmp / "ckpt")
    out = tmp / "out"
    proc = subprocess.run(
        [sys.executable, "scripts/export.py", "--checkpoint", str(ckpt), "--out", str(out)],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ckpt, out


@pytest.fixture(scope="module")
def faces(data_root):
    return load_images(fairface_val_crops(data_root, 64), 32)


@pytest.fixture(scope="module")
def reference(exported, faces):
    """Probabilities computed independently: checkpoint logits, numpy softmax(logits / T)."""
    import keras

    model = keras.saving.load_model(exported[0], compile=False)
    logits = model.predict(faces, verbose=0)
    return {h: softmax(logits[h], TEMPERATURE[h]) for h in HEADS}


def _assert_close(got, reference, atol):
    for h in HEADS:
        assert got[h].shape == reference[h].shape
        assert np.max(np.abs(got[h] - reference[h])) <= atol, h
        assert np.array_equal(got[h].argmax(-1), reference[h].argmax(-1)), h


def test_writes_all_artifacts_and_sidecar(exported):
    out = exported[1]
    for name in ("model.keras", "model.onnx", "saved_model/saved_model.pb", "model_info.json"):
        assert (out / name).exists(), name
    info = json.loads((out / "model_info.json").read_text())
    assert info["outputs"] == "probabilities"
    assert info["heads"] == HEADS and info["image_size"] == 32 and info["regression_heads"] == ["age_years"]
    assert set(info["extra"]["parity"]) == {"keras", "saved_model", "onnx"}


def test_onnx_graph_contract_and_metadata(exported, faces, reference):
    proto = onnx.load(exported[1] / "model.onnx")
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = proto.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert sorted(o.name for o in proto.graph.output) == sorted([*HEADS, "age_years"])
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["regression_heads"]) == ["age_years"]
    assert json.loads(meta["classes"]) == {h: list(labels.HEAD_CLASSES[h]) for h in HEADS}
    assert meta["image_size"] == "32" and "RGB 0-255" in meta["input_contract"] and meta["version"]
    # Dynamic batch: 1, 3 and 64 rows through the same session.
    sess = ort.InferenceSession(str(exported[1] / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 3, len(faces)):
        got = dict(zip(HEADS, sess.run(HEADS, {"image": faces[:n]})))
        _assert_close(got, {h: v[:n] for h, v in reference.items()}, EXPORT_ATOL)


def test_saved_model_parity_in_fresh_process(exported, faces, reference):
    got = saved_model_outputs_fresh_process(exported[1] / "saved_model", faces)
    assert sorted(got) == sorted([*HEADS, "age_years"])
    _assert_close(got, reference, EXPORT_ATOL)


def test_keras_reload_parity(exported, faces, reference):
    import keras

    model = keras.saving.load_model(exported[1] / "model.keras", compile=False)
    got = {h: np.asarray(v) for h, v in model(faces, training=False).items()}
    _assert_close(got, reference, EXPORT_ATOL)  # vs the independent numpy softmax
    wrapper = inference_model(keras.saving.load_model(exported[0], compile=False), _info(exported))
    ref = {h: np.asarray(v) for h, v in wrapper(faces, training=False).items()}
    _assert_close(got, ref, KERAS_ATOL)


def test_age_years_is_exported_as_regressed(exported, faces):
    """``age_years`` leaves every artifact as the checkpoint regresses it (years, no softmax)."""
    import keras

    from ff_keras.inference.predictor import load_predictor

    raw = keras.saving.load_model(exported[0], compile=False)(faces, training=False)
    want = np.asarray(raw["age_years"]).reshape(-1)
    for name in ("model.onnx", "saved_model", "model.keras"):
        p = load_predictor(exported[1] / name)
        assert p.regression_heads == ["age_years"], name
        tol = EXPORT_ATOL * max(1.0, np.abs(want).max())  # 1e-4 relative to the largest age
        np.testing.assert_allclose(p.predict(faces)["age_years"], want, atol=tol)


def _info(exported):
    from ff_keras.model_info import load_info

    return load_info(exported[0])


def test_parity_violation_raises():
    ref = {"age": np.array([[0.6, 0.4]], np.float32)}
    with pytest.raises(ParityError, match="age"):
        check_parity("onnx", ref, {"age": ref["age"] + 2e-4}, ["age"], EXPORT_ATOL)
    with pytest.raises(ParityError, match="argmax"):
        check_parity("onnx", ref, {"age": np.array([[0.49995, 0.50005]], np.float32)}, ["age"], 0.2)


def test_mixed_precision_checkpoint_is_rebuilt_in_float32(tmp_path, data_root):
    from ff_keras.inference.export import load_checkpoint

    model, info = load_checkpoint(tiny_checkpoint(tmp_path / "mp", policy="mixed_float16"))
    assert any(layer.dtype_policy.name == "mixed_float16" for layer in model.layers)
    clone = to_float32(model)
    assert all(layer.dtype_policy.name == "float32" for layer in clone.layers)
    for a, b in zip(model.get_weights(), clone.get_weights()):
        np.testing.assert_array_equal(a, b)
    images = load_images(fairface_val_crops(data_root, 8), info.image_size)
    report = export_model(model, info, tmp_path / "out", images, formats=("onnx",))
    assert report.parity["onnx"]["race"]["argmax_agreement"] == 1.0
    sess = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert all(o.type == "tensor(float)" for o in sess.get_outputs())


def test_augmentation_layers_are_refused():
    import keras

    from ff_keras.model_info import ModelInfo

    image = keras.Input((8, 8, 3), name="image")
    x = keras.layers.RandomFlip(name="flip")(image)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(image, {h: keras.layers.Dense(len(labels.HEAD_CLASSES[h]), name=h)(x) for h in HEADS})
    with pytest.raises(ValueError, match="flip"):
        inference_model(model, ModelInfo(image_size=8, backbone="test"))


def test_int8_quantisation_reports_agreement_and_speed(exported, data_root, faces):
    import pandas as pd

    from ff_keras.data.readers import read_fairface, read_utkface
    from ff_keras.inference.quantize import compare_int8, quantize_onnx

    out = exported[1]
    int8 = quantize_onnx(out / "model.onnx", out / "model.int8.onnx", "static", faces)
    table = pd.concat([read_fairface(data_root)[0].head(16), read_utkface(data_root)[0].head(16)], ignore_index=True)
    report = compare_int8(out / "model.onnx", int8, table, data_root)
    assert report["n_images"] == 32
    assert set(report["argmax_agreement"]) == set(HEADS)
    assert all(0.0 <= v <= 1.0 for v in report["argmax_agreement"].values())
    # UTKFace rows label age and gender but not the 7-class race head.
    assert {h: r["n"] for h, r in report["accuracy"].items()} == {"age": 32, "gender": 32, "race": 16}
    assert report["speed"]["batch1"]["speedup"] > 0
    assert report["size_mb"]["int8"] < report["size_mb"]["fp32"]


def test_adjusted_copy_flips_and_corrects_the_race_prior(exported, faces, tmp_path, data_root):
    """scripts/adjust_onnx.py: outputs = mean over face and mirror, race reweighted by prior ** -1."""
    import pandas as pd

    from ff_keras.config import load_config
    from ff_keras.evaluation.run import run_evaluation
    from ff_keras.inference.export import write_adjusted_onnx
    from ff_keras.inference.predictor import load_predictor
    from ff_keras.model_info import load_info

    src, out = exported[1] / "model.onnx", tmp_path / "adjusted"
    proc = subprocess.run([sys.executable, "scripts/adjust_onnx.py", "--onnx", str(src), "--out", str(out),
                           "--flip-tta", "--prior-correction", "race=1.0", "--manifests", "splits",
                           "--data-root", str(data_root)],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    adjusted = load_predictor(out / "model.onnx")
    assert adjusted.info.tta == "flip" and load_info(out / "model.onnx").extra["adjusted"]["parity"]
    # The priors come from the base split's FairFace training rows, in the model's class order.
    base = pd.read_csv(REPO / "splits" / "fairface.csv")
    freq = base.loc[base["split"] == "train", "race"].value_counts(normalize=True)[list(labels.RACES)].to_numpy()
    w = freq**-1.0
    np.testing.assert_allclose(adjusted.info.prior_correction["race"], w / w.mean(), rtol=1e-6)
    plain = load_predictor(src)
    a, b, got = plain.predict(faces), plain.predict(faces[:, :, ::-1].copy()), adjusted.predict(faces)
    for head in ["age", "gender", "age_years"]:
        np.testing.assert_allclose(got[head], (a[head] + b[head]) / 2, atol=EXPORT_ATOL)
        assert not np.allclose(got[head], a[head], atol=1e-6), head  # the mirror really went in
    race = (a["race"] + b["race"]) / 2 * w
    np.testing.assert_allclose(got["race"], race / race.sum(-1, keepdims=True), atol=EXPORT_ATOL)
    np.testing.assert_allclose(got["race"].sum(-1), 1.0, atol=1e-5)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_modelmeta().custom_metadata_map["tta"] == "flip"
    for n in (1, 3):  # dynamic batch still works: the halves are split at the input's batch size
        single = dict(zip(HEADS, sess.run(HEADS, {"image": faces[:n]})))
        np.testing.assert_allclose(single["race"], got["race"][:n], atol=EXPORT_ATOL)
    with pytest.raises(ValueError, match="already averages over flips"):
        write_adjusted_onnx(out / "model.onnx", tmp_path / "twice.onnx", adjusted.info, faces, flip=True)
    with pytest.raises(ValueError, match=r"already corrects the class priors of \['race'\]"):
        write_adjusted_onnx(out / "model.onnx", tmp_path / "twice.onnx", adjusted.info, faces,
                            prior_weights={"race": [1.0] * 7})
    with pytest.raises(ValueError, match="already averages over flips inside its graph"):
        run_evaluation(out / "model.onnx", "val", load_config(None, ["evaluation.tta=flip"]), limit=4)
    # A file and a sidecar that disagree on the adjustments are refused, naming both.
    (out / "model_info.json").write_text((exported[1] / "model_info.json").read_text())
    with pytest.raises(ValueError, match="ONNX metadata tta 'flip', sidecar 'none'"):
        load_predictor(out / "model.onnx")


def test_calibrated_copy_fits_output_temperatures_on_val_and_keeps_every_prediction(tmp_path, data_root, faces):
    """--calibrate: softmax(log p / T) on the flipped, corrected outputs, T fitted on val rows."""
    from ff_keras.evaluation.calibration import apply_temperature, nll
    from ff_keras.evaluation.metrics import encode
    from ff_keras.evaluation.run import predict_rows
    from ff_keras.inference.export import adjusted_info, export_checkpoint, write_adjusted_onnx
    from ff_keras.inference.predictor import OnnxPredictor, load_predictor
    from ff_keras.model_info import load_info
    from ff_keras.splits.build import load_split

    ckpt = tiny_checkpoint(tmp_path / "ckpt", temperature={})  # an export without temperatures of its own
    export_checkpoint(ckpt, tmp_path / "export", data_root)
    src, out = tmp_path / "export" / "model.onnx", tmp_path / "calibrated"
    proc = subprocess.run([sys.executable, "scripts/adjust_onnx.py", "--onnx", str(src), "--out", str(out),
                           "--flip-tta", "--prior-correction", "race=1.0", "--calibrate", "--calibration-limit",
                           "300", "--manifests", "splits", "--data-root", str(data_root)],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = load_info(out / "model.onnx")
    temps = info.temperature
    assert set(temps) == {"age", "gender", "race"} and info.extra["adjusted"]["calibration"]["rows"] == 300
    untempered, weights = tmp_path / "untempered.onnx", {"race": info.prior_correction["race"]}
    write_adjusted_onnx(src, untempered, load_info(src), faces, flip=True, prior_weights=weights)
    before = OnnxPredictor(untempered, adjusted_info(load_info(src), True, weights))
    calibrated = load_predictor(out / "model.onnx")
    want, got = before.predict(faces), calibrated.predict(faces)
    for head, t in temps.items():
        np.testing.assert_allclose(got[head], apply_temperature(want[head], t), atol=1e-5)
        assert (got[head].argmax(1) == want[head].argmax(1)).all(), head  # no prediction changes
    np.testing.assert_allclose(got["age_years"], want["age_years"], atol=1e-5)
    # On the val sample it was fitted on, every head's NLL is no worse, and some head's is better.
    table = load_split("splits", ["fairface", "utkface"], "val").sample(n=300, random_state=0).reset_index(drop=True)
    p0, p1 = predict_rows(before, table, data_root)[0], predict_rows(calibrated, table, data_root)[0]
    gains = {}
    for head in temps:
        rows = labels.labelled_mask(table, head)
        y = encode(table.loc[rows], head)
        gains[head] = nll(p0[head][rows], y) - nll(p1[head][rows], y)
    assert min(gains.values()) > -1e-6 and max(gains.values()) > 1e-3, (temps, gains)
    # An export that is already temperature-scaled inside its network is refused, naming the file.
    proc = subprocess.run([sys.executable, "scripts/adjust_onnx.py", "--onnx", str(out / "model.onnx"), "--out",
                           str(tmp_path / "again"), "--calibrate"],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "already temperature-scaled" in proc.stderr, proc.stderr[-500:]


def test_adjust_onnx_refuses_bad_arguments(exported, tmp_path):
    src = exported[1] / "model.onnx"
    for extra, message in [([], "nothing to do"), (["--prior-correction", "ethnicity=1"], "HEAD=TAU with HEAD one of"),
                           (["--prior-correction", "race=high"], "TAU must be a number")]:
        proc = subprocess.run([sys.executable, "scripts/adjust_onnx.py", "--onnx", str(src), "--out",
                               str(tmp_path / "x"), *extra], check=False, cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr[-500:])
