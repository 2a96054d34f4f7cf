"""scripts/predict.py end to end on real photos with a tiny real checkpoint (32 px ResNet-18)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_faces import CROPS, multi_person_photo

from studies import composite as C
from ff_keras.faces.analyze import analyze
from ff_keras.faces.detect import DEFAULT_DETECTOR

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "predict.py"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from export_helpers import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory, data_root):
    """A folder with a 3-face composite, a 6-person photo, a photo without faces and a broken file."""
    folder = tmp_path_factory.mktemp("photos")
    comp = C.make_composite([data_root / "fairface" / "val" / f"{i}.jpg" for i in CROPS],
                            np.random.default_rng(0), face_px=(170, 200))
    Image.fromarray(comp.image).save(folder / "composite.png")
    shutil.copy(multi_person_photo(), folder / "group.jpg")
    Image.fromarray(C.background(120, 160, np.random.default_rng(1))).save(folder / "empty.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    return folder, comp


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=900)


def test_folder_json_boxes_and_annotations(ckpt, photos, tmp_path):
    folder, comp = photos
    out = tmp_path / "out"
    res = run_cli(str(folder), "--model", str(ckpt), "--json", "-b", "--out", str(out),
                  "--batch-size", "4", "--min-face", "80")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert set(doc) == {"model", "detector", "images_read", "faces", "no_faces", "unreadable"}
    assert doc["detector"] == DEFAULT_DETECTOR and doc["images_read"] == 3
    assert doc["no_faces"] == [str(folder / "empty.png")]
    assert [u["path"] for u in doc["unreadable"]] == [str(folder / "broken.jpg")]
    assert "broken.jpg" in doc["unreadable"][0]["error"]
    assert "unreadable, skipped" in res.stderr and "no face found" in res.stderr

    by_image = {}
    for rec in doc["faces"]:
        # The service's per-face fields: per-head results under "heads", age in years beside them.
        assert set(rec) == {"image", "face", "detector", "box", "confidence", "landmarks", "heads", "age_years"}
        assert isinstance(rec["age_years"], float)
        assert len(rec["box"]) == 4 and all(isinstance(v, int) for v in rec["box"])
        assert np.array(rec["landmarks"]).shape == (5, 2) and isinstance(rec["confidence"], float)
        assert set(rec["heads"]) == {"age", "gender", "race"}
        for pred in rec["heads"].values():
            probs = pred["probabilities"]
            assert abs(sum(probs.values()) - 1) < 1e-4
            assert pred["label"] == max(probs, key=probs.get)
        by_image.setdefault(Path(rec["image"]).name, []).append(rec)
    assert {k: len(v) for k, v in by_image.items()} == {"composite.png": 3, "group.jpg": 6}
    assert [r["face"] for r in by_image["group.jpg"]] == list(range(6))
    for rec, (x0, y0, x1, y1) in zip(by_image["composite.png"], comp.boxes):
        x, y, w, h = rec["box"]
        cx, cy = x + w / 2, y + h / 2
        assert x0 < cx < x1 and y0 < cy < y1

    written = sorted(p.name for p in out.glob("*_faces.jpg"))
    assert written == ["composite_faces.jpg", "empty_faces.jpg", "group_faces.jpg"]
    assert json.loads((out / "predictions.json").read_text())["faces"] == doc["faces"]
    drawn = np.asarray(Image.open(out / "composite_faces.jpg").convert("RGB")).astype(int)
    x, y, w, h = by_image["composite.png"][0]["box"]
    edge = drawn[y + h // 2, x - 1 : x + 2]  # a point on the left edge of the first box: green
    assert (edge[:, 1] > 180).any() and (edge[:, 1] - edge[:, 0] > 100).any()


def test_table_with_detector_none(ckpt, data_root):
    crops = [str(data_root / "fairface" / "val" / f"{i}.jpg") for i in CROPS[:2]]
    res = run_cli(*crops, "--model", str(ckpt), "--detector", "none")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0].split() == ["image", "face", "box", "conf", "age", "gender", "race", "age_years"]
    assert [ln.split()[0] for ln in lines[2:4]] == [Path(c).name for c in crops]
    assert "0,0,224,224" in lines[2]
    assert lines[-1].startswith("2 faces in 2 photos")


def load_script():
    spec = importlib.util.spec_from_file_location("predict_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exit_status_only_when_nothing_readable(ckpt, tmp_path, capsys):
    (tmp_path / "a.jpg").write_bytes(b"not an image")
    main = load_script().main
    assert main([str(tmp_path / "a.jpg"), str(tmp_path / "missing.png"), "--model", str(ckpt)]) == 1
    assert "missing.png" in capsys.readouterr().err
    assert main([str(tmp_path / "a.jpg"), str(tmp_path / "missing.png"), "--model", str(tmp_path / "x.onnx")]) == 2


def test_faces_from_all_photos_are_classified_in_batches(ckpt, photos):
    """Chips of several photos share model calls: 6 faces at batch size 4 -> calls of 4 and 2."""
    from ff_keras.inference.predictor import load_predictor

    predictor = load_predictor(ckpt, batch_size=64)
    sizes = []
    real_predict = predictor.predict

    def counting_predict(images):
        sizes.append(len(images))
        return real_predict(images)

    predictor.predict = counting_predict
    folder, _ = photos
    report = analyze([folder / "composite.png"] * 2, predictor, "dlib", batch_size=4, min_face=80)
    assert len(report.records) == 6 and sizes == [4, 2]
    assert all("heads" in r and "age_years" in r for r in report.records)


def test_fresh_clone_default_is_the_shipped_model(data_root, tmp_path):
    """`python scripts/predict.py photo.jpg` with no --model, from any directory, uses models/."""
    env = {k: v for k, v in os.environ.items() if k != "FF_MODEL"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    photo = data_root / "fairface" / "val" / "1.jpg"
    out = subprocess.run([sys.executable, str(SCRIPT), str(photo), "--detector", "none", "--json"], check=False,
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["model"].endswith("ff_dlib_resnet150.onnx")
    assert len(doc["faces"]) == 1 and set(doc["faces"][0]["heads"]) >= {"age", "gender", "race"}


def test_special_files_and_bad_shapes_are_refused_by_name(data_root, tmp_path):
    """A FIFO and /dev/zero given as inputs, and a folder holding a FIFO, a dangling link, a link
    loop and an 8000 x 32 strip: each is reported with its reason (none is opened for reading,
    so the FIFO cannot block), and the one photo is still classified."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(data_root / "fairface" / "val" / "1.jpg", folder / "face.jpg")
    os.mkfifo(folder / "pipe.jpg")
    (folder / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (folder / "loop_a.jpg").symlink_to(folder / "loop_b.jpg")
    (folder / "loop_b.jpg").symlink_to(folder / "loop_a.jpg")
    Image.new("RGB", (8000, 32), "gray").save(folder / "strip.png")
    os.mkfifo(tmp_path / "given.fifo")
    res = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "given.fifo"), "/dev/zero", str(folder),
                          "--detector", "none", "--json"], check=False, capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(res.stdout)
    assert [Path(f["image"]).name for f in doc["faces"]] == ["face.jpg"]
    errors = {Path(u["path"]).name: u["error"] for u in doc["unreadable"]}
    expected = {
        "given.fifo": "not a regular file (a FIFO", "zero": "not a regular file (a character device)",
        "pipe.jpg": "not a regular file (a FIFO", "dangling.jpg": "dangling symbolic link",
        "loop_a.jpg": "symbolic link loop", "loop_b.jpg": "symbolic link loop",
        "strip.png": "aspect ratio of 250:1, over the limit of 20:1",
    }
    assert set(errors) == set(expected), errors
    for name, reason in expected.items():
        assert reason in errors[name] and name in errors[name], (name, errors[name])
    assert res.stderr.count("unreadable, skipped: cannot read image") == len(expected)
