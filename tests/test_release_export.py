"""``ff-keras export --release``: the shipped ONNX as .keras and SavedModel, checked against ONNX
Runtime, and the README's SavedModel snippet run as written against what it wrote."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ff_keras.inference.predictor import load_images, load_predictor
from ff_keras.paths import REPO, SHIPPED_MODEL


def readme_saved_model_snippet() -> str:
    """The README's SavedModel example, as printed there: the python block that calls tf.saved_model.load."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    found = [b for b in blocks if "tf.saved_model.load" in b]
    assert len(found) == 1, "the README should show exactly one SavedModel example"
    return found[0]


@pytest.fixture(scope="module")
def release(tmp_path_factory, data_root):
    from ff_keras.inference.release import export_release

    work = tmp_path_factory.mktemp("release")
    out = work / "artifacts" / "release"
    report = export_release(SHIPPED_MODEL, REPO / "configs" / "dlib_extended.yaml", out, data_root, n_images=8)
    return work, out, report


def test_release_written_in_every_format_and_checked(release, fairface_images):
    _, out, report = release
    assert set(report.parity) == {"keras_vs_onnx", "keras", "saved_model"}
    names = {p.name for p in out.iterdir()}
    assert {"ff_dlib_resnet150.onnx", "ff_dlib_resnet150.keras", "saved_model", "model_info.json"} <= names
    images = load_images(fairface_images[8:12], 150)  # faces the parity check did not use
    want = load_predictor(SHIPPED_MODEL).predict(images)
    for artifact in (out / "ff_dlib_resnet150.keras", out / "saved_model"):
        got = load_predictor(artifact).predict(images)
        for head, probs in want.items():
            np.testing.assert_allclose(got[head], probs, atol=1e-4, err_msg=f"{artifact.name} {head}")


def test_readme_saved_model_snippet(release, fairface_images):
    work, _, _ = release
    shutil.copyfile(fairface_images[0], work / "face.jpg")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", readme_saved_model_snippet()], capture_output=True, text=True, cwd=work,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = ast.literal_eval(run.stdout.strip().splitlines()[-1])
    face = Image.open(work / "face.jpg").convert("RGB").resize((150, 150), Image.BILINEAR)
    want = load_predictor(SHIPPED_MODEL).predict(np.asarray(face, np.float32)[None])  # the same input, ONNX
    assert set(out) == set(want)
    for head, probs in want.items():
        np.testing.assert_allclose(np.reshape(out[head], probs.shape), probs, atol=1e-4)


def test_release_keras_model_applies_race_bias_per_predicted_gender(fairface_images):
    """The Keras rebuild runs the logit-bias step as the ONNX graph does (``export.add_logit_bias``):
    the race bias row is picked by the gender argmax before any bias, on top of flip, prior and
    temperatures. A tiny real network keeps it fast; the shipped release is covered above."""
    import keras

    from ff_keras.inference.predictor import LOG_EPS, apply_logit_bias, softmax
    from ff_keras.inference.release import release_keras_model
    from ff_keras.model_info import ModelInfo

    keras.utils.set_random_seed(41)
    x = keras.Input((150, 150, 3))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 9, strides=8)(x / 255.0))
    heads = {"age": 9, "gender": 2, "race": 7, "age_years": 1}
    network = keras.Model(x, {k: keras.layers.Dense(n, name=k)(h) for k, n in heads.items()})
    bias = [[2.0, -1.0, 0.5, 0.0, -0.5, 1.0, 0.0], [-2.0, 1.5, 0.0, 1.0, 0.5, -1.0, 0.0]]
    info = ModelInfo(image_size=150, backbone="tiny", regression_heads=["age_years"], tta="flip",
                     prior_correction={"race": [0.7, 1.0, 0.9, 1.0, 1.1, 1.0, 1.3]},
                     temperature={"age": 0.7, "gender": 0.7, "race": 0.8},
                     logit_bias={"race": {"by": "gender", "bias": bias}})
    images = load_images(fairface_images[:8], 150)
    z = [network.predict(v, verbose=0)["gender"] for v in (images, images[:, :, ::-1].copy())]
    split = np.median(sum(g[:, 1] - g[:, 0] for g in z))  # half the faces each gender: both bias rows used
    network.get_layer("gender").bias.assign(np.array([split / 4, -split / 4], np.float32))
    got = release_keras_model(network, info).predict(images, verbose=0)

    views = [network.predict(v, verbose=0) for v in (images, images[:, :, ::-1].copy())]
    want = {k: (softmax(views[0][k]) + softmax(views[1][k])) / 2 for k in ("age", "gender", "race")}
    want["race"] = want["race"] * np.asarray(info.prior_correction["race"])
    want["race"] /= want["race"].sum(-1, keepdims=True)
    want = {k: softmax(np.log(np.clip(p, LOG_EPS, 1.0)), info.temperature[k]) for k, p in want.items()}
    by = want["gender"].argmax(-1)
    assert len(set(by)) == 2, "both bias rows should be exercised"
    np.testing.assert_allclose(got["race"], apply_logit_bias(want["race"], bias, by), atol=1e-5)
    assert not np.allclose(got["race"], want["race"], atol=1e-3)  # the step changes race
    np.testing.assert_allclose(got["gender"], want["gender"], atol=1e-5)  # and nothing else
