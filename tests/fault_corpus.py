"""Crafted and mutated image files for the fault-injection tests of the service and the CLI.

``corpus(face_jpeg)`` returns ``{file name: (bytes, expected)}`` where ``expected`` is
``200`` for a file that must be answered, or the 4xx status the service must give it (the
CLI must report the same files as unreadable and still process the others).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def dds_with_bad_flags() -> bytes:
    """A DDS header whose pixel-format flags (byte 80) Pillow's decoder does not implement."""
    head = bytearray(b"DDS " + struct.pack("<I", 124) + bytes(120))
    head[80:84] = struct.pack("<I", 0x40000000)
    return bytes(head) + bytes(64)


def spider_header() -> bytes:
    """A SPIDER header (float #27 = 1.0) that made Pillow raise AttributeError."""
    floats = [0.0] * 64
    floats[0], floats[1], floats[2], floats[4], floats[11], floats[12] = 1.0, 64.0, 64.0, 1.0, 64.0, 64.0
    floats[21], floats[26] = 256.0, 1.0
    return struct.pack(">64f", *floats) + bytes(1024)


def png_16bit(grey16: np.ndarray) -> bytes:
    """16-bit greyscale PNG (Pillow mode I;16)."""
    return encode(Image.fromarray(grey16.astype(np.uint16)), "PNG")


def png_16bit_rgb(rgb16: np.ndarray) -> bytes:
    """48-bit RGB PNG written chunk by chunk (Pillow cannot write it)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\0" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def png_with_size(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR claiming another size (CRC fixed, so only the size is a lie)."""
    ihdr = png[12:29]
    new = ihdr[:4] + struct.pack(">II", width, height) + ihdr[12:]
    return png[:12] + new + struct.pack(">I", zlib.crc32(new) & 0xFFFFFFFF) + png[33:]


def bit_flips(data: bytes, n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for pos in rng.integers(20, len(out), n):
        out[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def face_as_16bit(face_jpeg: bytes) -> tuple[bytes, bytes]:
    """(16-bit grey PNG, 8-bit grey PNG) of the same face: they must get the same labels."""
    grey = np.asarray(Image.open(io.BytesIO(face_jpeg)).convert("L"))
    return png_16bit(grey.astype(np.uint16) * 257), encode(Image.fromarray(grey), "PNG")


def corpus(face_jpeg: bytes) -> dict[str, tuple[bytes, int]]:
    face = Image.open(io.BytesIO(face_jpeg)).convert("RGB")
    png = encode(face, "PNG")
    webp = encode(face, "WEBP", quality=80)
    small = face.resize((64, 64))
    frames = [small, small.transpose(Image.FLIP_LEFT_RIGHT)]
    rotated = encode(face.rotate(90, expand=True), "JPEG", exif=_exif_orientation(8))
    files: dict[str, tuple[bytes, int]] = {
        # Answered: every allowed format and mode.
        "face.jpg": (face_jpeg, 200),
        "face.png": (png, 200),
        "face.webp": (webp, 200),
        "grey16.png": (face_as_16bit(face_jpeg)[0], 200),
        "rgb48.png": (png_16bit_rgb(np.asarray(face).astype(np.uint16) * 257), 200),
        "cmyk.jpg": (encode(face.convert("CMYK"), "JPEG"), 200),
        "palette_alpha.png": (encode(face.convert("RGBA").convert("P"), "PNG"), 200),
        "grey.jpg": (encode(face.convert("L"), "JPEG"), 200),
        "animated.png": (encode(frames[0], "PNG", save_all=True, append_images=frames[1:]), 200),
        "animated.webp": (encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]), 200),
        "exif_rotated.jpg": (rotated, 200),
        # Formats that are never decoded, whatever they claim to be.
        "crafted.dds": (dds_with_bad_flags(), 415),
        "crafted.spider": (spider_header(), 415),
        "face.gif": (encode(face, "GIF"), 415),
        "face.tiff": (encode(face, "TIFF"), 415),
        "face.bmp": (encode(face, "BMP"), 415),
        "face.ico": (encode(small, "ICO"), 415),
        "face.tga": (encode(face, "TGA"), 415),
        "face.ppm": (encode(face, "PPM"), 415),
        "face.qoi": (encode(face, "QOI"), 415),
        "face.jp2": (encode(face, "JPEG2000"), 415),
        "face.eps": (encode(face, "EPS"), 415),
        "text.jpg": (b"hello, not an image", 415),
        # Damaged allowed formats.
        "empty.jpg": (b"", 400),
        "cut_half.jpg": (face_jpeg[: len(face_jpeg) // 2], 422),
        "cut_header.jpg": (face_jpeg[:40], 422),
        "cut.png": (png[: len(png) // 3], 422),
        "cut.webp": (webp[: len(webp) // 2], 422),
        "flipped_bits.png": (bit_flips(png, 8, 0), 422),
        "png_lies_about_size.png": (png_with_size(png, 300, 300), 422),
        "bomb.png": (png_with_size(png, 30000, 30000), 413),
        "tiny.png": (encode(Image.new("RGB", (1, 1)), "PNG"), 422),
        "thin.jpg": (encode(Image.new("RGB", (400, 20), "gray"), "JPEG"), 422),
    }
    return files


def _exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def progressive_jpeg_with_scans(extra: int, size: tuple[int, int] = (1000, 1000)) -> bytes:
    """A valid progressive JPEG of a flat image with its last (empty) scan repeated ``extra``
    times: each repeat is a few bytes but one more decoding pass over the whole image."""
    data = encode(Image.new("RGB", size, (120, 130, 140)), "JPEG", progressive=True, quality=80)
    last = data.rindex(b"\xff\xda")
    return data[:-2] + data[last:-2] * extra + b"\xff\xd9"


def jpeg_with_exif(entries: list[tuple[int, int, int, bytes]], size: tuple[int, int] = (64, 48)) -> bytes:
    """A JPEG whose APP1 EXIF block holds exactly ``entries`` (tag, TIFF type, count, 4-byte value),
    written by hand: Pillow refuses to write the unusual blocks clients send."""
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI4s", *e) for e in entries) + bytes(4)
    app1 = b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd
    data = encode(Image.new("RGB", size, (128, 128, 128)), "JPEG")
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def unusual_exif_jpegs() -> dict[str, bytes]:
    """Valid JPEGs (64 x 48, rotated by orientation 6 where it is readable) whose EXIF made
    ``ImageOps.exif_transpose`` fail, and one whose orientation cannot be read at all."""
    rotate = (0x0112, 3, 1, struct.pack("<HH", 6, 0))
    return {
        "makernote_byte.jpg": jpeg_with_exif([rotate, (0xC635, 1, 1, b"\x01\0\0\0")]),  # MakerNoteSafety as BYTE
        "many_entries.jpg": jpeg_with_exif([rotate] + [(0xC635, 1, 1, b"\x01\0\0\0")] * 5400),
        "orientation_text.jpg": jpeg_with_exif([(0x0112, 2, 4, b"abc\0")]),  # orientation typed ASCII
    }
