"""One inference interface over the three exported formats: ``.onnx``, ``.keras`` and SavedModel.

``load_predictor(path)`` picks the backend from the path. The ONNX backend is the serving
path and never imports TensorFlow (TF costs seconds of start-up and ~1 GB of memory per
worker); TF/Keras are imported only inside the Keras and SavedModel backends.

Every backend returns probabilities per head, plus ``age_years`` (years, [N]) when the
artifact has that regression output. A training checkpoint (``info.outputs ==
"logits"``) is softmaxed here with the sidecar's temperature, so the same numbers come out
whichever artifact is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ff_keras.labels import REGRESSION_HEADS
from ff_keras.data.preprocess import square_resize_np
from ff_keras.model_info import ModelInfo, check_onnx_agrees, load_info


def prepare_face(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """An aligned face crop (any size, any mode) -> float32 [size, size, 3] RGB 0-255 model input.

    Uses the project's single resize policy (centre square + bilinear, ``preprocess``).
    """
    return square_resize_np(image, size).astype(np.float32)


def load_images(paths: Iterable[str | Path], size: int) -> np.ndarray:
    """Reads image files into one float32 [N, size, size, 3] batch (parity checks, benchmarks)."""
    arrays = []
    for p in paths:
        with Image.open(p) as im:
            arrays.append(prepare_face(im, size))
    if not arrays:
        raise ValueError("load_images got no paths")
    return np.stack(arrays)


LOG_EPS = 1e-12  # probabilities are clipped here before a log (as ``evaluation.calibration`` does)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def apply_logit_bias(p: np.ndarray, bias: np.ndarray | Sequence, by: np.ndarray | None = None) -> np.ndarray:
    """``softmax(log p + b)``: post-network logit adjustment of probabilities ``p`` [N, C].

    ``bias`` is [C], or [G, C] with one row picked per face by the class ids ``by`` [N] of another
    head (e.g. race biases conditioned on the predicted gender). ``export.add_logit_bias`` writes
    the same step into an ONNX graph.
    """
    b = np.asarray(bias, np.float64)
    z = np.log(np.clip(p.astype(np.float64), LOG_EPS, 1.0)) + (b if by is None else b[by])
    z -= z.max(-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


class Predictor:
    """Batched inference; subclasses implement ``_run`` on one float32 chunk."""

    backend = "base"

    def __init__(self, path: str | Path, info: ModelInfo, batch_size: int = 32):
        self.path = Path(path)
        self.info = info
        self.batch_size = batch_size
        self._regression: list[str] = []

    @property
    def heads(self) -> list[str]:
        return list(self.info.heads)

    @property
    def regression_heads(self) -> list[str]:
        """Raw (not softmaxed) outputs such as ``age_years`` that this artifact has."""
        return list(self._regression)

    def _find_regression_heads(self, outputs: Sequence[str]) -> None:
        """Records which regression heads the artifact outputs; the sidecar's must all be there."""
        missing = [h for h in self.info.regression_heads if h not in outputs]
        if missing:
            raise ValueError(f"{self.path}: model_info.json lists {missing} but the model has no such output")
        self._regression = [h for h in REGRESSION_HEADS if h in outputs]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.info.image_size, self.info.image_size, 3)

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images: uint8/float32 [N, H, W, 3] RGB 0-255 at the model's size -> probabilities per head."""
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1:] != self.input_shape:
            raise ValueError(f"images must have shape [N, {', '.join(map(str, self.input_shape))}], got {x.shape}")
        x = x.astype(np.float32, copy=False)
        chunks = [self._run(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        if not chunks:
            return {h: np.zeros((0, len(self.info.classes[h])), np.float32) for h in self.heads}
        out = {h: np.concatenate([c[h] for c in chunks]).astype(np.float32) for h in self.heads}
        if self.info.outputs == "logits":
            out = {h: softmax(v, self.info.temperature.get(h, 1.0)) for h, v in out.items()}
        for h in self.regression_heads:
            out[h] = np.concatenate([c[h] for c in chunks]).astype(np.float32).reshape(len(x))
        return out

    def labels_from_probs(self, probs: dict[str, np.ndarray]) -> list[dict[str, dict]]:
        """Probabilities per head -> one ``{head: {"label", "probabilities": {class: p}}}`` per image.

        For heads with an ambiguity threshold in the sidecar (``ModelInfo.ambiguity``), each head
        also carries ``ambiguous`` (top probability below the threshold) and ``runner_up``
        (``{"label", "probability"}`` of the second class): the service, the CLI and the demo page
        all read the flag from here.
        """
        n = len(next(iter(probs.values())))
        thresholds = self.info.ambiguity
        results = []
        for i in range(n):
            item = {}
            for head in self.heads:
                names = self.info.classes[head]
                p = probs[head][i]
                first, second = np.argsort(-p, kind="stable")[:2]
                item[head] = {
                    "label": names[int(first)],
                    "probabilities": {name: float(v) for name, v in zip(names, p)},
                }
                if head in thresholds:
                    item[head]["ambiguous"] = bool(p[first] < thresholds[head])
                    item[head]["runner_up"] = {"label": names[int(second)], "probability": float(p[second])}
            results.append(item)
        return results

    def predict_labels(self, images: np.ndarray) -> list[dict[str, dict]]:
        return self.labels_from_probs(self.predict(images))

    def results_from_probs(self, probs: dict[str, np.ndarray]) -> list[dict]:
        """One ``{"heads": {head: {"label", "probabilities"}}, "age_years": float | None}``
        per image: the record the CLI's ``--json`` and the service share."""
        years = probs.get("age_years")
        return [
            {"heads": heads, "age_years": None if years is None else round(float(years[i]), 1)}
            for i, heads in enumerate(self.labels_from_probs(probs))
        ]

    def predict_results(self, images: np.ndarray) -> list[dict]:
        return self.results_from_probs(self.predict(images))


class OnnxPredictor(Predictor):
    """One ONNX Runtime session; ``threads`` sets intra-op parallelism (None = ORT default).

    ``spinning=False`` makes ORT's idle worker threads sleep instead of busy-waiting for the
    next call: in a server sharing a few cores with the event loop, spinning threads steal the
    CPU that parses the next requests.
    """

    backend = "onnx"

    def __init__(
        self,
        path: str | Path,
        info: ModelInfo,
        threads: int | None = None,
        batch_size: int = 32,
        spinning: bool = True,
    ):
        import onnxruntime as ort

        super().__init__(path, info, batch_size)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
            raise ValueError(f"{path} is not a loadable ONNX model: {str(err).splitlines()[0]}") from err
        names = [o.name for o in self.session.get_outputs()]
        (model_input,) = self.session.get_inputs()
        check_onnx_agrees(info, self.session.get_modelmeta().custom_metadata_map, model_input.shape, names, path)
        self.input_name = model_input.name
        self._regression = [h for h in REGRESSION_HEADS if h in names]
        self._outputs = [*self.heads, *self._regression]

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self._outputs, {self.input_name: batch})
        return dict(zip(self._outputs, values))


class KerasPredictor(Predictor):
    """A ``.keras`` file: an exported inference model or a training checkpoint (logits)."""

    backend = "keras"

    def __init__(self, path: str | Path, info: ModelInfo, threads: int | None = None, batch_size: int = 32):
        super().__init__(path, info, batch_size)
        tf = _import_tf(threads)
        import keras

        self._tf = tf
        self.model = keras.saving.load_model(str(path), compile=False)
        # Dict outputs are keyed by head; their layer names (``age_probs``...) differ.
        outputs = list(self.model.output) if isinstance(self.model.output, dict) else self.model.output_names
        self._find_regression_heads(outputs)

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        out = self.model(batch, training=False)
        return {h: np.asarray(out[h]) for h in [*self.heads, *self.regression_heads]}


class SavedModelPredictor(Predictor):
    """A SavedModel directory, called through its ``serving_default`` signature."""

    backend = "saved_model"

    def __init__(self, path: str | Path, info: ModelInfo, threads: int | None = None, batch_size: int = 32):
        super().__init__(path, info, batch_size)
        tf = _import_tf(threads)
        self._tf = tf
        self.loaded = tf.saved_model.load(str(path))
        self.fn = self.loaded.signatures["serving_default"]
        outputs = list(self.fn.structured_outputs)
        self._find_regression_heads(outputs)

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        out = self.fn(image=self._tf.constant(batch))
        return {h: out[h].numpy() for h in [*self.heads, *self._regression]}


def _import_tf(threads: int | None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # TF already initialised in this process; keep its thread pool
    return tf


def load_predictor(
    path: str | Path, threads: int | None = None, batch_size: int = 32, spinning: bool = True
) -> Predictor:
    """Opens ``model.onnx``, ``*.keras`` or a SavedModel directory with its ``model_info.json``.

    ``spinning`` applies to ONNX Runtime only (see ``OnnxPredictor``).

    Raises:
        FileNotFoundError: if the path or its sidecar is missing.
        ValueError: if the path is none of the three formats, or the model and its sidecar
            disagree (input size, class names, outputs); the message is one line.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model not found: {p}")
    info = load_info(p)
    if p.is_dir():
        if not (p / "saved_model.pb").exists():
            raise ValueError(f"{p} is a directory without saved_model.pb; expected a SavedModel")
        return SavedModelPredictor(p, info, threads, batch_size)
    if p.suffix == ".onnx":
        return OnnxPredictor(p, info, threads, batch_size, spinning)
    if p.suffix == ".keras":
        return KerasPredictor(p, info, threads, batch_size)
    raise ValueError(f"unsupported model file {p}: expected .onnx, .keras or a SavedModel directory")


def argmax_agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray], heads: Sequence[str]) -> dict[str, float]:
    """Fraction of rows whose top class agrees, per head (parity and INT8 checks)."""
    return {h: float(np.mean(a[h].argmax(-1) == b[h].argmax(-1))) for h in heads}
