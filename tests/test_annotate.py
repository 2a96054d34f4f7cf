"""``annotate``: real FairFace JPEGs through the released ONNX model into Parquet; kill and resume;
the composition audit against FairFace test labels; the sidecar's val confusion."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_faces import multi_person_photo

from ff_keras.annotate import audit, manifest
from ff_keras.annotate.confusion import confusion_counts, confusion_rates
from ff_keras.annotate.engine_local import run_local
from ff_keras.annotate.inputs import iter_inputs
from ff_keras.annotate.report import face_probs
from ff_keras.annotate.stages import Options
from ff_keras.cli.annotate import main
from ff_keras.faces.analyze import analyze
from ff_keras.inference.predictor import load_predictor
from ff_keras.model_info import load_info
from ff_keras.paths import SHIPPED_MODEL

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "annotate.py"
MODEL = str(SHIPPED_MODEL)


@pytest.fixture(scope="module")
def predictor():
    return load_predictor(MODEL)


@pytest.fixture(scope="module")
def collection(tmp_path_factory, fairface_images) -> Path:
    """12 real FairFace val crops, one corrupt JPEG, one text file that is no image."""
    folder = tmp_path_factory.mktemp("photos")
    for p in fairface_images[:12]:
        shutil.copy(p, folder / p.name)
    (folder / "sub").mkdir()
    (folder / "sub" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "notes.dat").write_text("not an image")
    return folder


def _rows(out: Path) -> pd.DataFrame:
    return manifest.read_output(out).to_pandas()


def test_crops_rows_match_the_photo_pipeline(collection, predictor, tmp_path):
    out = tmp_path / "out"
    assert main([str(collection), "--out", str(out), "--detector", "none", "--part-size", "5", "--no-progress"]) == 0
    rows = _rows(out)
    assert len(list(out.glob("part-*.parquet"))) == 3  # 14 inputs in parts of 5
    faces = rows[rows.status == "face"]
    bad = rows[rows.status == "unreadable"].set_index("source")["error"]
    assert sorted(Path(s).name for s in bad.index) == ["corrupt.jpg", "notes.dat"]
    assert all(Path(s).name in msg for s, msg in bad.items())  # the reason names the file
    # Same faces, labels and probabilities as the existing photo pipeline (faces.analyze).
    ref = analyze(sorted(collection.glob("*.jpg")), predictor, "none").records
    assert list(faces.source) == [r["image"] for r in ref]
    for head in predictor.heads:
        assert list(faces[head]) == [r["heads"][head]["label"] for r in ref]
        got = np.stack(faces[f"{head}_probs"].to_numpy())
        want = np.array([list(r["heads"][head]["probabilities"].values()) for r in ref])
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(faces.age_years, [r["age_years"] for r in ref], atol=0.051)
    assert (faces.box_w > 0).all() and faces.confidence.isna().all() and (faces.detector == "none").all()


def test_detection_rows_and_photo_without_a_face(predictor, tmp_path):
    photo = multi_person_photo()
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 160), (128, 128, 128)).save(blank)
    out = tmp_path / "out"
    run_local([str(photo), str(blank)], str(out), Options(model=MODEL, detector="dlib_hog"), predictor)
    rows = _rows(out)
    faces = rows[rows.status == "face"]
    ref = analyze([photo], predictor, "dlib_hog").records
    assert len(faces) == len(ref) == 6
    assert [list(b) for b in faces[["box_x", "box_y", "box_w", "box_h"]].to_numpy()] == [r["box"] for r in ref]
    assert list(faces.face) == list(range(6)) and faces.confidence.notna().all()
    assert list(faces.race) == [r["heads"]["race"]["label"] for r in ref]
    assert rows[rows.status == "no_face"].source.tolist() == [str(blank)]


def test_list_inputs_csv_and_text(tmp_path, fairface_images):
    a, b = fairface_images[:2]
    (tmp_path / "list.csv").write_text(f"id,path\n1,{a}\n2,rel/x.jpg\n")
    (tmp_path / "list.txt").write_text(f"# photos\n{b}\n\nrel/y.png\n")
    got = list(iter_inputs([tmp_path / "list.csv", tmp_path / "list.txt"]))
    assert got == [str(a), str(tmp_path / "rel/x.jpg"), str(b), str(tmp_path / "rel/y.png")]


def test_predictor_extra_keys_are_carried(collection, predictor, tmp_path):
    """Keys a predictor adds to a head's result (``ambiguous``, runner-up...) become columns."""
    plain = predictor.results_from_probs

    def with_extras(probs):
        items = plain(probs)
        for item in items:
            item["heads"]["race"]["ambiguous"] = item["heads"]["race"]["probabilities"]["White"] > 0.01
            item["heads"]["race"]["runner_up"] = "Black"
            item["quality"] = {"blur": 0.5}  # a per-face key that is no scalar: stored as JSON
        return items

    predictor.results_from_probs = with_extras
    try:
        out = tmp_path / "out"
        run_local([str(collection)], str(out), Options(model=MODEL, detector="none"), predictor)
    finally:
        del predictor.results_from_probs
    table = manifest.read_output(out)
    assert str(table.schema.field("race_ambiguous").type) == "bool"
    faces = table.to_pandas().query("status == 'face'")
    white = np.stack(faces.race_probs.to_numpy())[:, 0]
    assert list(faces.race_ambiguous) == list(white > 0.01) and set(faces.race_runner_up) == {"Black"}
    assert set(faces.quality) == {'{"blur": 0.5}'}


