"""ff_keras.analyze / FaceAnalyzer on real photos: insightface's six-person photo and FairFace JPEGs,
given as a path, bytes, a PIL image or an array; the records match the CLI's (faces.analyze)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import ff_keras
from ff_keras.faces.analyze import analyze as cli_analyze
from test_faces import multi_person_photo


@pytest.fixture(scope="module")
def analyzer() -> ff_keras.FaceAnalyzer:
    return ff_keras.FaceAnalyzer()


def _labels(records: list[dict]) -> list[tuple]:
    return [(tuple(r["box"]), *(r["heads"][h]["label"] for h in ("age", "gender", "race"))) for r in records]


def test_group_photo_every_input_form_same_faces_as_the_cli(analyzer):
    photo = multi_person_photo()
    by_path = ff_keras.analyze(str(photo))
    assert len(by_path) == 6
    cli = cli_analyze([photo], analyzer.predictor, "mtcnn").records
    assert _labels(by_path) == _labels(cli)
    for mine, theirs in zip(by_path, cli):
        assert mine["heads"] == theirs["heads"] and mine["age_years"] == theirs["age_years"]
        assert set(mine) >= {"box", "confidence", "landmarks", "heads", "age_years"} and "framing" not in mine
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    for other in (photo, photo.read_bytes(), Image.open(photo), rgb):
        assert _labels(analyzer.analyze(other)) == _labels(by_path)


def test_many_images_share_batches_and_keep_order(analyzer, data_root):
    crop = data_root / "fairface" / "val" / "1.jpg"
    out = analyzer.analyze([crop, multi_person_photo(), crop])
    assert [len(faces) for faces in out] == [1, 6, 1]
    assert out[0] == out[2]
    assert _labels(out[1]) == _labels(analyzer.analyze(multi_person_photo()))


def test_without_detection_one_face_per_image_with_framing(analyzer, fairface_images):
    (rec,) = analyzer.analyze(fairface_images[0], detect=False)
    w, h = Image.open(fairface_images[0]).size
    assert rec["box"] == [0, 0, w, h] and rec["confidence"] is None
    assert rec["framing"]["status"] == "ok"
    (group,) = analyzer.analyze(multi_person_photo(), detect=False)
    assert group["framing"]["status"] == "several_faces"
    # predict_crops is the same model call on already aligned crops (an array at any size).
    crops = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in fairface_images[:4]])
    direct = analyzer.predict_crops(crops)
    one_by_one = [analyzer.analyze(p, detect=False)[0] for p in fairface_images[:4]]
    for a, b in zip(direct, one_by_one):  # batch of 4 vs batches of 1: ORT round-off only
        for head, pred in a["heads"].items():
            assert pred["label"] == b["heads"][head]["label"]
            assert pred["probabilities"] == pytest.approx(b["heads"][head]["probabilities"], abs=1e-4)
    listed = analyzer.predict_crops(list(fairface_images[:2]))
    assert [r["heads"]["race"]["label"] for r in listed] == [r["heads"]["race"]["label"] for r in direct[:2]]


def test_bad_inputs_named_in_a_clear_error(analyzer, tmp_path):
    with pytest.raises(ValueError, match="image bytes: not a JPEG, PNG or WebP"):
        analyzer.analyze(b"GIF89a not supported")
    with pytest.raises(ValueError, match=r"images\[1\]: expected a uint8 RGB image"):
        analyzer.analyze([multi_person_photo(), np.zeros((64, 64), np.float32)])
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ValueError, match="nope.jpg: cannot read file"):
        analyzer.analyze(missing)
    with pytest.raises(TypeError, match="got int"):
        analyzer.analyze(3)
    with pytest.raises(ValueError, match="crops must be an array"):
        analyzer.predict_crops(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="unknown detector"):
        ff_keras.FaceAnalyzer(detector="haar")
    with pytest.raises(FileNotFoundError, match="model not found"):
        ff_keras.FaceAnalyzer(model=tmp_path / "none.onnx")
