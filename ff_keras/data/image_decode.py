"""Untrusted image bytes -> uint8 RGB, shared by the service and the photo CLI.

Only JPEG, PNG and WebP are decoded, and which of them a file is comes from its first
bytes, never from a declared content type or file name: Pillow knows dozens of formats
(DDS, SPIDER, ICNS, EPS via Ghostscript, ...) whose rarely used decoders are where crafted
files crash or misbehave. Every decoder failure becomes an ``ImageError`` naming the file,
with the HTTP status the service answers with.

Large JPEGs can be decoded at a reduced scale (Pillow's ``draft``: the JPEG decoder skips
detail instead of decoding 40 Mpixel and shrinking afterwards), which is all the model
needs when it sees one face crop; PNG and WebP are decoded whole and then reduced (Pillow's
``reduce``) to the same size, so every later step (detection, padding, the framing check)
works on the small copy. 16-bit images are scaled to 8 bit (Pillow's ``convert("RGB")``
clips 16-bit grey to white).

Decoding cost is bounded before any pixel is decoded: pixels, longest side and aspect ratio
come from the header, and a JPEG's scans are counted (a progressive JPEG with thousands of
empty scans costs minutes of CPU for a file of a few MB). EXIF is only read for its
orientation; an EXIF block Pillow cannot parse costs the orientation, not the image.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# Magic bytes -> Pillow format name. WebP is a RIFF container: "RIFF", size, "WEBP".
FORMATS: dict[str, str] = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
# Below this side an image holds too little of a face to label: the detectors look for
# faces of 40 px and more, and the released model reads 150 px crops.
MIN_SIDE = 32
# Shared by the service's defaults (ServeSettings) and the photo CLI, so both refuse the same files.
MAX_PIXELS = 40_000_000  # one image, from its header: a 40 MP photo is enough for phones
MAX_SIDE = 16_384  # px; WebP's own limit, and 3x a 40 MP photo's long side
MAX_ASPECT = 20.0  # long side / short side; panoramas are ~10, a 12000 x 32 strip 375
# A progressive JPEG has ~10 scans (libjpeg's and mozjpeg's scripts); each scan costs a pass over
# the whole image, so thousands of empty ones turn a 1.6 MB file into a minute of CPU.
MAX_JPEG_SCANS = 100
MAX_FILE_BYTES = 128 * 2**20  # the CLI's cap on one file (a 40 MP PNG is well under it)
# EXIF orientation -> the transpose that makes the image upright (ImageOps.exif_transpose's table;
# it also rewrites the EXIF block, which fails on blocks Pillow can read but not write).
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_TRANSPOSED = {5, 6, 7, 8}  # orientations that swap width and height
# Pillow's messages may carry an object repr ("<_io.BytesIO object at 0x7f...>"): never shown to clients.
_REPR = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>")


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
    warnings: list[str] = field(default_factory=list)  # e.g. an EXIF block that could not be read


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
    limits: ShapeLimits | None = None,
) -> DecodedImage:
    """Decodes one image with its EXIF orientation applied.

    Args:
        data: encoded bytes or a file path (read with ``read_image_file``: regular files only).
        name: how errors refer to the image (file name).
        max_pixels: refuse images larger than this (checked on the header, before decoding).
        min_side: refuse images whose shorter side is smaller.
        min_decoded_side, min_decoded_pixels: the image may be decoded (JPEG) or reduced right
            after decoding (PNG, WebP) to 1/2, 1/4, ... as long as its shorter side keeps
            ``min_decoded_side`` pixels and it keeps ``min_decoded_pixels`` in all (both 0: full size).
        budget: pixels still allowed to be decoded for the caller's request.
        limits: longest side, aspect ratio and JPEG scans allowed (None: ``ShapeLimits()``).
    Raises:
        ImageError: naming ``name``, for unsupported, corrupt, too large or too small images.
    """
    raw = read_image_file(data, name) if isinstance(data, (str, Path)) else data
    if not raw:
        raise ImageError(f"{name}: empty file", 400)
    fmt = sniff_format(raw[:16])
    if fmt is None:
        raise ImageError(f"{name}: not a JPEG, PNG or WebP image (judged by the file's bytes)", 415)
    limits = limits or ShapeLimits()
    if fmt == "JPEG":
        limits.check_scans(raw, name)
    try:
        with Image.open(io.BytesIO(raw), formats=[fmt]) as im:
            keep = (min_decoded_side, min_decoded_pixels)
            return _decode_open(im, name, fmt, max_pixels, min_side, keep, budget, limits)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(f"{name}: {err}", 413) from err
    except Image.UnidentifiedImageError as err:
        raise ImageError(f"{name}: not a valid {fmt} file (its header cannot be parsed)", 422) from err
    except Exception as err:  # noqa: BLE001 - any decoder failure is the file's fault, not the server's
        detail = _REPR.sub("the data", str(err)) or type(err).__name__
        raise ImageError(f"{name}: {fmt} data is truncated or corrupt ({detail})", 422) from err


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an allowed format's header, decoding nothing; None if unreadable."""
    fmt = sniff_format(data[:16])
    if fmt is None:
        return None
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            return im.size
    except Exception:  # noqa: BLE001 - decode_image reports what is wrong; this only routes the upload
        return None


