"""Face detection + alignment on real photos: dataset crops pasted at known positions, and a
real multi-person photograph shipped by the ``insightface`` package (data/images/t1.jpg).

Bounds were measured on FairFace val crops 1-40 on a 300 px canvas (region IoU between the
realigned crop and the original crop): median 0.97 for both dlib HOG and MTCNN, above 0.93
on every frontal face used here; the two detectors' crop regions agree at IoU median 0.98.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studies import composite as C
from ff_keras.faces.detect import align, chip_quad, detect_and_align, detect_faces

# Frontal FairFace val crops that both detectors find (of 1-16, all but 8, 9, 13, 16).
CROPS = (1, 3, 6)
REPRODUCE_IOU = 0.90  # realigned region vs pasted crop, each face
DETECTOR_IOU = 0.90  # MTCNN's crop region vs dlib HOG's, same face
PIXEL_CORR = 0.90  # realigned chip vs original crop, pixel correlation


def multi_person_photo() -> Path:
    spec = importlib.util.find_spec("insightface")
    if spec is None:
        pytest.fail("insightface (its data/images/t1.jpg, a 6-person photo) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "images" / "t1.jpg"


@pytest.fixture(scope="module")
def composite(data_root):
    paths = [data_root / "fairface" / "val" / f"{i}.jpg" for i in CROPS]
    return C.make_composite(paths, np.random.default_rng(0), face_px=(150, 190))


@pytest.fixture(scope="module")
def found(composite):
    return {d: detect_faces(composite.image, d) for d in ("dlib_hog", "mtcnn")}


@pytest.mark.parametrize("detector", ["dlib_hog", "mtcnn"])
def test_composite_faces_found_at_pasted_positions(composite, found, detector):
    faces = found[detector]
    assert len(faces) == len(CROPS)
    pairs = C.match_faces([chip_quad(f) for f in faces], composite.boxes)
    assert sorted(j for _, j, _ in pairs) == list(range(len(CROPS)))
    # Faces come back left to right, like the pasted row.
    assert [j for _, j, _ in sorted(pairs)] == list(range(len(CROPS)))
    for _, _, iou in pairs:
        assert iou >= REPRODUCE_IOU
    for f, (x0, y0, x1, y1) in zip(faces, composite.boxes):
        x, y, w, h = f.box  # the detector's box lies inside the pasted crop
        assert x0 - 5 <= x and x + w <= x1 + 5 and y0 - 5 <= y and y + h <= y1 + 5
        assert f.landmarks.shape == (5, 2)


def test_detectors_crop_the_same_region(found):
    for a, b in zip(found["dlib_hog"], found["mtcnn"]):
        assert C.quad_iou(chip_quad(a), chip_quad(b)) >= DETECTOR_IOU


def test_realigned_chip_reproduces_dataset_crop(data_root):
    """A dataset crop on a larger canvas, detected and aligned at 224, gives back the crop."""
    crop = np.asarray(Image.open(data_root / "fairface" / "val" / f"{CROPS[0]}.jpg").convert("RGB"))
    canvas = C.background(320, 360, np.random.default_rng(1))
    canvas[40:264, 70:294] = crop
    faces, chips = detect_and_align(canvas, "dlib_hog", size=224)
    assert len(faces) == 1 and chips.shape == (1, 224, 224, 3) and chips.dtype == np.uint8
    assert C.crop_correlation(chips[0], crop) >= PIXEL_CORR
    # Removing the alignment (a plain crop of the detector's box) must not pass the same bar.
    x, y, w, h = faces[0].box
    plain = np.asarray(Image.fromarray(canvas[y : y + h, x : x + w]).resize((224, 224)))
    assert C.crop_correlation(plain, crop) < PIXEL_CORR


def test_dlib_cnn_detector_finds_face(data_root):
    crop = np.asarray(Image.open(data_root / "fairface" / "val" / f"{CROPS[1]}.jpg").convert("RGB"))
    canvas = C.background(260, 260, np.random.default_rng(2))
    canvas[18:242, 18:242] = crop
    faces = detect_faces(canvas, "dlib_cnn", min_face=80)  # no upsampling: ~1 s on this CPU
    assert len(faces) == 1
    assert C.quad_iou(chip_quad(faces[0]), C.box_quad([18, 18, 242, 242])) >= REPRODUCE_IOU


@pytest.mark.parametrize("detector", ["dlib_hog", "mtcnn"])
def test_real_group_photo_has_six_faces(detector):
    rgb = np.asarray(Image.open(multi_person_photo()).convert("RGB"))
    faces = detect_faces(rgb, detector, min_face=80)
    assert len(faces) == 6
    xs = [f.box[0] for f in faces]
    assert xs == sorted(xs)
    quads = [chip_quad(f) for f in faces]
    for i in range(len(quads)):  # six different people: no two crops overlap much
        for j in range(i + 1, len(quads)):
            assert C.quad_iou(quads[i], quads[j]) < 0.2
    chip = align(rgb, faces[0], 64)
    assert chip.shape == (64, 64, 3)


def test_no_face_and_bad_input():
    blank = C.background(200, 300, np.random.default_rng(3))
    faces, chips = detect_and_align(blank, "dlib_hog", size=32)
    assert faces == [] and chips.shape == (0, 32, 32, 3)
    with pytest.raises(ValueError, match="uint8 RGB"):
        detect_faces(blank.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 RGB"):
        detect_faces(blank[..., 0])
    with pytest.raises(ValueError, match="'retina'"):
        detect_faces(blank, "retina")


def test_face_filling_the_frame_is_found_on_a_padded_retry(data_root):
    """MTCNN misses a face that fills a FairFace crop; the padded second look finds it, with
    its box and landmarks in the crop's own pixels."""
    crop = np.asarray(Image.open(data_root / "fairface" / "val" / "10055.jpg").convert("RGB"))
    assert detect_faces(crop, "mtcnn", retry_padded=False) == []
    (face,) = detect_faces(crop, "mtcnn")
    assert ((face.landmarks >= 0) & (face.landmarks < 224)).all()
    x, y, w, h = face.box
    assert -0.25 * 224 < x < 112 < x + w and -0.25 * 224 < y < 112 < y + h


