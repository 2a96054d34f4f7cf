"""Inference never loads the training stack: in a fresh process, ``import ff_keras`` loads nothing
heavy, and ``ff_keras.analyze`` with face detection, ``ff-keras predict`` and the service's
``/predict?detect=true`` run without importing TensorFlow (or Keras, tf2onnx, mtcnn, torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_faces import multi_person_photo

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "tf2onnx", "mtcnn", "torch", "wandb", "omegaconf", "pandas", "sklearn")

PROBE = r"""
import contextlib, io, json, sys
HEAVY = {heavy!r}
def loaded():
    return sorted({{m.split(".")[0] for m in sys.modules}} & set(HEAVY))
report = {{}}
import ff_keras
report["import"] = loaded() + sorted({{"onnxruntime", "PIL", "numpy"}} & {{m.split(".")[0] for m in sys.modules}})
faces = ff_keras.analyze({photo!r})
report["analyze"] = [len(faces), loaded()]
from ff_keras.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(["predict", {photo!r}, "--json"])
report["predict"] = [rc, len(json.loads(out.getvalue())["faces"]), loaded()]
from fastapi.testclient import TestClient
from ff_keras.paths import default_model
from ff_keras.serve.app import ServeSettings, create_app
model = default_model()
with TestClient(create_app(model, ServeSettings(model_path=model))) as client:
    with open({photo!r}, "rb") as f:
        r = client.post("/predict?detect=true", files={{"file": ("t1.jpg", f.read(), "image/jpeg")}})
report["serve"] = [r.status_code, len(r.json()["faces"]), loaded()]
print(json.dumps(report))
"""


def test_inference_paths_never_import_tensorflow(tmp_path):
    code = PROBE.format(heavy=HEAVY, photo=str(multi_person_photo()))
    env = {k: v for k, v in os.environ.items() if k != "FF_MODEL"}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["import"] == [], f"import ff_keras loaded {report['import']}"
    assert report["analyze"] == [6, []]
    assert report["predict"] == [0, 6, []]
    assert report["serve"] == [200, 6, []]
