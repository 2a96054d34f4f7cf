"""Serve a model over HTTP (uvicorn): /predict, /predict/batch, /health, /metadata, /docs, demo at /.

    python scripts/serve.py --model artifacts/model/model.onnx [--host 127.0.0.1 --port 8000]
        [--workers 2] [--max-batch 32 --max-wait-ms 5] [--no-batching] [--threads 2]
        [--detector mtcnn|dlib|dlib_hog|dlib_cnn|none]

The model is loaded and checked once here, before any worker starts: a missing or
mismatched model_info.json, an unknown detector or a model that cannot answer a test input
ends the command with one line on stderr and exit status 2. Each worker process then loads
its own ONNX Runtime session and micro-batcher (settings travel to the workers as FF_SERVE_*
environment variables read by ``app_from_env``).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path


from ff_keras.faces.analyze import DETECTOR_ALIASES
from ff_keras.serve.app import ServeSettings
from ff_keras.paths import default_model


def main(argv: list[str] | None = None) -> int:
    d = ServeSettings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=default_model(),
                    help="model.onnx (or .keras / SavedModel dir) with model_info.json"
                    " (default: $FF_MODEL, else the shipped models/ff_dlib_resnet150.onnx)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=d.max_batch)
    ap.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms)
    ap.add_argument("--no-batching", action="store_true", help="one model call per request")
    ap.add_argument("--threads", type=int, default=d.threads, help="ORT intra-op threads per worker (0 = default)")
    ap.add_argument("--ort-spinning", action="store_true",
                    help="let idle ORT threads busy-wait (lower latency on dedicated cores; off by default)")
    ap.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / 2**20, help="per file")
    ap.add_argument("--max-request-mb", type=float, default=d.max_request_bytes / 2**20, help="per request body")
    ap.add_argument("--max-pixels", type=int, default=d.max_pixels, help="per image")
    ap.add_argument("--max-request-pixels", type=int, default=d.max_request_pixels, help="decoded, per request")
    ap.add_argument("--detect-max-pixels", type=int, default=d.detect_max_pixels,
                    help="detect faces on a copy of at most this many pixels")
    ap.add_argument("--decode-threads", type=int, default=d.decode_threads,
                    help="images decoded and searched for faces at once, per worker")
    ap.add_argument("--detector", default=d.detector, choices=sorted(DETECTOR_ALIASES),
                    help=f"face detector for ?detect=true; 'dlib' = dlib HOG; 'none' = the whole image is one "
                    f"face (default {d.detector})")
    ap.add_argument("--no-framing-check", action="store_true",
                    help="never run the detector on pre-cut crops (requests' check_framing is then ignored)")
    ap.add_argument("--keep-alive-s", type=int, default=d.keep_alive_s, help="close idle keep-alive connections")
    ap.add_argument("--head-timeout-s", type=float, default=d.head_timeout_s,
                    help="close connections whose request headers take longer")
    ap.add_argument("--limit-concurrency", type=int, default=d.limit_concurrency,
                    help="requests in flight per worker before new ones get a JSON 503 with Retry-After")
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)

    model = Path(args.model).resolve()
    if not model.exists():
        return _fail(f"--model {model} does not exist")
    if args.workers < 1:
        return _fail("--workers must be >= 1")
    try:  # ServeSettings names any limit below 1, e.g. a size in MB that rounds to 0 bytes
        settings = ServeSettings(
            model_path=str(model), max_upload_bytes=int(args.max_upload_mb * 2**20),
            max_request_bytes=int(args.max_request_mb * 2**20), max_pixels=args.max_pixels,
            max_request_pixels=args.max_request_pixels, detect_max_pixels=args.detect_max_pixels,
            decode_threads=args.decode_threads, batching=not args.no_batching, max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms, threads=args.threads, ort_spinning=args.ort_spinning,
            detector=args.detector, framing_check=not args.no_framing_check,
            keep_alive_s=args.keep_alive_s, head_timeout_s=args.head_timeout_s,
            limit_concurrency=args.limit_concurrency,
        )
    except ValueError as err:
        return _fail(str(err))

    import uvicorn

    from ff_keras.serve import app as service
    from ff_keras.serve.limits import GuardedHttpToolsProtocol

    try:
        if args.workers == 1:  # this process serves: build (and check) the app once, here
            target, factory = service.create_app(model, settings), False
        else:  # check once here; each worker then loads its own copy
            service.load_checked_predictor(settings)
            os.environ.update(settings.to_env())
            target, factory = "ff_keras.serve.app:app_from_env", True
    except (FileNotFoundError, ValueError, OSError, ImportError) as err:
        return _fail(str(err).splitlines()[0] if str(err) else type(err).__name__)

    protocol = functools.partial(GuardedHttpToolsProtocol, head_timeout_s=settings.head_timeout_s,
                                 max_head_bytes=settings.max_head_bytes)
    uvicorn.run(
        target, factory=factory, host=args.host, port=args.port, workers=args.workers,
        log_level=args.log_level, access_log=False, http=protocol, timeout_keep_alive=settings.keep_alive_s,
        # uvicorn's limit counts open connections too and answers in plain text: a backstop
        # above the app's own JSON 503 (ConcurrencyLimit) for floods of idle connections.
        limit_concurrency=2 * settings.limit_concurrency + 8, timeout_graceful_shutdown=10,
    )
    return 0


def _fail(message: str) -> int:
    print(f"serve.py: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