def _manifest_lines(out: Path) -> int:
    path = out / manifest.MANIFEST
    return path.read_text().count("\n") if path.exists() else 0


def test_sigkill_midway_then_resume_equals_uninterrupted(tmp_path, data_root):
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((data_root / "fairface" / "val").glob("*.jpg"))[:60]:
        shutil.copy(p, photos / p.name)
    (photos / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")  # Pillow names an address in its error
    args = [str(photos), "--detector", "none", "--part-size", "2", "--batch-size", "2", "--no-progress"]
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _manifest_lines(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    total_parts = 31
    assert 3 <= _manifest_lines(out) < total_parts, "the kill must land mid-way"
    kept = {e["file"]: (out / e["file"]).stat().st_mtime_ns for e in manifest.read_manifest(out).values()}
    # Debris a kill can leave: a part renamed but not in the manifest, a temp file, a torn line.
    shutil.copy(out / manifest.part_name(0), out / manifest.part_name(30))
    (out / "part-000029.parquet.tmp").write_bytes(b"half a part")
    with open(out / manifest.MANIFEST, "a") as f:
        f.write('{"part": 29, "file": "part-0000')
    # Reopening discards the debris: the folder then holds exactly the committed parts.
    committed = manifest.start_run(out, json.loads((out / manifest.RUN_FILE).read_text()))
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("part-")) == sorted(
        e["file"] for e in committed.values())
    assert main([*args, "--out", str(out)]) == 0
    full = tmp_path / "full"
    assert main([*args, "--out", str(full)]) == 0
    resumed, uninterrupted = manifest.read_output(out), manifest.read_output(full)
    assert resumed.num_rows == 61 and resumed.equals(uninterrupted)
    # Committed parts were kept, not redone; the folder reads as one dataset without debris.
    assert all((out / name).stat().st_mtime_ns == t for name, t in kept.items())
    assert pq.read_table(out).equals(uninterrupted)
    assert sorted(p.name for p in out.glob("part-*")) == sorted(p.name for p in full.glob("part-*"))
    # Another run's settings in the same folder are refused, naming the difference.
    with pytest.raises(ValueError, match="part_size"):
        run_local([str(photos)], str(out), Options(model=MODEL, detector="none", part_size=3))


def test_adjusted_estimate_beats_argmax_on_fairface_test(tmp_path, data_root):
    """1,000 FairFace test rows with known races, annotated from a CSV list: the val-confusion
    adjusted composition's largest per-race error is smaller than argmax counting's."""
    table = pd.read_csv(REPO / "splits" / "fairface.csv")
    rows = table[table.split == "test"].sample(n=1000, random_state=0).sort_values("rel_path")
    listing = tmp_path / "test.csv"
    pd.DataFrame({"path": [str(data_root / p) for p in rows.rel_path]}).to_csv(listing, index=False)
    out = tmp_path / "out"
    run_local([str(listing)], str(out), Options(model=MODEL, detector="none", part_size=500))
    probs, classes = face_probs(out)
    truth = rows.race.value_counts(normalize=True).reindex(classes["race"]).to_numpy()
    est = audit.composition(probs["race"], confusion_rates(load_info(MODEL), "race"), n_boot=50)
    argmax, adjusted = (audit.largest_error(est[e]["share"], truth) for e in ("argmax", "adjusted"))
    assert adjusted < argmax, (adjusted, argmax)
    for e in audit.ESTIMATORS:
        assert np.isclose(est[e]["share"].sum(), 1.0)
        assert (est[e]["low"] <= est[e]["share"] + 1e-9).all() and (est[e]["share"] <= est[e]["high"] + 1e-9).all()


def test_audit_report_files(collection, tmp_path):
    out = tmp_path / "out"
    assert main([str(collection), "--out", str(out), "--detector", "none", "--summary", "--no-progress"]) == 0
    doc = json.loads((out / "audit.json").read_text())
    groups = doc["groupings"]
    assert list(groups) == ["race", "gender", "age", "race x gender"]
    assert len(groups["race x gender"]["classes"]) == 14 and groups["race"]["n"] == 12
    for g in groups.values():
        for e in audit.ESTIMATORS:
            assert abs(sum(g[e]["share"]) - 1) < 1e-6
    md = (out / "audit.md").read_text()
    assert "argmax count" in md and "summed probabilities" in md and "adjusted count" in md
    assert "data:image/png;base64," in (out / "audit.html").read_text()
    assert Image.open(out / "audit.png").size[0] > 500
    # No run in the folder: a clear error, exit status 2.
    assert main(["audit", str(tmp_path / "nothing")]) == 2


def test_adjusted_shares_recover_a_known_composition():
    rates = np.array([[0.8, 0.2, 0.0], [0.3, 0.6, 0.1], [0.0, 0.1, 0.9]])
    p = np.array([0.5, 0.3, 0.2])
    np.testing.assert_allclose(audit.adjusted_shares(rates.T @ p, rates), p, atol=1e-6)
    assert confusion_counts(np.array([0, 1, 1, 2]), np.array([0, 0, 1, 2]), 3).tolist() == [
        [1, 0, 0], [1, 1, 0], [0, 0, 1]]


def test_store_val_confusion_in_sidecar(tmp_path):
    (tmp_path / "m.onnx").symlink_to(SHIPPED_MODEL)
    sidecar = json.loads((SHIPPED_MODEL.parent / "model_info.json").read_text())
    sidecar.pop("val_confusion")
    (tmp_path / "model_info.json").write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match="no val confusion"):
        confusion_rates(load_info(tmp_path / "m.onnx"), "race")
    assert main(["audit", "--store-val-confusion", "--model", str(tmp_path / "m.onnx"), "--limit", "40"]) == 0
    info = load_info(tmp_path / "m.onnx")
    assert info.val_confusion["rows"] == 40 and info.val_confusion["split"] == "val"
    assert np.asarray(info.val_confusion["heads"]["race"]).sum() == 40
    assert confusion_rates(info, "gender").shape == (2, 2)
    assert load_info(SHIPPED_MODEL).val_confusion["rows"] == 3144  # the released sidecar carries it too


