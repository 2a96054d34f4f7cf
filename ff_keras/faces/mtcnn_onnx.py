"""MTCNN (mtcnn 1.0.0) on ONNX Runtime: the same three networks and pipeline, without TensorFlow.

The networks are mtcnn's own weights converted once with tf2onnx (``scripts/convert_weights.py
mtcnn``, shipped in ``ff_keras/faces/weights``). Around them this module reproduces mtcnn 1.0.0's
numpy pipeline step for step (MIT licence, Iván de Paz Centeno): the image pyramid, PNet's
proposals, its non-maximum suppression (a box is dropped when any higher-scoring box overlaps it,
suppressed or not), box regression, square boxes, then RNet and ONet on patches. The two
TensorFlow image ops it used are written here in numpy with TF's arithmetic: ``ResizeArea``
(pyramid levels) and ``CropAndResize`` (bilinear patches, zero outside the image). The result is
checked against the TensorFlow MTCNN on real photos (tests/test_mtcnn_onnx.py): boxes within
1 px, landmarks within 2 px.
"""

from __future__ import annotations

import functools

import numpy as np

from ff_keras.paths import MTCNN_WEIGHTS

MIN_SIZE = 12  # PNet's window
SCALE_FACTOR = 0.709
# mtcnn 1.0.0's defaults
THRESHOLDS = {"pnet": 0.6, "rnet": 0.7, "onet": 0.8}
NMS = {"pnet_scale": 0.5, "pnet": 0.7, "rnet": 0.7, "onet": 0.7}
# Column layout of a box row, as in mtcnn: [x1, y1, x2, y2, score] (+ 10 landmark values after ONet:
# x of the 5 points, then y: left eye, right eye, nose, mouth left, mouth right).
KEYPOINTS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
# Each network's ONNX outputs, in the order mtcnn's Keras networks return them.
OUTPUTS = {"pnet": ["bbox_reg", "bbox_class"], "rnet": ["bbox_reg", "bbox_class"],
           "onet": ["bbox_reg", "landmarks", "bbox_class"]}


