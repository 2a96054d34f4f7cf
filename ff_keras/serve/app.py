"""FastAPI service: validated image uploads -> micro-batched ONNX Runtime -> labels per face.

``create_app(model_path)`` builds a self-contained app (one Predictor, one MicroBatcher, one
small decode pool); ``app_from_env`` is the factory uvicorn calls in each worker process
(``--workers N``), so every worker owns its session and batcher. TensorFlow is imported only
for ``.keras`` / SavedModel models and for the MTCNN detector.

Uploads are decoded in a fixed pool of ``decode_threads`` threads: that bounds how many
images are decoded (and faces detected) at once, each pool thread keeps its own detector, and
one slow photo occupies one thread while the others keep answering. Small images sent without
``detect`` (at most ``light_max_pixels``, from the header: face crops) have one more thread of
their own, so they never queue behind large photos and crowds. Large JPEGs are decoded
at reduced scale and large PNG/WebP reduced right after decoding (``image_decode``), faces
are detected (and the framing checked) on a copy of at most ``detect_max_pixels``, each
request may decode at most ``max_request_pixels`` and send at most ``max_request_faces``
faces to the model, in chunks of ``max_batch`` interleaved with other requests.

Face detection hook: pass ``face_pipeline(rgb_uint8[H, W, 3], size) -> (faces, chips)`` where
``faces[i].box`` is [x, y, w, h], ``faces[i].confidence`` a float and ``chips`` uint8
[F, size, size, 3] aligned crops (``ff_keras.faces.detect.detect_and_align`` has this shape).
``/predict?detect=true`` uses it; with detector ``none``, the whole image is one aligned face.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image

from ff_keras.faces.analyze import NO_DETECTOR, resolve_detector
from ff_keras.faces.detect import DEFAULT_DETECTOR, DETECTORS
from ff_keras.faces.framing import OK_SCALE, Framing, check_framing
from ff_keras.data.image_decode import (
    FORMATS, MAX_ASPECT, MAX_JPEG_SCANS, MAX_PIXELS, MAX_SIDE, MIN_SIDE, DecodedImage, ImageError, PixelBudget,
    ShapeLimits, decode_image, image_size,
)
from ff_keras.inference.predictor import Predictor, load_predictor, prepare_face
from ff_keras.serve import schemas
from ff_keras.serve.batching import MicroBatcher
from ff_keras.serve.limits import (
    BodyLimit, ConcurrencyLimit, Drain, DrainState, drain_on_sigterm, return_large_buffers_to_os,
)

STATIC = Path(__file__).parent / "static"
CONTENT_TYPES = tuple(FORMATS.values())
ENV_PREFIX = "FF_SERVE_"
DetectFlag = Annotated[
    bool, Query(description="detect and align every face first (detector \"none\": whole image = one face)")
]
FramingFlag = Annotated[
    bool, Query(description="without detect: find the face in the image and say whether it is framed like the "
                "crops the model was measured on (the face's 'framing'; one detector pass, ~0.1 s on 2 cores)")
]
FacePipeline = Callable[[np.ndarray, int], tuple[list[Any], np.ndarray]]
FramingCheck = Callable[[np.ndarray], Framing]


# Limits, pool sizes, timeouts and rates that make no sense at zero (refusing every request or hanging).
_POSITIVE_SETTINGS = ("max_upload_bytes", "max_request_bytes", "max_pixels", "max_request_pixels",
                      "detect_max_pixels", "max_files", "decode_threads", "max_batch", "max_head_bytes",
                      "limit_concurrency", "max_side", "max_jpeg_scans", "max_request_faces", "max_connections",
                      "body_timeout_s", "body_min_rate", "drain_timeout_s", "head_timeout_s", "keep_alive_s",
                      "light_max_pixels")


@dataclass
class ServeSettings:
    """Service knobs; round-trips through ``FF_SERVE_*`` env vars for uvicorn worker processes."""

    model_path: str = ""
    max_upload_bytes: int = 10 * 1024 * 1024  # one file
    max_request_bytes: int = 32 * 1024 * 1024  # a whole request body, counted as it streams in
    max_pixels: int = MAX_PIXELS  # one image, from its header: a 40 MP photo is enough for phones
    max_side: int = MAX_SIDE  # longest side, from the header
    max_aspect: float = MAX_ASPECT  # long side / short side (a 12000 x 32 strip is refused)
    max_jpeg_scans: int = MAX_JPEG_SCANS  # progressive JPEG scans (each is a pass over the image)
    max_request_pixels: int = 100_000_000  # decoded pixels per request (after reduced-scale decoding)
    detect_max_pixels: int = 2_000_000  # faces are detected on a copy this small (boxes mapped back)
    max_files: int = 16
    max_request_faces: int = 256  # faces one request may send to the model (413 for the files past it)
    decode_threads: int = 2  # images decoded / faces detected at once per worker
    light_max_pixels: int = 1_000_000  # ... plus one thread for images this small sent without detect
    batching: bool = True
    max_batch: int = 32
    max_wait_ms: float = 5.0
    threads: int = 0  # ORT intra-op threads; 0 = ORT's default
    ort_spinning: bool = False  # busy-waiting ORT threads would starve the event loop of CPU
    detector: str = DEFAULT_DETECTOR  # a ff_keras.faces detector name (CLI spellings), or "none"
    framing_check: bool = True  # check_framing=true requests run the detector on pre-cut crops
    # Connection limits, applied by scripts/serve.py through uvicorn.
    keep_alive_s: int = 5
    head_timeout_s: float = 10.0
    max_head_bytes: int = 32 * 1024
    limit_concurrency: int = 128  # requests in flight per worker (JSON 503 past it; /health exempt)
    max_connections: int = 1024  # open connections per worker (JSON 503 past it; /health exempt)
    body_timeout_s: float = 10.0  # a request body must be in within this ...
    body_min_rate: float = 32768.0  # ... plus 1 s per this many bytes received (408 otherwise)
    drain_timeout_s: float = 10.0  # on SIGTERM, requests in flight get this long to finish

    def __post_init__(self) -> None:
        for name in _POSITIVE_SETTINGS:
            value = getattr(self, name)
            real = isinstance(value, float)  # times and rates: any positive value; counts: at least one
            if not (value > 0 if real else value >= 1):  # NaN fails too
                raise ValueError(f"{name} must be {'> 0' if real else '>= 1'}, got {value}")
        if not self.max_aspect >= 1:
            raise ValueError(f"max_aspect must be >= 1 (long side / short side), got {self.max_aspect}")

    def shape_limits(self) -> ShapeLimits:
        return ShapeLimits(self.max_side, self.max_aspect, self.max_jpeg_scans)

    def to_env(self) -> dict[str, str]:
        return {ENV_PREFIX + k.upper(): str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServeSettings:
        env = os.environ if env is None else env
        kwargs = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            kind = type(f.default)
            try:
                kwargs[f.name] = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw)
            except ValueError as err:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from err
        if not kwargs.get("model_path"):
            raise ValueError(f"set {ENV_PREFIX}MODEL_PATH to the model to serve")
        return cls(**kwargs)


def detector_pipeline(name: str, max_pixels: int | None = None) -> FacePipeline | None:
    """The ``face_pipeline`` for a detector name from ``ff_keras.faces`` (None for "none")."""
    name = resolve_detector(name)
    if name == NO_DETECTOR:
        return None
    from ff_keras.faces.detect import detect_and_align

    return functools.partial(_detect_and_align, detect_and_align, name, max_pixels)


def framing_enabled(settings: ServeSettings) -> bool:
    """The framing check needs one of ff_keras.faces' detectors (not "none", not a caller's own pipeline)."""
    return settings.framing_check and settings.detector in DETECTORS


def _detect_and_align(fn, name: str, max_pixels: int | None, rgb: np.ndarray, size: int):
    return fn(rgb, detector=name, size=size, max_pixels=max_pixels)


def load_checked_predictor(settings: ServeSettings) -> Predictor:
    """Loads the model and answers one request's worth of input with it, so a model that
    cannot serve fails start-up with one clear line instead of failing every ``/predict``.

    Raises:
        FileNotFoundError / ValueError: one line naming what is missing or disagrees.
    """
    predictor = load_predictor(
        settings.model_path, threads=settings.threads or None, batch_size=settings.max_batch,
        spinning=settings.ort_spinning,
    )
    size = predictor.info.image_size
    try:
        out = predictor.predict(np.zeros((1, size, size, 3), np.float32))
    except Exception as err:  # noqa: BLE001 - whatever the runtime raises, start-up must say it in one line
        raise ValueError(f"{settings.model_path} failed on a {size}x{size} test input: {err}") from err
    for head in predictor.heads:
        n = len(predictor.info.classes[head])
        if out[head].shape != (1, n):
            raise ValueError(
                f"{settings.model_path}: head {head} gives shape {out[head].shape}, expected (1, {n})"
            )
    return predictor


def _warm_pool(pool: ThreadPoolExecutor, n: int, detector: str) -> None:
    """Builds one detector per pool thread now (start-up), not on the first requests."""
    from ff_keras.faces.detect import load_detector

    barrier = threading.Barrier(n)

    def warm() -> None:
        load_detector(detector)
        barrier.wait(timeout=600)  # n tasks running at once = n distinct threads

    for f in [pool.submit(warm) for _ in range(n)]:
        f.result()


def _http_error(err: ImageError) -> HTTPException:
    return HTTPException(err.status, str(err))


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """One 422 line naming every bad field, with a hint on how images are sent."""
    problems = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query"))
        problems.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
    hint = " (send images as multipart/form-data: field 'file' for /predict, 'files' for /predict/batch)"
    return JSONResponse({"detail": "invalid request: " + "; ".join(problems) + hint}, 422)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A JSON 500 that names the error type but keeps the details in the server log."""
    return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the server log has details"}, 500)


