"""Serving benchmarks, loopback only, bounded request counts.

1. img/s of ONNX Runtime vs Keras (``model.predict`` and a direct call) vs the reloaded
   SavedModel, at batch 1 and 32, on real face crops; ORT img/s at batch 1..32 (the most
   that micro-batching can gain from the model alone on this host).
2. HTTP load: ``--clients`` concurrent clients x ``--requests`` requests EACH against /predict,
   for micro-batching on (1 worker), off (1 worker) and on with 2 workers: req/s, p50/p99, errors.

    python benchmarks/benchmark_serving.py --model-dir artifacts/model --json artifacts/bench_serving.json
    # tiny smoke run: --requests 5 --clients 4 --images 8 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: studies/ is not installed

import numpy as np
import uvloop

from ff_keras.data.readers import resolve_data_root
from ff_keras.data.crops import fairface_val_crops
from ff_keras.inference.throughput import images_per_second
from ff_keras.inference.predictor import load_images, load_predictor
from studies.loadtest import load_test, running_server
from ff_keras.machine import write_result

HTTP_SETUPS = {
    "batching_on_1_worker": ["--workers", "1"],
    "batching_off_1_worker": ["--workers", "1", "--no-batching"],
    "batching_on_2_workers": ["--workers", "2"],
}


class KerasModelPredict:
    """``model.predict`` (Keras' batch loop, with its per-call overhead) behind ``.predict``."""

    def __init__(self, keras_predictor):
        self.inner = keras_predictor

    def predict(self, x: np.ndarray):
        return self.inner.model.predict(x, batch_size=len(x), verbose=0)


def inference_speed(model_dir: Path, images: np.ndarray, threads: int | None, repeats: int) -> dict:
    onnx = load_predictor(model_dir / "model.onnx", threads=threads)
    keras = load_predictor(model_dir / "model.keras", threads=threads)
    saved = load_predictor(model_dir / "saved_model", threads=threads)
    others = {"keras_predict": KerasModelPredict(keras), "keras_call": keras, "saved_model": saved}
    # ORT throughput by batch size: also the most micro-batching can buy from the model alone.
    curve = {b: images_per_second(onnx, images, b, repeats) for b in (1, 2, 4, 8, 16, 32)}
    out = {}
    for batch in (1, 32):
        row = {"onnxruntime": curve[batch],
               **{n: images_per_second(r, images, batch, repeats) for n, r in others.items()}}
        row["ort_vs_keras_predict"] = row["onnxruntime"] / row["keras_predict"]
        row["ort_vs_keras_call"] = row["onnxruntime"] / row["keras_call"]
        out[f"batch{batch}_img_s"] = row
    out["onnxruntime_img_s_by_batch"] = {str(b): v for b, v in curve.items()}
    out["onnxruntime_best_over_batch1"] = max(curve.values()) / curve[1]
    return out


def http_benchmarks(model: Path, payload: bytes, clients: int, requests: int, extra: list[str], log_dir: Path) -> dict:
    out = {}
    for name, args in HTTP_SETUPS.items():
        with running_server(model, [*args, *extra], log_path=log_dir / f"serve_{name}.log") as url:
            out[name] = uvloop.run(load_test(url, payload, clients, requests))
        print(f"{name}: {out[name]['req_per_s']:.1f} req/s, p50 {out[name]['p50_ms']:.1f} ms, "
              f"p99 {out[name]['p99_ms']:.1f} ms, errors {out[name]['errors']}", flush=True)
    on, off = out["batching_on_1_worker"]["req_per_s"], out["batching_off_1_worker"]["req_per_s"]
    out["batching_speedup"] = on / off if off else None
    out["two_vs_one_worker"] = out["batching_on_2_workers"]["req_per_s"] / on if on else None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True, help="folder written by scripts/export.py")
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=500, help="requests per client")
    ap.add_argument("--images", type=int, default=64, help="real faces used for the inference benchmark")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads for all runtimes (0 = default)")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--ort-spinning", action="store_true", help="servers keep idle ORT threads spinning")
    ap.add_argument("--skip-inference", action="store_true")
    ap.add_argument("--skip-http", action="store_true")
    args = ap.parse_args(argv)

    model_dir = Path(args.model_dir)
    info = json.loads((model_dir / "model_info.json").read_text())
    paths = fairface_val_crops(resolve_data_root(), args.images)
    result: dict = {
        "model_dir": str(model_dir), "image_size": info["image_size"], "backbone": info["backbone"],
        "settings": vars(args),
    }
    if not args.skip_inference:
        images = load_images(paths, info["image_size"])
        result["inference"] = inference_speed(model_dir, images, args.threads or None, args.repeats)
        print(json.dumps(result["inference"], indent=2), flush=True)
    if not args.skip_http:
        # The model path alone: the framing check's detector pass (~0.1 s a crop) is measured by
        # benchmarks/benchmark_framing.py.
        extra = ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
                 "--threads", str(args.threads), "--no-framing-check"]
        extra += ["--ort-spinning"] if args.ort_spinning else []
        log_dir = Path(args.json).resolve().parent
        log_dir.mkdir(parents=True, exist_ok=True)
        result["http"] = http_benchmarks(
            model_dir / "model.onnx", paths[0].read_bytes(), args.clients, args.requests, extra, log_dir
        )
    write_result(args.json, result)
    errors = sum(v["errors"] for k, v in result.get("http", {}).items() if isinstance(v, dict))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