class MTCNN:
    """``detect_faces(rgb, min_face_size, threshold_onet)`` with mtcnn's JSON-like output:
    ``[{"box": [x, y, w, h], "confidence": p, "keypoints": {name: [x, y]}}]`` (ints, as mtcnn)."""

    def __init__(self, threads: int | None = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:  # small networks: one thread each, so several detecting threads run in parallel
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        # Every pyramid level and candidate count is a new input shape: ONNX Runtime's memory arena
        # would keep the largest ever seen (a 144-face photo) for the life of the process.
        opts.enable_cpu_mem_arena = False
        self._nets = {}
        for name in ("pnet", "rnet", "onet"):
            path = MTCNN_WEIGHTS / f"mtcnn_{name}.onnx"
            if not path.is_file():
                raise FileNotFoundError(f"MTCNN network missing: {path} (python scripts/convert_weights.py mtcnn)")
            self._nets[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def _run(self, name: str, x: np.ndarray) -> list[np.ndarray]:
        return self._nets[name].run(OUTPUTS[name], {"image": np.ascontiguousarray(x, np.float32)})

    def detect_faces(
        self, rgb: np.ndarray, min_face_size: int = 20, threshold_onet: float = THRESHOLDS["onet"],
        threshold_pnet: float = THRESHOLDS["pnet"], threshold_rnet: float = THRESHOLDS["rnet"],
    ) -> list[dict]:
        """Faces in a uint8 [H, W, 3] RGB image, best first; arguments as mtcnn's ``detect_faces``."""
        image = (np.asarray(rgb, np.float32) - 127.5) / 128  # mtcnn's normalisation, before any resizing
        h, w = image.shape[:2]
        boxes = self._pnet(image, min_face_size, threshold_pnet)
        if len(boxes):
            boxes = self._rnet(image, boxes, threshold_rnet)
        if len(boxes):
            boxes = self._onet(image, boxes, threshold_onet)
        return [_to_json(row, w, h) for row in boxes]

    def _pnet(self, image: np.ndarray, min_face_size: int, threshold: float) -> np.ndarray:
        h, w = image.shape[:2]
        found = []
        for scale in scale_pyramid(w, h, min_face_size):
            level = resize_area(image, int(h * scale), int(w * scale))  # TF truncates the float size
            reg, cls = self._run("pnet", level[None])
            boxes = _proposals(reg[0], cls[0], threshold)
            boxes[:, :4] /= scale
            found.append(boxes[nms(boxes, NMS["pnet_scale"], "union")])
        boxes = np.concatenate(found) if found else np.zeros((0, 5), np.float64)
        boxes = _sorted(boxes)
        return square(boxes[nms(boxes, NMS["pnet"], "union")])

    def _rnet(self, image: np.ndarray, boxes: np.ndarray, threshold: float) -> np.ndarray:
        reg, cls = self._run("rnet", crop_and_resize(image, _normalised(boxes, image), 24))
        boxes = regress(boxes, reg, cls[:, -1])
        boxes = _sorted(boxes[boxes[:, 4] > threshold])
        return square(boxes[nms(boxes, NMS["rnet"], "union")])

    def _onet(self, image: np.ndarray, boxes: np.ndarray, threshold: float) -> np.ndarray:
        reg, points, cls = self._run("onet", crop_and_resize(image, _normalised(boxes, image), 48))
        bw = boxes[:, 2:3] - boxes[:, 0:1] + 1
        bh = boxes[:, 3:4] - boxes[:, 1:2] + 1
        points = np.concatenate([bw * points[:, :5] + boxes[:, 0:1] - 1, bh * points[:, 5:] + boxes[:, 1:2] - 1], 1)
        boxes = np.concatenate([regress(boxes, reg, cls[:, -1]), points], 1)
        boxes = _sorted(boxes[boxes[:, 4] > threshold])
        return boxes[nms(boxes, NMS["onet"], "min")]


def scale_pyramid(width: int, height: int, min_face_size: int) -> np.ndarray:
    """mtcnn's pyramid: the first level maps ``min_face_size`` faces to PNet's 12 px window."""
    count = round(-((np.log(min(width, height) / MIN_SIZE) / np.log(SCALE_FACTOR)) + 1))
    return (MIN_SIZE / min_face_size) * SCALE_FACTOR ** np.arange(count)


@functools.lru_cache(maxsize=256)
def _area_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """TF's ResizeArea along one axis (align_corners=False) as a band: for each output cell the
    input indices [n_out, K] it overlaps and their weights [n_out, K] (overlap / cell size)."""
    scale = np.float32(n_in / n_out)
    cells: list[list[tuple[int, float]]] = []
    for o in range(n_out):
        start, end = np.float32(o * scale), np.float32((o + 1) * scale)
        cells.append([(min(max(i, 0), n_in - 1), float(min(np.float32(i + 1), end) - max(np.float32(i), start)))
                      for i in range(int(np.floor(start)), int(np.ceil(end)))])
    k = max(len(c) for c in cells)
    index = np.zeros((n_out, k), np.intp)
    weight = np.zeros((n_out, k), np.float32)
    for o, cell in enumerate(cells):
        for j, (i, wt) in enumerate(cell):
            index[o, j], weight[o, j] = i, wt
    return index, weight / scale


def _area_axis(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    index, weight = _area_weights(x.shape[axis], n_out)
    shape = [1] * x.ndim
    shape[axis] = n_out
    out = np.zeros(x.shape[:axis] + (n_out,) + x.shape[axis + 1:], np.float32)
    for j in range(index.shape[1]):
        out += np.take(x, index[:, j], axis=axis) * weight[:, j].reshape(shape)
    return out


def resize_area(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """``tf.image.resize(image, (out_h, out_w), method="area")`` for one float32 [H, W, C] image
    (separable: rows, then columns)."""
    return _area_axis(_area_axis(image, out_h, 0), out_w, 1)


def crop_and_resize(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """``tf.image.crop_and_resize`` (bilinear, 0 outside the image) of one float32 [H, W, C] image:
    ``boxes`` [N, 4] normalised (y1, x1, y2, x2) -> [N, size, size, C]."""
    h, w = image.shape[:2]
    steps = np.arange(size, dtype=np.float32)
    ys = boxes[:, 0:1] * (h - 1) + steps * ((boxes[:, 2:3] - boxes[:, 0:1]) * (h - 1) / (size - 1))  # [N, size]
    xs = boxes[:, 1:2] * (w - 1) + steps * ((boxes[:, 3:4] - boxes[:, 1:2]) * (w - 1) / (size - 1))
    y0, x0 = np.floor(ys), np.floor(xs)
    dy, dx = (ys - y0)[:, :, None, None], (xs - x0)[:, None, :, None]
    y0i, x0i = np.clip(y0, 0, h - 1).astype(int), np.clip(x0, 0, w - 1).astype(int)
    y1i, x1i = np.clip(np.ceil(ys), 0, h - 1).astype(int), np.clip(np.ceil(xs), 0, w - 1).astype(int)

    def at(yi: np.ndarray, xi: np.ndarray) -> np.ndarray:
        return image[yi[:, :, None], xi[:, None, :]]  # [N, size, size, C]

    top = at(y0i, x0i) + (at(y0i, x1i) - at(y0i, x0i)) * dx
    bottom = at(y1i, x0i) + (at(y1i, x1i) - at(y1i, x0i)) * dx
    out = top + (bottom - top) * dy
    inside = ((ys >= 0) & (ys <= h - 1))[:, :, None] & ((xs >= 0) & (xs <= w - 1))[:, None, :]
    return np.where(inside[..., None], out, 0).astype(np.float32)


def _normalised(boxes: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Box rows -> crop_and_resize's (y1, x1, y2, x2), divided by the image size as mtcnn does."""
    h, w = image.shape[:2]
    return (boxes[:, [1, 0, 3, 2]] / np.array([h, w, h, w])).astype(np.float32)


def _proposals(reg: np.ndarray, cls: np.ndarray, threshold: float, stride: int = 2, cell: int = 12) -> np.ndarray:
    """PNet's map -> [x1, y1, x2, y2, score] rows at this pyramid level, best score first."""
    score = cls[:, :, 1]
    ys, xs = np.where(score > threshold)
    r = reg[ys, xs].astype(np.float64)  # [K, 4]: x1, y1, x2, y2 offsets in window units
    x0, y0 = xs * stride + 1.0, ys * stride + 1.0
    x1, y1 = xs * stride + float(cell), ys * stride + float(cell)
    size = cell - 1.0
    boxes = np.stack([x0 + r[:, 0] * size, y0 + r[:, 1] * size, x1 + r[:, 2] * size, y1 + r[:, 3] * size,
                      score[ys, xs].astype(np.float64)], 1)
    return boxes[np.argsort(boxes[:, 4])[::-1]]


def _sorted(boxes: np.ndarray) -> np.ndarray:
    return boxes[np.argsort(boxes[:, 4])[::-1]]


def nms(boxes: np.ndarray, threshold: float, method: str) -> np.ndarray:
    """Indices kept by mtcnn's suppression: a box goes when any earlier (higher-scoring) box,
    kept or not, overlaps it by more than ``threshold`` (IoU, or intersection / smaller area)."""
    n = len(boxes)
    if n == 0:
        return np.zeros(0, int)
    b = boxes[:, :4]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = np.maximum(0, np.minimum(b[None, :, 2], b[:, None, 2]) - np.maximum(b[None, :, 0], b[:, None, 0]))
    ih = np.maximum(0, np.minimum(b[None, :, 3], b[:, None, 3]) - np.maximum(b[None, :, 1], b[:, None, 1]))
    inter = iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "union":
            overlap = inter / (area[:, None] + area[None, :] - inter)
        else:
            overlap = inter / np.minimum(area[:, None], area[None, :])
    earlier = np.triu(np.ones((n, n), bool), k=1)  # [i, j]: i comes before j
    return np.where(~((overlap > threshold) & earlier).any(axis=0))[0]


def square(boxes: np.ndarray) -> np.ndarray:
    """Each box grown to a square on its longer side, centre kept."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += w * 0.5 - side * 0.5
    boxes[:, 1] += h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def regress(boxes: np.ndarray, offsets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Boxes moved by a network's offsets (in box sizes, +1 px as mtcnn) with its scores."""
    boxes = boxes[:, :5].copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] += offsets * np.stack([w, h, w, h], 1)
    boxes[:, 4] = scores
    return boxes


def _to_json(row: np.ndarray, width: int, height: int) -> dict:
    """mtcnn's output record: box clipped to the image, rounded, as [x, y, w, h]; landmarks rounded."""
    x1, x2 = (min(max(v, 0), width - 1) for v in (row[0], row[2]))
    y1, y2 = (min(max(v, 0), height - 1) for v in (row[1], row[3]))
    box = np.asarray([x1, y1, x2 - x1, y2 - y1]).round().astype(int).tolist()
    pts = row[5:15].round().astype(int)
    return {"box": box, "confidence": float(row[4]),
            "keypoints": {k: [int(pts[i]), int(pts[5 + i])] for i, k in enumerate(KEYPOINTS)}}