def _error_handlers(app: FastAPI) -> None:
    """Every error leaves the service as ``{"detail": ...}`` JSON, as the error schema says."""
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _internal_error)


@dataclass
class DecodePools:
    """``heavy`` decodes everything but small images sent without detection, which ``light``
    takes (it also reads every upload's header to choose): crops never wait behind crowds."""

    heavy: ThreadPoolExecutor
    light: ThreadPoolExecutor

    def shutdown(self) -> None:
        for pool in (self.heavy, self.light):
            pool.shutdown(wait=False, cancel_futures=True)


# Heavy decode threads' nice value: under CPU contention the kernel serves the event loop, the
# light decode thread and the model thread first, so large photos and crowds slow down before crops do.
HEAVY_NICE = 10


def _lower_priority() -> None:
    """Pool initializer: this thread (Linux priorities are per thread) runs at ``HEAVY_NICE``."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HEAVY_NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed: same priority as the rest
        pass


def _lifespan(batcher: MicroBatcher, pools: DecodePools, drain: DrainState):
    """The micro-batcher runs while the app does; the decode pool goes with it. SIGTERM starts
    the drain (uvicorn installs its signal handlers before the lifespan starts)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        drain_on_sigterm(drain)
        yield
        await batcher.stop()
        pools.shutdown()

    return lifespan


