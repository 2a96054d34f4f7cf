"""Untrusted image bytes -> uint8 RGB, shared by the service and the photo CLI.

Only JPEG, PNG and WebP are decoded, and which of them a file is comes from its first
bytes, never from a declared content type or file name: Pillow knows dozens of formats
(DDS, SPIDER, ICNS, EPS via Ghostscript, ...) whose rarely used decoders are where crafted
files crash or misbehave. Every decoder failure becomes an ``ImageError`` naming the file,
with the HTTP status the service answers with.

Large JPEGs can be decoded at a reduced scale (Pillow's ``draft``: the JPEG decoder skips
detail instead of decoding 40 Mpixel and shrinking afterwards), which is all the model
needs when it sees one face crop. 16-bit images are scaled to 8 bit (Pillow's
``convert("RGB")`` clips 16-bit grey to white).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Magic bytes -> Pillow format name. WebP is a RIFF container: "RIFF", size, "WEBP".
FORMATS: dict[str, str] = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
# Below this side an image holds too little of a face to label: the detectors look for
# faces of 40 px and more, and the released model reads 150 px crops.
MIN_SIDE = 32
# EXIF orientations that swap width and height (90 / 270 degree rotations).
_TRANSPOSED = {5, 6, 7, 8}


class ImageError(ValueError):
    """An upload or file that cannot be used; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass
class DecodedImage:
    """``rgb`` may be smaller than the image (``scale`` = decoded / original side); ``size``
    is the original (width, height) after EXIF rotation, the frame boxes are reported in."""

    rgb: np.ndarray
    size: tuple[int, int]
    scale: float
    format: str


def sniff_format(head: bytes) -> str | None:
    """The Pillow format name of ``head`` (a file's first bytes) if it is an allowed one."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_image(
    data: bytes | str | Path,
    name: str,
    max_pixels: int | None = None,
    min_side: int = MIN_SIDE,
    min_decoded_side: int = 0,
    min_decoded_pixels: int = 0,
    budget: PixelBudget | None = None,
) -> DecodedImage:
    """Decodes one image with its EXIF orientation applied.

    Args:
        data: encoded bytes or a file path.
        name: how errors refer to the image (file name).
        max_pixels: refuse images larger than this (checked on the header, before decoding).
        min_side: refuse images whose shorter side is smaller.
        min_decoded_side, min_decoded_pixels: a JPEG may be decoded at 1/2, 1/4 or 1/8
            scale as long as its shorter side keeps ``min_decoded_side`` pixels and it keeps
            ``min_decoded_pixels`` in all (both 0: full size).
        budget: pixels still allowed to be decoded for the caller's request.
    Raises:
        ImageError: naming ``name``, for unsupported, corrupt, too large or too small images.
    """
    try:
        raw = Path(data).read_bytes() if isinstance(data, (str, Path)) else data
    except OSError as err:
        raise ImageError(f"{name}: cannot read file ({err.strerror or err})", 400) from err
    if not raw:
        raise ImageError(f"{name}: empty file", 400)
    fmt = sniff_format(raw[:16])
    if fmt is None:
        raise ImageError(f"{name}: not a JPEG, PNG or WebP image (judged by the file's bytes)", 415)
    try:
        with Image.open(io.BytesIO(raw), formats=[fmt]) as im:
            keep = (min_decoded_side, min_decoded_pixels)
            return _decode_open(im, name, fmt, max_pixels, min_side, keep, budget)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(f"{name}: {err}", 413) from err
    except Exception as err:  # noqa: BLE001 - any decoder failure is the file's fault, not the server's
        detail = str(err) or type(err).__name__
        raise ImageError(f"{name}: {fmt} data is truncated or corrupt ({detail})", 422) from err


def _decode_open(im, name, fmt, max_pixels, min_side, keep, budget) -> DecodedImage:
    w, h = im.size  # header only: nothing is decoded yet
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(
            f"{name}: image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
            "(decompression-bomb guard)", 413,
        )
    if min(w, h) < min_side:
        raise ImageError(f"{name}: image is {w}x{h}; both sides must be at least {min_side} px", 422)
    keep_side, keep_pixels = keep
    if fmt == "JPEG" and (keep_side or keep_pixels):
        s = max(keep_side / min(w, h), math.sqrt(keep_pixels / (w * h)))
        if s < 0.5:  # the decoder reduces by 1/2, 1/4 or 1/8, never below the requested size
            im.draft("RGB", (math.ceil(w * s), math.ceil(h * s)))
    dw, dh = im.size
    if budget is not None:
        budget.take(dw * dh, name)
    orientation = im.getexif().get(0x0112, 1)
    upright = ImageOps.exif_transpose(im)
    size = (h, w) if orientation in _TRANSPOSED else (w, h)
    rgb = to_rgb8(upright)
    return DecodedImage(rgb, size, rgb.shape[1] / size[0], fmt)


def to_rgb8(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> contiguous uint8 [H, W, 3]; 16-bit grey is scaled, not clipped."""
    if im.mode.startswith("I"):  # I;16 / I;16B / I: 16-bit grey PNG samples 0..65535
        grey = np.asarray(im, dtype=np.float64)
        grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1))
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


class PixelBudget:
    """Decoded pixels one request may still spend; one request decodes its images in turn."""

    def __init__(self, pixels: int):
        self.left = pixels
        self.total = pixels

    def take(self, pixels: int, name: str) -> None:
        if pixels > self.left:
            raise ImageError(
                f"{name}: decoding it would exceed this request's budget of {self.total} decoded "
                f"pixels ({self.left} left); send it in a separate request", 413,
            )
        self.left -= pixels