@dataclass(frozen=True)
class ShapeLimits:
    """What an image may cost beyond its pixel count: sides and scans, checked before decoding."""

    max_side: int = MAX_SIDE
    max_aspect: float = MAX_ASPECT
    max_jpeg_scans: int = MAX_JPEG_SCANS

    def check_size(self, w: int, h: int, name: str) -> None:
        if max(w, h) > self.max_side:
            raise ImageError(f"{name}: image is {w}x{h}; its longest side is over the limit of {self.max_side} px",
                             413)
        if max(w, h) > self.max_aspect * min(w, h):
            raise ImageError(
                f"{name}: image is {w}x{h}, an aspect ratio of {max(w, h) / min(w, h):.0f}:1, over the limit of "
                f"{self.max_aspect:g}:1", 422,
            )

    def check_scans(self, raw: bytes, name: str) -> None:
        """Counts start-of-scan markers: entropy-coded data never holds FF DA (FF is stuffed as
        FF 00), so every one is a scan header, or one of an embedded EXIF thumbnail."""
        scans = raw.count(b"\xff\xda")
        if scans > self.max_jpeg_scans:
            raise ImageError(
                f"{name}: JPEG has {scans} scans, over the limit of {self.max_jpeg_scans} (each scan is a pass "
                "over the whole image; encoders write about 10)", 413,
            )


def read_image_file(path: str | Path, name: str | None = None, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """A file's bytes, refusing (by name, with the reason) anything but a regular file of at most
    ``max_bytes``: a FIFO would block forever, /dev/zero never ends, a link may dangle or loop.
    Special files are refused from ``stat``, never opened; the open itself cannot block
    (O_NONBLOCK) and is checked again, in case the path was swapped in between."""
    name = name or str(path)
    try:
        st = os.stat(path)
    except OSError as err:
        raise ImageError(f"{name}: cannot read file ({_stat_reason(path, err)})", 400) from err
    _check_regular(st, name, max_bytes)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as err:
        raise ImageError(f"{name}: cannot read file ({err.strerror or err})", 400) from err
    with os.fdopen(fd, "rb") as f:
        _check_regular(os.fstat(fd), name, max_bytes)
        data = f.read(max_bytes + 1)  # a file growing past its stat size is cut off here
    if len(data) > max_bytes:
        raise ImageError(f"{name}: file is larger than the {max_bytes}-byte limit", 413)
    return data


_KINDS = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISCHR: "a character device",
          stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}


def _check_regular(st: os.stat_result, name: str, max_bytes: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for test, k in _KINDS.items() if test(st.st_mode)), "a special file")
        raise ImageError(f"{name}: not a regular file ({kind}); not read", 400)
    if st.st_size > max_bytes:
        raise ImageError(f"{name}: file is {st.st_size} bytes, over the {max_bytes}-byte limit", 413)


def _stat_reason(path: str | Path, err: OSError) -> str:
    """Why ``stat`` failed, in words: a dangling or looping link is not a 'missing file'."""
    import errno

    if err.errno == errno.ELOOP:
        return "symbolic link loop"
    if err.errno == errno.ENOENT and os.path.islink(path):
        return f"dangling symbolic link to {os.readlink(path)}"
    return err.strerror or str(err)


def _decode_open(im, name, fmt, max_pixels, min_side, keep, budget, limits: ShapeLimits) -> DecodedImage:
    w, h = im.size  # header only: nothing is decoded yet
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(
            f"{name}: image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
            "(decompression-bomb guard)", 413,
        )
    if min(w, h) < min_side:
        raise ImageError(f"{name}: image is {w}x{h}; both sides must be at least {min_side} px", 422)
    limits.check_size(w, h, name)
    keep_side, keep_pixels = keep
    s = max(keep_side / min(w, h), math.sqrt(keep_pixels / (w * h))) if keep_side or keep_pixels else 1.0
    if fmt == "JPEG" and s < 0.5:  # the decoder reduces by 1/2, 1/4 or 1/8, never below the requested size
        im.draft("RGB", (math.ceil(w * s), math.ceil(h * s)))
    dw, dh = im.size
    if budget is not None:
        budget.take(dw * dh, name)
    im.load()  # decoder errors surface here, as the file's (PNG's getexif would load inside the try below)
    warnings = []
    try:
        orientation = int(im.getexif().get(0x0112, 1))
    except Exception as err:  # noqa: BLE001 - a broken EXIF block costs the orientation, not the image
        orientation = 1
        warnings.append(f"EXIF could not be read ({_REPR.sub('the data', str(err)) or type(err).__name__}); "
                        "orientation not applied")
    upright = im.transpose(_ORIENTATIONS[orientation]) if orientation in _ORIENTATIONS else im
    size = (h, w) if orientation in _TRANSPOSED else (w, h)
    factor = math.floor(dw / (s * w)) if s < 0.5 else 1  # further reduction the next steps allow
    if factor >= 2:  # PNG/WebP (or what a JPEG draft could not reach): shrink once, here
        if upright.mode.startswith("I;16"):
            upright = upright.convert("I")  # kept 16-bit: to_rgb8 scales it
        elif upright.mode not in ("RGB", "L", "I"):
            upright = upright.convert("RGB")  # palette, alpha, CMYK: as to_rgb8 would
        upright = upright.reduce(factor)
    rgb = to_rgb8(upright)
    return DecodedImage(rgb, size, rgb.shape[1] / size[0], fmt, warnings)


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