def _faces_of(
    image: DecodedImage, detect: bool, face_pipeline: FacePipeline | None, size: int,
    framing_check: FramingCheck | None = None,
) -> tuple[list[dict], np.ndarray]:
    """Boxes in the original image's pixels and model-ready chips; without detection the
    whole image is one face, with its framing checked by ``framing_check`` (None: not)."""
    w, h = image.size
    if not detect or face_pipeline is None:
        face = {"box": [0, 0, w, h], "confidence": None}
        if framing_check is not None:
            face["framing"] = framing_check(image.rgb).to_dict()
        return [face], prepare_face(image.rgb, size)[None]
    found, chips = face_pipeline(image.rgb, size)
    boxes = [
        {"box": [round(v / image.scale) for v in f.box], "confidence": float(f.confidence)} for f in found
    ]
    if not len(chips):
        return boxes, np.zeros((0, size, size, 3), np.float32)
    return boxes, np.stack([prepare_face(c, size) for c in chips])


def _decode_and_find_faces(
    settings: ServeSettings, face_pipeline: FacePipeline | None, size: int,
    data: bytes, name: str, detect: bool, budget: PixelBudget, framing_check: FramingCheck | None,
):
    """Runs in a decode-pool thread: decodes only as many pixels as the next step needs
    (detection works on a bounded copy; the model needs ``size`` px), then finds faces."""
    # A framing check is a detection too: it needs the pixels detection needs.
    detecting = (detect and face_pipeline is not None) or framing_check is not None
    image = decode_image(
        data, name, settings.max_pixels, MIN_SIDE, budget=budget,
        min_decoded_side=0 if detecting else size,
        min_decoded_pixels=settings.detect_max_pixels if detecting else 0,
        limits=settings.shape_limits(),
    )
    return (image, *_faces_of(image, detect, face_pipeline, size, framing_check))