def test_detection_on_a_bounded_copy_maps_boxes_back(composite):
    """Detecting on a copy of a quarter of the pixels finds the same faces and crops them alike."""
    rgb = composite.image
    full = detect_faces(rgb, "dlib_hog", min_face=80)
    small = detect_faces(rgb, "dlib_hog", min_face=80, max_pixels=rgb.shape[0] * rgb.shape[1] // 4)
    assert len(small) == len(full) == len(composite.boxes)
    for a, b in zip(full, small):
        # The detector's own box jitters with scale; the aligned crop, from full-size landmarks, does not.
        assert C.quad_iou(chip_quad(a), chip_quad(b)) > REPRODUCE_IOU
        assert np.abs(a.landmarks.mean(0) - b.landmarks.mean(0)).max() < 0.05 * a.box[2]


@pytest.mark.parametrize("detector", ["dlib_hog", "mtcnn"])
def test_framing_check_tells_fairface_crops_from_tighter_looser_and_whole_photos(data_root, detector):
    """The scale is the crop's geometry (1.0 FairFace's chip, 0.6 its central 60 %, 1.2 padding
    0.4) read back through the detector; the thresholds flag what the model was not measured on."""
    from ff_keras.evaluation.robustness import CROP_VARIANTS, apply_variant
    from ff_keras.faces.framing import OK_SCALE, check_framing

    chip = Image.open(data_root / "fairface" / "val" / "1.jpg").convert("RGB")

    def framing(image: Image.Image):
        return check_framing(np.asarray(image), detector)

    for variant, scale, status in (("standard", 1.0, "ok"), ("central_60", 0.6, "tighter"),
                                   ("padding_0.4", 1.2, "ok")):
        got = framing(apply_variant(chip, CROP_VARIANTS[variant]))
        assert got.status == status and got.scale == pytest.approx(scale, abs=0.12), (variant, got)
    photo = Image.new("RGB", (700, 500), "white")
    photo.paste(chip, (40, 40))
    alone = framing(photo)
    assert alone.status == "looser" and alone.scale > OK_SCALE[1] and "detect=true" in alone.message
    # On a bounded copy (the service's detect_max_pixels) the face is mapped back: the same answer.
    bounded = check_framing(np.asarray(photo), detector, max_pixels=700 * 500 // 3)
    assert bounded.status == "looser" and bounded.scale == pytest.approx(alone.scale, rel=0.05)
    photo.paste(Image.open(data_root / "fairface" / "val" / "5.jpg"), (400, 60))
    both = framing(photo)
    assert both.status == "several_faces" and both.faces_found == 2
    blank = framing(Image.fromarray(C.background(200, 300, np.random.default_rng(3))))
    assert blank.status == "no_face" and blank.scale is None and blank.to_dict()["scale"] is None
