"""FastAPI service: validated image uploads -> micro-batched ONNX Runtime -> labels per face.

``create_app(model_path)`` builds a self-contained app (one Predictor, one MicroBatcher);
``app_from_env`` is the factory uvicorn calls in each worker process (``--workers N``), so
every worker owns its session and batcher. No TensorFlow is imported for an ``.onnx`` model.

Face detection hook: pass ``face_pipeline(rgb_uint8[H, W, 3], size) -> (faces, chips)`` where
``faces[i].box`` is [x, y, w, h], ``faces[i].confidence`` a float and ``chips`` uint8
[F, size, size, 3] aligned crops (``ff_keras.faces.detect.detect_and_align`` has this shape).
``/predict?detect=true`` uses it; without one, the whole image is one aligned face.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from ff_keras.inference.predictor import Predictor, load_predictor, prepare_face
from ff_keras.serve import schemas
from ff_keras.serve.batching import MicroBatcher

STATIC = Path(__file__).parent / "static"
CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/gif", "image/tiff")
ENV_PREFIX = "FF_SERVE_"
DetectFlag = Annotated[
    bool, Query(description="detect and align faces first (whole image = one face if no detector)")
]
FacePipeline = Callable[[np.ndarray, int], tuple[list[Any], np.ndarray]]


@dataclass
class ServeSettings:
    """Service knobs; round-trips through ``FF_SERVE_*`` env vars for uvicorn worker processes."""

    model_path: str = ""
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000  # a 40 MP photo decodes to 120 MB of RGB: enough for phones
    max_files: int = 16
    batching: bool = True
    max_batch: int = 32
    max_wait_ms: float = 5.0
    threads: int = 0  # ORT intra-op threads; 0 = ORT's default
    ort_spinning: bool = False  # busy-waiting ORT threads would starve the event loop of CPU
    detector: str = "none"  # a ff_keras.faces detector name, or "none"

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
            kwargs[f.name] = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw)
        if not kwargs.get("model_path"):
            raise ValueError(f"set {ENV_PREFIX}MODEL_PATH to the model to serve")
        return cls(**kwargs)


def detector_pipeline(name: str) -> FacePipeline | None:
    """The ``face_pipeline`` for a detector name from ``ff_keras.faces`` (None for "none")."""
    if name == "none":
        return None
    from ff_keras.faces.detect import detect_and_align

    return lambda rgb, size: detect_and_align(rgb, detector=name, size=size)


def decode_upload(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Bytes -> uint8 RGB [H, W, 3]; every failure is an HTTPException naming the file."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size  # header only: checked before any pixel is decoded
            if w * h > max_pixels:
                raise HTTPException(
                    413, f"{name}: image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
                    "(decompression-bomb guard)",
                )
            im = ImageOps.exif_transpose(im)
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as err:
        raise HTTPException(413, f"{name}: {err}") from err
    except UnidentifiedImageError as err:
        raise HTTPException(422, f"{name}: not a decodable image (corrupt data or unsupported format)") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise HTTPException(422, f"{name}: image data is truncated or corrupt ({err})") from err
    if rgb.ndim != 3 or min(rgb.shape[:2]) < 1:
        raise HTTPException(422, f"{name}: decoded to an empty image {rgb.shape}")
    return rgb


async def read_upload(upload: UploadFile, settings: ServeSettings) -> bytes:
    """Checks type, size and emptiness of one upload; returns its bytes."""
    name = upload.filename or "upload"
    ctype = (upload.content_type or "").split(";")[0].strip().lower()
    if ctype not in CONTENT_TYPES:
        raise HTTPException(
            415, f"{name}: content type {ctype or 'missing'!r} is not supported; send one of {list(CONTENT_TYPES)}"
        )
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(413, f"{name}: file is larger than the {settings.max_upload_bytes}-byte upload limit")
    if not data:
        raise HTTPException(400, f"{name}: empty file")
    return data


def create_app(
    model_path: str | Path,
    settings: ServeSettings | None = None,
    face_pipeline: FacePipeline | None = None,
    predictor: Predictor | None = None,
) -> FastAPI:
    """Builds the service for ``model_path`` (``.onnx`` recommended; ``.keras``/SavedModel work)."""
    settings = settings or ServeSettings()
    settings.model_path = str(model_path)
    if face_pipeline is None:
        face_pipeline = detector_pipeline(settings.detector)
    elif settings.detector == "none":
        settings.detector = getattr(face_pipeline, "__name__", "custom")
    predictor = predictor or load_predictor(
        model_path, threads=settings.threads or None, batch_size=settings.max_batch, spinning=settings.ort_spinning
    )
    batcher = MicroBatcher(predictor.predict, settings.max_batch, settings.max_wait_ms, settings.batching)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="ff_keras face attributes",
        description="Age (9 bins), gender and race (7 classes) from face photos. " + predictor.info.input_contract,
        version=predictor.info.version,
        lifespan=lifespan,
    )
    app.state.settings, app.state.predictor, app.state.batcher = settings, predictor, batcher
    errors = {c: {"model": schemas.ErrorResponse} for c in (400, 413, 415, 422)}
    body_limit = settings.max_upload_bytes * settings.max_files + 64 * 1024

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        # Refuse an oversized body before multipart parsing spools it to disk.
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > body_limit:
            return JSONResponse({"detail": f"request body of {length} bytes exceeds the {body_limit}-byte limit"}, 413)
        return await call_next(request)

    _prediction_routes(app, settings, predictor, batcher, face_pipeline, errors)
    _info_routes(app, settings, predictor, batcher, face_pipeline)
    return app


def _prediction_routes(app: FastAPI, settings: ServeSettings, predictor: Predictor, batcher: MicroBatcher,
                       face_pipeline: FacePipeline | None, errors: dict) -> None:
    """``POST /predict`` and ``/predict/batch``: uploads -> faces -> one batched model call."""
    size = predictor.info.image_size

    def faces_of(rgb: np.ndarray, detect: bool) -> tuple[list[dict], np.ndarray]:
        h, w = rgb.shape[:2]
        if not detect or face_pipeline is None:
            return [{"box": [0, 0, w, h], "confidence": None}], prepare_face(rgb, size)[None]
        found, chips = face_pipeline(rgb, size)
        boxes = [{"box": [int(v) for v in f.box], "confidence": float(f.confidence)} for f in found]
        chips = (np.stack([prepare_face(c, size) for c in chips]) if len(chips)
                 else np.zeros((0, size, size, 3), np.float32))
        return boxes, chips

    def decode_and_find_faces(data: bytes, name: str, detect: bool) -> tuple[np.ndarray, list[dict], np.ndarray]:
        rgb = decode_upload(data, name, settings.max_pixels)
        return (rgb, *faces_of(rgb, detect))

    async def predict_images(uploads: list[UploadFile], detect: bool) -> list[schemas.PredictResponse]:
        blobs = [await read_upload(u, settings) for u in uploads]
        # One thread hop per image (decode, detect, crop): hops cost CPU the event loop needs.
        per_image = [
            await run_in_threadpool(decode_and_find_faces, data, u.filename or "upload", detect)
            for u, data in zip(uploads, blobs)
        ]
        batch = np.concatenate([chips for _, _, chips in per_image])
        labels = predictor.labels_from_probs(await batcher.predict(batch)) if len(batch) else []
        detector = settings.detector if detect and face_pipeline is not None else "none"
        results, start = [], 0
        for upload, (rgb, boxes, chips) in zip(uploads, per_image):
            faces = [
                schemas.FacePrediction(heads=labels[start + i], **box) for i, box in enumerate(boxes)
            ]
            start += len(chips)
            results.append(schemas.PredictResponse(
                filename=upload.filename, width=rgb.shape[1], height=rgb.shape[0], detector=detector, faces=faces,
            ))
        return results

    @app.post("/predict", response_model=schemas.PredictResponse, responses=errors)
    async def predict(file: Annotated[UploadFile, File(description="a face photo")], detect: DetectFlag = False):
        """Labels and probabilities per head for each face in one image."""
        return (await predict_images([file], detect))[0]

    @app.post("/predict/batch", response_model=schemas.BatchPredictResponse, responses=errors)
    async def predict_batch(
        files: Annotated[list[UploadFile], File(description="face photos")], detect: DetectFlag = False
    ):
        """Several images in one request; their faces share one model call."""
        if len(files) > settings.max_files:
            raise HTTPException(413, f"{len(files)} files sent; at most {settings.max_files} per request")
        return schemas.BatchPredictResponse(results=await predict_images(files, detect))



def _info_routes(app: FastAPI, settings: ServeSettings, predictor: Predictor, batcher: MicroBatcher,
                 face_pipeline: FacePipeline | None) -> None:
    """``GET /health``, ``/metadata`` and the demo page."""

    def batching_info() -> schemas.BatchingInfo:
        return schemas.BatchingInfo(
            enabled=batcher.enabled, max_batch=batcher.max_batch, max_wait_ms=settings.max_wait_ms,
            **batcher.stats.as_dict(),
        )

    @app.get("/health", response_model=schemas.HealthResponse)
    async def health():
        """Liveness/readiness probe for load balancers: the model is loaded and the batcher runs."""
        return schemas.HealthResponse(
            status="ok", model=Path(settings.model_path).name, backend=predictor.backend, pid=os.getpid(),
            batching=batching_info(),
        )

    @app.get("/metadata", response_model=schemas.MetadataResponse)
    async def metadata():
        """Class names, input contract, limits and micro-batching statistics of this worker."""
        info = predictor.info
        return schemas.MetadataResponse(
            model=Path(settings.model_path).name, backend=predictor.backend, version=info.version,
            backbone=info.backbone, image_size=info.image_size, heads=list(info.heads),
            classes={h: list(info.classes[h]) for h in info.heads},
            temperature={h: float(info.temperature.get(h, 1.0)) for h in info.heads},
            input_contract=info.input_contract,
            detector=settings.detector if face_pipeline is not None else "none",
            limits=schemas.Limits(
                max_upload_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels,
                max_files=settings.max_files, content_types=list(CONTENT_TYPES),
            ),
            batching=batching_info(),
        )

    @app.get("/", include_in_schema=False)
    async def demo_page():
        return FileResponse(STATIC / "index.html", media_type="text/html")


def app_from_env() -> FastAPI:
    """uvicorn factory (``ff_keras.serve.app:app_from_env``); settings come from ``FF_SERVE_*``."""
    settings = ServeSettings.from_env()
    return create_app(settings.model_path, settings)