async def _read_upload(upload: UploadFile, max_upload_bytes: int) -> bytes:
    """Reads at most one byte past the limit, so an oversized file is refused without
    holding all of it."""
    name = upload.filename or "upload"
    data = await upload.read(max_upload_bytes + 1)
    if len(data) > max_upload_bytes:
        raise ImageError(f"{name}: file is larger than the {max_upload_bytes}-byte upload limit", 413)
    return data


def _responses(
    uploads: list[UploadFile], per_image: list, results: list[dict], detector: str
) -> list[schemas.PredictResponse | ImageError]:
    """One answer per upload, in order: its error, or its faces' slice of the shared batch."""
    out, start = [], 0
    for upload, item in zip(uploads, per_image):
        if isinstance(item, ImageError):
            out.append(item)
            continue
        image, boxes, chips = item
        faces = [schemas.FacePrediction(**results[start + i], **box) for i, box in enumerate(boxes)]
        start += len(chips)
        out.append(schemas.PredictResponse(
            filename=upload.filename, width=image.size[0], height=image.size[1], detector=detector,
            faces=faces, warnings=image.warnings,
        ))
    return out


def _over_face_limit(upload: UploadFile, found: int | None, max_faces: int) -> ImageError:
    """The 413 for a file that takes its request past ``max_faces`` faces (``found`` None: a file
    after that one, refused without being decoded), so one request cannot hog the model."""
    name = upload.filename or "upload"
    what = f"{found} faces found, taking" if found is not None else "not processed: an earlier file took"
    return ImageError(f"{name}: {what} this request over its limit of {max_faces} faces; send it in a separate "
                      "request", 413)


def _is_small(data: bytes, max_pixels: int) -> bool:
    """Whether an upload's header says it has at most ``max_pixels`` (False when unreadable)."""
    size = image_size(data)
    return size is not None and size[0] * size[1] <= max_pixels


def _prediction_routes(
    app: FastAPI, settings: ServeSettings, predictor: Predictor, batcher: MicroBatcher,
    face_pipeline: FacePipeline | None, pools: DecodePools, errors: dict,
) -> None:
    """``/predict`` and ``/predict/batch``: both go through one path, so a single image and a
    batch get the same limits, errors and results."""
    size = predictor.info.image_size
    decode = functools.partial(_decode_and_find_faces, settings, face_pipeline, size)
    # One detector pass per pre-cut crop, on a copy bounded as detection's is.
    framing_check = (
        functools.partial(check_framing, detector=settings.detector, max_pixels=settings.detect_max_pixels)
        if framing_enabled(settings) else None
    )

    async def one_image(upload: UploadFile, detect: bool, budget: PixelBudget, check_framing: bool):
        """(image, boxes, chips) or the ImageError for this upload."""
        name = upload.filename or "upload"
        try:
            data = await _read_upload(upload, settings.max_upload_bytes)
            loop = asyncio.get_running_loop()
            framing = framing_check if check_framing else None
            light = not (detect and face_pipeline is not None) and await loop.run_in_executor(
                pools.light, _is_small, data, settings.light_max_pixels)
            pool = pools.light if light else pools.heavy
            return await loop.run_in_executor(pool, decode, data, name, detect, budget, framing)
        except ImageError as err:
            return err

    async def predict_images(
        uploads: list[UploadFile], detect: bool, check_framing: bool
    ) -> list[schemas.PredictResponse | ImageError]:
        budget = PixelBudget(settings.max_request_pixels)
        per_image, faces_left = [], settings.max_request_faces
        for upload in uploads:
            if faces_left < 0:  # the face limit was broken by an earlier file: the rest are not decoded
                per_image.append(_over_face_limit(upload, None, settings.max_request_faces))
                continue
            item = await one_image(upload, detect, budget, check_framing)
            if not isinstance(item, ImageError):
                faces_left -= len(item[2])
                if faces_left < 0:
                    item = _over_face_limit(upload, len(item[2]), settings.max_request_faces)
            per_image.append(item)
        ok = [p for p in per_image if not isinstance(p, ImageError)]
        batch = np.concatenate([chips for _, _, chips in ok]) if ok else np.zeros((0, size, size, 3), np.float32)
        results = predictor.results_from_probs(await batcher.predict(batch)) if len(batch) else []
        detector = settings.detector if detect and face_pipeline is not None else NO_DETECTOR
        return _responses(uploads, per_image, results, detector)

    @app.post("/predict", response_model=schemas.PredictResponse, responses=errors)
    async def predict(
        file: Annotated[UploadFile, File(description="a face photo")], detect: DetectFlag = False,
        check_framing: FramingFlag = True,
    ):
        """Labels and probabilities per head for each face in one image."""
        (result,) = await predict_images([file], detect, check_framing)
        if isinstance(result, ImageError):
            raise _http_error(result)
        return result

    @app.post("/predict/batch", response_model=schemas.BatchPredictResponse, responses=errors)
    async def predict_batch(
        files: Annotated[list[UploadFile], File(description="face photos")], detect: DetectFlag = False,
        check_framing: FramingFlag = True,
    ):
        """Several images in one request; their faces share one model call. A file that
        cannot be used gets an error entry in its place; the others are still answered."""
        if len(files) > settings.max_files:
            raise HTTPException(413, f"{len(files)} files sent; at most {settings.max_files} per request")
        results = [
            schemas.FileError(filename=f.filename, status=r.status, detail=str(r))
            if isinstance(r, ImageError) else r
            for f, r in zip(files, await predict_images(files, detect, check_framing))
        ]
        return schemas.BatchPredictResponse(
            results=results, errors=sum(isinstance(r, schemas.FileError) for r in results)
        )


