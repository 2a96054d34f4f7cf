"""mtcnn 1.0.0's three TensorFlow networks (PNet, RNet, ONet) written once as ONNX files.

The default face detector then runs on ONNX Runtime (``ff_keras.faces.mtcnn_onnx``) and never
imports TensorFlow; this conversion is the only place that needs TF, tf2onnx and the mtcnn package.
PNet is fully convolutional (any image size); RNet and ONet take batches of 24 px / 48 px patches.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ff_keras.faces.mtcnn_onnx import OUTPUTS

# name -> (mtcnn stage class, input shape with None for free dims)
NETWORKS: dict[str, tuple[str, list[int | None]]] = {
    "pnet": ("StagePNet", [None, None, None, 3]),
    "rnet": ("StageRNet", [None, 24, 24, 3]),
    "onet": ("StageONet", [None, 48, 48, 3]),
}
OPSET = 17
PARITY_ATOL = 1e-4


def convert_mtcnn(out_dir: str | Path) -> dict[str, Path]:
    """Writes ``<out_dir>/mtcnn_{pnet,rnet,onet}.onnx`` and checks each against its Keras network on
    random normalised inputs (max abs difference <= ``PARITY_ATOL``); returns the paths."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx
    from mtcnn import stages

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = {}
    for name, (stage_cls, shape) in NETWORKS.items():
        outputs = OUTPUTS[name]
        model = getattr(stages, stage_cls)().model
        spec = (tf.TensorSpec(shape, tf.float32, name="image"),)

        @tf.function(input_signature=spec)
        def fn(image, model=model, outputs=outputs):
            return {k: tf.identity(v, name=k) for k, v in zip(outputs, model(image))}

        path = out_dir / f"mtcnn_{name}.onnx"
        tf2onnx.convert.from_function(fn, input_signature=spec, opset=OPSET, output_path=str(path))
        probe_shape = [5 if d is None else d for d in shape]
        if name == "pnet":
            probe_shape = [1, 57, 83, 3]
        x = rng.uniform(-1, 1, probe_shape).astype(np.float32)
        want = [np.asarray(v) for v in model(x)]
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(outputs, {"image": x})
        worst = max(float(np.abs(a - b).max()) for a, b in zip(want, got))
        if worst > PARITY_ATOL:
            raise ValueError(f"{path}: ONNX differs from mtcnn's {name} by {worst:.2e} > {PARITY_ATOL}")
        written[name] = path
    return written