def test_crops_framing_checked_on_request(fairface_images, predictor, tmp_path):
    from ff_keras.faces.framing import STATUSES, check_framing
    from ff_keras.faces.analyze import read_rgb

    crops = [str(p) for p in fairface_images[:3]]
    out = tmp_path / "out"
    run_local(crops, str(out), Options(model=MODEL, detector="none", framing="dlib_hog"), predictor)
    rows = _rows(out)
    want = [check_framing(read_rgb(p), "dlib_hog").to_dict() for p in crops]
    assert list(rows.framing) == [w["status"] for w in want] and set(rows.framing) <= set(STATUSES)
    np.testing.assert_allclose(rows.framing_scale.astype(float), [w["scale"] or np.nan for w in want], atol=1e-3)
    with pytest.raises(SystemExit):  # framing is a check of crops: refused with detection on
        main([crops[0], "--out", str(tmp_path / "x"), "--framing", "mtcnn", "--detector", "dlib"])


def test_fsspec_url_inputs_and_bad_model(fairface_images, predictor, tmp_path):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for p in fairface_images[:2]:
        fs.pipe(f"/i31photos/{p.name}", p.read_bytes())
    sources = list(iter_inputs(["memory://i31photos"]))
    assert [s.rsplit("/", 1)[1] for s in sources] == sorted(p.name for p in fairface_images[:2])
    out = tmp_path / "out"
    run_local(["memory://i31photos"], str(out), Options(model=MODEL, detector="none"), predictor)
    rows = _rows(out)
    assert list(rows.status) == ["face", "face"] and list(rows.source) == sources
    # A missing model: exit status 2 with its name, and the folder is not claimed by that run.
    assert main(["memory://i31photos", "--out", str(tmp_path / "o2"), "--model", str(tmp_path / "no.onnx")]) == 2
    assert not (tmp_path / "o2" / manifest.RUN_FILE).exists()