def _batching_info(batcher: MicroBatcher, settings: ServeSettings) -> schemas.BatchingInfo:
    """Micro-batching knobs and live counters, shown by both ``/health`` and ``/metadata``."""
    return schemas.BatchingInfo(
        enabled=batcher.enabled, max_batch=batcher.max_batch, max_wait_ms=settings.max_wait_ms,
        **batcher.stats.as_dict(),
    )


def _limits(settings: ServeSettings) -> schemas.Limits:
    """The input limits a client must respect, so it can check before uploading."""
    return schemas.Limits(
        max_upload_bytes=settings.max_upload_bytes, max_request_bytes=settings.max_request_bytes,
        max_pixels=settings.max_pixels, max_request_pixels=settings.max_request_pixels,
        detect_max_pixels=settings.detect_max_pixels, min_side=MIN_SIDE,
        max_files=settings.max_files, content_types=list(CONTENT_TYPES),
        max_side=settings.max_side, max_aspect=settings.max_aspect, max_jpeg_scans=settings.max_jpeg_scans,
        max_request_faces=settings.max_request_faces, body_timeout_s=settings.body_timeout_s,
        body_min_rate=settings.body_min_rate, max_head_bytes=settings.max_head_bytes,
        head_timeout_s=settings.head_timeout_s, keep_alive_s=settings.keep_alive_s,
        limit_concurrency=settings.limit_concurrency, max_connections=settings.max_connections,
        drain_timeout_s=settings.drain_timeout_s, light_max_pixels=settings.light_max_pixels,
    )


def _info_routes(
    app: FastAPI, settings: ServeSettings, predictor: Predictor, batcher: MicroBatcher,
    face_pipeline: FacePipeline | None,
) -> None:
    """``/health``, ``/metadata`` and the demo page: what this worker serves and whether it can."""

    def detector_name() -> str:
        return settings.detector if face_pipeline is not None else NO_DETECTOR

    # GET and HEAD: load balancers probe with HEAD (uvicorn sends the headers without the body).
    @app.api_route("/health", methods=["GET", "HEAD"], response_model=schemas.HealthResponse,
                   responses={503: {"model": schemas.ErrorResponse}})
    async def health():
        """Readiness probe: 200 only while this worker can answer ``/predict`` (model loaded and
        checked at start-up, micro-batcher running); 503 otherwise."""
        if not batcher.running:
            return JSONResponse({"detail": "the micro-batcher has stopped; this worker cannot predict"}, 503)
        return schemas.HealthResponse(
            status="ok", model=Path(settings.model_path).name, backend=predictor.backend, pid=os.getpid(),
            heads=predictor.heads, regression_heads=predictor.regression_heads, detector=detector_name(),
            batching=_batching_info(batcher, settings),
        )

    @app.api_route("/metadata", methods=["GET", "HEAD"], response_model=schemas.MetadataResponse)
    async def metadata():
        """Class names, input contract, limits and micro-batching statistics of this worker."""
        info = predictor.info
        return schemas.MetadataResponse(
            model=Path(settings.model_path).name, backend=predictor.backend, version=info.version,
            backbone=info.backbone, image_size=info.image_size, heads=list(info.heads),
            regression_heads=predictor.regression_heads,
            classes={h: list(info.classes[h]) for h in info.heads},
            temperature={h: float(info.temperature.get(h, 1.0)) for h in info.heads},
            input_contract=info.input_contract,
            detector=detector_name(),
            framing_check=framing_enabled(settings),
            framing_ok_scale=list(OK_SCALE),
            limits=_limits(settings),
            batching=_batching_info(batcher, settings),
        )

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def demo_page():
        return FileResponse(STATIC / "index.html", media_type="text/html")


