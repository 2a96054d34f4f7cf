"""The TensorFlow-free MTCNN (ONNX Runtime + numpy) against the mtcnn package on TensorFlow, on
real photos: same faces, boxes within 1 px, landmarks within 2 px, at both ONet thresholds the
detector uses (0.9 first look, 0.7 second looks)."""

from __future__ import annotations

import numpy as np
import pytest

from ff_keras.data.image_decode import decode_image
from ff_keras.faces import mtcnn_onnx
from ff_keras.faces.detect import ONET_THRESHOLD, RETRY_ONET_THRESHOLD, detect_faces
from test_faces import multi_person_photo

BOX_PX, LANDMARK_PX = 1, 2


@pytest.fixture(scope="module")
def photos(data_root) -> dict[str, np.ndarray]:
    paths = [multi_person_photo(), *(data_root / "fairface" / "val" / f"{i}.jpg" for i in (1, 8, 13)),
             *sorted((data_root / "utkface").glob("*.jpg"))[:2]]
    return {p.name: decode_image(p, p.name).rgb for p in paths}


@pytest.fixture(scope="module")
def detectors():
    from mtcnn import MTCNN

    return mtcnn_onnx.MTCNN(), MTCNN()


@pytest.mark.parametrize("threshold", [ONET_THRESHOLD, RETRY_ONET_THRESHOLD])
def test_same_faces_boxes_and_landmarks_as_tensorflow_mtcnn(photos, detectors, threshold):
    onnx_mtcnn, tf_mtcnn = detectors
    total = 0
    for name, rgb in photos.items():
        got = onnx_mtcnn.detect_faces(rgb, min_face_size=20, threshold_onet=threshold)
        want = tf_mtcnn.detect_faces(rgb, min_face_size=20, threshold_onet=threshold)
        assert len(got) == len(want), name
        for g, w in zip(got, want):
            assert np.abs(np.subtract(g["box"], w["box"])).max() <= BOX_PX, (name, g["box"], w["box"])
            for k, point in w["keypoints"].items():
                assert np.abs(np.subtract(g["keypoints"][k], point)).max() <= LANDMARK_PX, (name, k)
            assert g["confidence"] == pytest.approx(float(w["confidence"]), abs=1e-3)
        total += len(want)
    assert total >= 6 + 3 + 2  # the group photo's six, one per crop (none found is no test)


def test_detect_faces_default_is_the_onnx_detector(photos):
    """detect_faces' "mtcnn" (ONNX) and "mtcnn_tf" give the same faces on the six-person photo."""
    rgb = photos["t1.jpg"]
    onnx_faces, tf_faces = detect_faces(rgb, "mtcnn"), detect_faces(rgb, "mtcnn_tf")
    assert len(onnx_faces) == len(tf_faces) == 6
    for a, b in zip(onnx_faces, tf_faces):
        assert np.abs(np.subtract(a.box, b.box)).max() <= BOX_PX
        assert np.abs(a.landmarks - b.landmarks).max() <= LANDMARK_PX


def test_tf_ops_in_numpy_match_tensorflow(photos):
    """The two TensorFlow image ops MTCNN used, reimplemented: area resize and crop-and-resize."""
    import tensorflow as tf

    image = (photos["t1.jpg"][:301, :457].astype(np.float32) - 127.5) / 128
    for h, w in ((213, 324), (37, 55), (12, 18)):
        want = tf.image.resize(image[None], (h, w), method="area")[0].numpy()
        np.testing.assert_allclose(mtcnn_onnx.resize_area(image, h, w), want, atol=1e-5)
    boxes = np.array([[0.1, 0.2, 0.5, 0.4], [-0.1, 0.9, 0.3, 1.2], [0.3, 0.3, 0.31, 0.33]], np.float32)
    want = tf.image.crop_and_resize(image[None], boxes, np.zeros(3, np.int32), (24, 24)).numpy()
    np.testing.assert_allclose(mtcnn_onnx.crop_and_resize(image, boxes, 24), want, atol=1e-5)


def test_empty_and_faceless_images():
    m = mtcnn_onnx.MTCNN()
    assert m.detect_faces(np.zeros((64, 64, 3), np.uint8)) == []
    assert m.detect_faces(np.full((13, 900, 3), 200, np.uint8)) == []


def test_sessions_keep_no_memory_arena():
    """Each pyramid level and candidate count is a new shape: with ONNX Runtime's arena a service kept
    the largest ever seen (a 144-face photo) for good (peak 1,000 MB under the hostile mix, 728 without)."""
    detector = mtcnn_onnx.MTCNN()
    assert all(not s.get_session_options().enable_cpu_mem_arena for s in detector._nets.values())
