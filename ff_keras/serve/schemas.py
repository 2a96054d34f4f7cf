"""Response models of the service; FastAPI turns them into the OpenAPI schema at ``/docs``.

Heads are dict keys (``age``, ``gender``, ``race``), the same key used by the model outputs,
the ONNX output names and ``model_info.json``; ``age_years`` (a regression output) is a number
beside them. ``scripts/predict.py --json`` writes the same per-face fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from ff_keras.faces.framing import STATUSES


class RunnerUp(BaseModel):
    label: str = Field(description="second most probable class name")
    probability: float


class HeadPrediction(BaseModel):
    label: str = Field(description="top class name")
    probabilities: dict[str, float] = Field(description="probability per class name, summing to 1")
    ambiguous: bool | None = Field(
        None, description="true when the top probability is under the head's threshold (model_info.json "
        "ambiguity, chosen on val for a stated accuracy of answered faces): read it as 'label or runner_up'; "
        "null when the model has no threshold for this head")
    runner_up: RunnerUp | None = Field(None, description="the second class; null when the model has no threshold")


class Framing(BaseModel):
    status: Literal[STATUSES] = Field(
        description="ok: framed like the crops the model was measured on; tighter / looser: the face fills "
        "more / less of the image (accuracy drops; send the photo with detect=true); several_faces; no_face"
    )
    scale: float | None = Field(description="image side / side of FairFace's chip around the face (1.0 = "
                                "FairFace's framing, 0.6 = its central 60 %); null when no face was found")
    faces_found: int
    message: str


class FacePrediction(BaseModel):
    box: list[int] = Field(description="[x, y, width, height] in the uploaded image's pixels")
    heads: dict[str, HeadPrediction]
    age_years: float | None = Field(
        None, description="predicted age in years; null when the model has no age_years output"
    )
    confidence: float | None = Field(None, description="detector score; null when no detector ran")
    framing: Framing | None = Field(
        None, description="without detect: how the image's framing compares with the crops the model was "
        "measured on; null when the service detected the face itself or the check is off"
    )


class PredictResponse(BaseModel):
    filename: str | None = None
    width: int
    height: int
    detector: str = Field(description='"none" when the whole image was treated as one aligned face')
    faces: list[FacePrediction]
    warnings: list[str] = Field(default_factory=list, description="what was ignored in the file, e.g. an EXIF "
                                "block that could not be read (the image is then used as stored, unrotated)")


class FileError(BaseModel):
    filename: str | None = None
    status: int = Field(description="the HTTP status this file would get on its own in /predict")
    detail: str = Field(description="what is wrong with this file, naming it")


class BatchPredictResponse(BaseModel):
    results: list[PredictResponse | FileError] = Field(description="one entry per file, in upload order")
    errors: int = Field(description="how many entries are errors")


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong with the request, naming the file")


class BatchingInfo(BaseModel):
    enabled: bool
    max_batch: int
    max_wait_ms: float
    batches: int
    images: int
    max_batch_seen: int
    mean_batch: float
    batch_size_histogram: dict[str, int]


class HealthResponse(BaseModel):
    status: str
    model: str
    backend: str
    pid: int
    heads: list[str]
    regression_heads: list[str]
    detector: str
    batching: BatchingInfo


class Limits(BaseModel):
    max_upload_bytes: int = Field(description="one file")
    max_request_bytes: int = Field(description="a whole request body")
    max_pixels: int = Field(description="one image (width x height)")
    max_request_pixels: int = Field(description="decoded pixels per request")
    detect_max_pixels: int = Field(description="faces are detected on a copy of at most this size")
    min_side: int = Field(description="smallest accepted width and height")
    max_files: int
    content_types: list[str] = Field(description="accepted formats, recognised by their bytes")
    max_side: int = Field(description="longest side of one image, px")
    max_aspect: float = Field(description="long side / short side of one image")
    max_jpeg_scans: int = Field(description="scans of one (progressive) JPEG")
    max_request_faces: int = Field(description="faces per request sent to the model; files past it get 413")
    body_timeout_s: float = Field(description="a request body must arrive within body_timeout_s + "
                                  "bytes / body_min_rate seconds (408 otherwise)")
    body_min_rate: float = Field(description="bytes per second, see body_timeout_s")
    max_head_bytes: int = Field(description="request line and headers (431 past it)")
    head_timeout_s: float = Field(description="request line and headers must arrive within this (408)")
    keep_alive_s: float = Field(description="idle keep-alive connections are closed after this")
    limit_concurrency: int = Field(description="requests in flight per worker (503 past it; /health exempt)")
    max_connections: int = Field(description="open connections per worker (503 past it; /health exempt)")
    drain_timeout_s: float = Field(description="on shutdown, requests in flight get this long to finish (then 503)")
    light_max_pixels: int = Field(description="images this small sent without detect have a decode thread of their "
                                  "own (never queued behind large photos)")


class MetadataResponse(BaseModel):
    model: str
    backend: str
    version: str
    backbone: str
    image_size: int
    heads: list[str]
    regression_heads: list[str]
    classes: dict[str, list[str]]
    temperature: dict[str, float]
    input_contract: str
    detector: str
    framing_check: bool = Field(description="whether images sent without detect get a 'framing' (check_framing=true)")
    framing_ok_scale: list[float] = Field(description="the crop scales (image side / FairFace chip side) called ok")
    limits: Limits
    batching: BatchingInfo