def _resolve_face_pipeline(settings: ServeSettings, face_pipeline: FacePipeline | None) -> FacePipeline | None:
    """The configured detector's pipeline unless the caller brought one; ``settings.detector``
    ends up naming whichever is used."""
    if face_pipeline is None:
        settings.detector = resolve_detector(settings.detector)
        return detector_pipeline(settings.detector, settings.detect_max_pixels)
    settings.detector = getattr(face_pipeline, "__name__", "custom")
    return face_pipeline


def create_app(
    model_path: str | Path,
    settings: ServeSettings | None = None,
    face_pipeline: FacePipeline | None = None,
    predictor: Predictor | None = None,
) -> FastAPI:
    """Builds the service for ``model_path`` (``.onnx`` recommended; ``.keras``/SavedModel work)."""
    settings = settings or ServeSettings()
    settings.model_path = str(model_path)
    return_large_buffers_to_os()
    face_pipeline = _resolve_face_pipeline(settings, face_pipeline)
    predictor = predictor or load_checked_predictor(settings)
    batcher = MicroBatcher(predictor.predict, settings.max_batch, settings.max_wait_ms, settings.batching)
    pools = DecodePools(
        ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="ff-decode", initializer=_lower_priority),
        ThreadPoolExecutor(1, thread_name_prefix="ff-decode-light"),
    )
    if face_pipeline is not None and settings.detector in DETECTORS:
        # Heavy first: thread pools the detector's runtime starts inherit the lower priority.
        _warm_pool(pools.heavy, settings.decode_threads, settings.detector)
        _warm_pool(pools.light, 1, settings.detector)
    # Pillow's own bomb guard (it raises above twice this) backs up the header check in ``decode_image``.
    Image.MAX_IMAGE_PIXELS = settings.max_pixels

    drain = DrainState(settings.drain_timeout_s)
    app = FastAPI(
        title="ff_keras face attributes",
        description="Age (9 bins), gender and race (7 classes) from face photos. " + predictor.info.input_contract,
        version=predictor.info.version,
        lifespan=_lifespan(batcher, pools, drain),
        # "/health/" is a 404, not a redirect built from the client's Host header.
        redirect_slashes=False,
    )
    app.state.settings, app.state.predictor, app.state.batcher, app.state.drain = settings, predictor, batcher, drain
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes, timeout_s=settings.body_timeout_s,
                       min_rate=settings.body_min_rate)
    app.add_middleware(ConcurrencyLimit, max_requests=settings.limit_concurrency)
    app.add_middleware(Drain, state=drain)  # outermost: added last
    errors = {c: {"model": schemas.ErrorResponse} for c in (400, 413, 415, 422)}
    _error_handlers(app)
    _prediction_routes(app, settings, predictor, batcher, face_pipeline, pools, errors)
    _info_routes(app, settings, predictor, batcher, face_pipeline)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory (``ff_keras.serve.app:app_from_env``); settings come from ``FF_SERVE_*``.

    A worker that cannot load its model (deleted or replaced since start-up) logs one line and
    exits with uvicorn's start-up failure status, on which uvicorn's supervisor stops the whole
    service instead of respawning the worker in a loop.
    """
    try:
        settings = ServeSettings.from_env()
        return create_app(settings.model_path, settings)
    except (FileNotFoundError, ValueError, OSError, ImportError) as err:
        from uvicorn.config import STARTUP_FAILURE

        line = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"ff_keras worker {os.getpid()}: cannot load the model: {line}", file=sys.stderr, flush=True)
        sys.exit(STARTUP_FAILURE)
