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
