"""Serve a model over HTTP (uvicorn): /predict, /predict/batch, /health, /metadata, /docs, demo at /.

    python scripts/serve.py --model artifacts/model/model.onnx [--host 127.0.0.1 --port 8000]
        [--workers 2] [--max-batch 32 --max-wait-ms 5] [--no-batching] [--threads 2]
        [--detector mtcnn|dlib|dlib_hog|dlib_cnn|none]

The model is loaded and checked once here, before any worker starts: a missing or
mismatched model_info.json, an unknown detector or a model that cannot answer a test input
ends the command with one line on stderr and exit status 2. Each worker process then loads
its own ONNX Runtime session and micro-batcher (settings travel to the workers as FF_SERVE_*
environment variables read by ``app_from_env``). A worker that dies is replaced; if the
replacement cannot load the model (deleted or replaced since start-up), the whole service
stops with one line naming the cause and exit status 3, instead of respawning it in a loop.
On SIGTERM, requests in flight get --drain-timeout-s to finish; new ones get a JSON 503.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path


from ff_keras.faces.analyze import DETECTOR_ALIASES
from ff_keras.serve.app import ServeSettings
from ff_keras.paths import add_model_argument


def main(argv: list[str] | None = None) -> int:
    d = ServeSettings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(ap)
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
    ap.add_argument("--max-side", type=int, default=d.max_side, help="longest side of an image, px")
    ap.add_argument("--max-aspect", type=float, default=d.max_aspect, help="long side / short side of an image")
    ap.add_argument("--max-jpeg-scans", type=int, default=d.max_jpeg_scans,
                    help="scans of a (progressive) JPEG; each one is a decoding pass over the whole image")
    ap.add_argument("--max-request-faces", type=int, default=d.max_request_faces,
                    help="faces one request may send to the model; files past it get 413")
    ap.add_argument("--max-request-pixels", type=int, default=d.max_request_pixels, help="decoded, per request")
    ap.add_argument("--detect-max-pixels", type=int, default=d.detect_max_pixels,
                    help="detect faces on a copy of at most this many pixels")
    ap.add_argument("--decode-threads", type=int, default=d.decode_threads,
                    help="images decoded and searched for faces at once, per worker")
    ap.add_argument("--light-max-pixels", type=int, default=d.light_max_pixels,
                    help="images this small sent without detect get one more decode thread of their own")
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
    ap.add_argument("--max-connections", type=int, default=d.max_connections,
                    help="open connections per worker before requests get a JSON 503 (/health still answered)")
    ap.add_argument("--body-timeout-s", type=float, default=d.body_timeout_s,
                    help="a request body must arrive within this many seconds ...")
    ap.add_argument("--body-min-rate", type=float, default=d.body_min_rate,
                    help="... plus 1 s per this many bytes (408 otherwise)")
    ap.add_argument("--drain-timeout-s", type=float, default=d.drain_timeout_s,
                    help="on SIGTERM, requests in flight get this long to finish")
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
            max_side=args.max_side, max_aspect=args.max_aspect, max_jpeg_scans=args.max_jpeg_scans,
            max_request_faces=args.max_request_faces, max_connections=args.max_connections,
            body_timeout_s=args.body_timeout_s, body_min_rate=args.body_min_rate,
            drain_timeout_s=args.drain_timeout_s, light_max_pixels=args.light_max_pixels,
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
                                 max_head_bytes=settings.max_head_bytes, max_connections=settings.max_connections)
    config = uvicorn.Config(
        target, factory=factory, host=args.host, port=args.port, workers=args.workers,
        log_level=args.log_level, access_log=False, http=protocol, timeout_keep_alive=settings.keep_alive_s,
        # uvicorn's own limit_concurrency answers in plain text and refuses /health too: the app's
        # ConcurrencyLimit and the protocol's max_connections answer in JSON instead.
        limit_concurrency=None,
        # A backstop: the app's Drain answers what is still running after drain_timeout_s.
        timeout_graceful_shutdown=settings.drain_timeout_s + 2,
    )
    return _run(config, args.workers, settings.model_path)


def _run(config, workers: int, model: str) -> int:  # noqa: ANN001 - a uvicorn.Config
    """``uvicorn.run``, plus an exit status that says when the workers could not start."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    if workers == 1:
        server = uvicorn.Server(config)
        try:
            server.run()
        except KeyboardInterrupt:
            pass
        return 0 if server.started else STARTUP_FAILURE
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    try:
        supervisor.run()  # uvicorn stops all workers when one exits with STARTUP_FAILURE (app_from_env)
    except KeyboardInterrupt:
        pass
    failed = [p.pid for p in supervisor.processes if p.exitcode == STARTUP_FAILURE]
    if failed:
        return _fail(f"a replacement worker (pid {failed[0]}) could not load {model} (its line is above); "
                     "stopped the service instead of restarting workers in a loop",
                     STARTUP_FAILURE)
    return 0


def _fail(message: str, status: int = 2) -> int:
    print(f"serve.py: error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
