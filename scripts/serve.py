"""Serve a model over HTTP (uvicorn): /predict, /predict/batch, /health, /metadata, /docs, demo at /.

    python scripts/serve.py --model artifacts/model/model.onnx [--host 127.0.0.1 --port 8000]
        [--workers 2] [--max-batch 32 --max-wait-ms 5] [--no-batching] [--threads 2]

Each worker process loads its own ONNX Runtime session and micro-batcher (settings travel to
the workers as FF_SERVE_* environment variables read by ``app_from_env``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


from ff_keras.serve.app import ServeSettings


def main(argv: list[str] | None = None) -> None:
    d = ServeSettings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model.onnx (or .keras / SavedModel dir) with model_info.json")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=d.max_batch)
    ap.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms)
    ap.add_argument("--no-batching", action="store_true", help="one model call per request")
    ap.add_argument("--threads", type=int, default=d.threads, help="ORT intra-op threads per worker (0 = default)")
    ap.add_argument("--ort-spinning", action="store_true",
                    help="let idle ORT threads busy-wait (lower latency on dedicated cores; off by default)")
    ap.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / 2**20)
    ap.add_argument("--max-pixels", type=int, default=d.max_pixels)
    ap.add_argument("--detector", default=d.detector,
                    help='face detector for ?detect=true ("none", "dlib_hog", "mtcnn", ...)')
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)

    model = Path(args.model).resolve()
    if not model.exists():
        ap.error(f"--model {model} does not exist")
    settings = ServeSettings(
        model_path=str(model), max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
        batching=not args.no_batching, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        threads=args.threads, ort_spinning=args.ort_spinning, detector=args.detector,
    )
    os.environ.update(settings.to_env())
    # Fail here, in the parent, with a clear message rather than in every worker.
    ServeSettings.from_env()

    import uvicorn

    uvicorn.run(
        "ff_keras.serve.app:app_from_env", factory=True, host=args.host, port=args.port,
        workers=args.workers, log_level=args.log_level, access_log=False,
    )


if __name__ == "__main__":
    main()
