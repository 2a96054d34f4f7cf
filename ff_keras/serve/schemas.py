"""Response models of the service; FastAPI turns them into the OpenAPI schema at ``/docs``.

Heads are dict keys (``age``, ``gender``, ``race``), the same key used by the model outputs,
the ONNX output names and ``model_info.json``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class HeadPrediction(BaseModel):
    label: str = Field(description="top class name")
    probabilities: dict[str, float] = Field(description="probability per class name, summing to 1")


class FacePrediction(BaseModel):
    box: list[int] = Field(description="[x, y, width, height] in the uploaded image's pixels")
    heads: dict[str, HeadPrediction]
    confidence: float | None = Field(None, description="detector score; null when no detector ran")


class PredictResponse(BaseModel):
    filename: str | None = None
    width: int
    height: int
    detector: str = Field(description='"none" when the whole image was treated as one aligned face')
    faces: list[FacePrediction]


class BatchPredictResponse(BaseModel):
    results: list[PredictResponse]


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
    batching: BatchingInfo


class Limits(BaseModel):
    max_upload_bytes: int
    max_pixels: int
    max_files: int
    content_types: list[str]


class MetadataResponse(BaseModel):
    model: str
    backend: str
    version: str
    backbone: str
    image_size: int
    heads: list[str]
    classes: dict[str, list[str]]
    temperature: dict[str, float]
    input_contract: str
    detector: str
    limits: Limits
    batching: BatchingInfo
