"""Photos in, one record per face out: read, detect, align, classify in batches, draw, tabulate.

Chips from all photos are pooled and classified ``batch_size`` at a time, so a folder of
photos with few faces each still makes full batches (one model call per face would cost a
Python round trip and a tiny matmul each).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ff_keras.faces.detect import DETECTORS, Face, detect_and_align
from ff_keras.data.image_decode import MAX_PIXELS, ImageError, decode_image

NO_DETECTOR = "none"
# CLI spellings: "dlib" is dlib's HOG detector, the fast one.
DETECTOR_ALIASES = {"dlib": "dlib_hog", **{d: d for d in DETECTORS}, NO_DETECTOR: NO_DETECTOR}


@dataclass
class Report:
    """Everything ``analyze`` found; ``to_json`` is the CLI's ``--json`` document."""

    detector: str
    records: list[dict] = field(default_factory=list)
    no_faces: list[str] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)  # {"path", "error"}
    read: int = 0

    def to_json(self) -> dict:
        return {
            "detector": self.detector,
            "images_read": self.read,
            "faces": self.records,
            "no_faces": self.no_faces,
            "unreadable": self.unreadable,
        }


def resolve_detector(name: str) -> str:
    if name not in DETECTOR_ALIASES:
        raise ValueError(f"unknown detector {name!r}; choose one of {sorted(DETECTOR_ALIASES)}")
    return DETECTOR_ALIASES[name]


def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], bool]:
    """Paths as given plus every entry in given folders (sorted, recursive, hidden ones left out).

    Everything in a folder that is not a folder itself is listed, FIFOs, devices, dangling links,
    link loops and links to folders included, so that ``read_rgb`` refuses each one by name with
    its reason instead of it being skipped unseen (nothing is opened here).

    Returns:
        (paths, whether any input was a folder) - folders get a progress bar.
    """
    paths, any_dir = [], False
    for item in map(Path, inputs):
        if item.is_dir():
            any_dir = True
            paths += sorted(
                p for p in item.rglob("*")
                if not p.name.startswith(".") and (p.is_symlink() or not p.is_dir())  # rglob walks real folders
            )
        else:
            paths.append(item)  # a missing file is reported as unreadable later
    return paths, any_dir


def read_rgb(path: str | Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB with the EXIF orientation applied (phone photos are stored sideways),
    decoded as the service decodes uploads (JPEG, PNG or WebP; 16-bit scaled to 8 bit), with the
    service's default limits: regular files only (never a FIFO or device), at most
    ``image_decode.MAX_FILE_BYTES``, ``MAX_PIXELS`` and the default side, aspect and JPEG-scan limits.

    Raises:
        ValueError: naming the file when it is missing, special, too large, too small or not a
            decodable image.
    """
    try:
        return decode_image(path, str(path), max_pixels=MAX_PIXELS).rgb
    except ImageError as err:
        raise ValueError(f"cannot read image {err}") from err


def analyze(
    paths: Iterable[str | Path],
    predictor,
    detector: str,
    batch_size: int = 32,
    progress: bool = False,
    min_face: int = 40,
) -> Report:
    """Detects, aligns and classifies every face in ``paths`` with ``predictor``
    (``ff_keras.inference.predictor.Predictor``); ``detector="none"`` takes each image as one aligned face."""
    from tqdm import tqdm

    detector = resolve_detector(detector)
    size = predictor.info.image_size
    report = Report(detector)
    pending: list[tuple[dict, np.ndarray]] = []

    def flush() -> None:
        if pending:
            chips = np.stack([c for _, c in pending])
            for (rec, _), result in zip(pending, predictor.predict_results(chips)):
                rec.update(result)
            pending.clear()

    paths = list(paths)
    for path in tqdm(paths, desc="photos", unit="photo", disable=not progress, file=sys.stderr):
        try:
            rgb = read_rgb(path)
        except ValueError as err:
            report.unreadable.append({"path": str(path), "error": str(err)})
            continue
        report.read += 1
        faces, chips = _faces_in(rgb, detector, size, min_face)
        if not faces:
            report.no_faces.append(str(path))
        for i, (face, chip) in enumerate(zip(faces, chips)):
            rec = {"image": str(path), "face": i, "detector": detector, **_face_fields(face, rgb)}
            report.records.append(rec)
            pending.append((rec, chip))
            if len(pending) >= batch_size:
                flush()
    flush()
    return report


def _faces_in(rgb: np.ndarray, detector: str, size: int, min_face: int) -> tuple[list[Face | None], np.ndarray]:
    if detector == NO_DETECTOR:  # the model's own resize policy, as for any aligned crop
        from ff_keras.inference.predictor import prepare_face

        return [None], prepare_face(rgb, size)[None]
    return detect_and_align(rgb, detector, size, min_face)


def _face_fields(face: Face | None, rgb: np.ndarray) -> dict:
    if face is None:  # the whole image is the face
        return {"box": [0, 0, int(rgb.shape[1]), int(rgb.shape[0])], "confidence": None, "landmarks": None}
    return face.to_dict()


def format_table(records: Sequence[dict], heads: Sequence[str]) -> str:
    """A fixed-width table: one row per face with each head's top label and its probability
    (``X or Y?`` when the head's answer is ambiguous, Y its runner-up)."""
    years = any(r.get("age_years") is not None for r in records)
    cols = ["image", "face", "box", "conf"] + list(heads) + (["age_years"] if years else [])
    rows = []
    for r in records:
        conf = "-" if r["confidence"] is None else f"{r['confidence']:.2f}"
        row = [Path(r["image"]).name, str(r["face"]), ",".join(map(str, r["box"])), conf]
        for h in heads:
            p = r["heads"][h]
            label = f"{p['label']} or {p['runner_up']['label']}?" if p.get("ambiguous") else p["label"]
            row.append(f"{label} ({p['probabilities'][p['label']]:.2f})")
        if years:
            row.append("-" if r.get("age_years") is None else f"{r['age_years']:.1f}")
        rows.append(row)
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def draw_faces(rgb: np.ndarray, records: Sequence[dict], heads: Sequence[str]) -> Image.Image:
    """The photo with each face's box, landmarks, id and top labels drawn on it."""
    im = Image.fromarray(rgb)
    draw = ImageDraw.Draw(im)
    line = max(2, round(max(im.size) / 400))
    font = ImageFont.load_default(size=max(12, round(max(im.size) / 60)))
    for r in records:
        x, y, w, h = r["box"]
        draw.rectangle([x, y, x + w, y + h], outline=(0, 255, 0), width=line)
        for px, py in r["landmarks"] or []:
            draw.ellipse([px - line, py - line, px + line, py + line], fill=(255, 0, 0))
        years = [] if r.get("age_years") is None else [f"~{r['age_years']:.0f} years"]
        text = "\n".join([f"#{r['face']}"] + [r["heads"][hd]["label"] for hd in heads] + years)
        box = draw.multiline_textbbox((x, y + h + line), text, font=font)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.multiline_text((x, y + h + line), text, fill=(255, 255, 255), font=font)
    return im


def write_annotated(report: Report, out_dir: str | Path, heads: Sequence[str]) -> list[Path]:
    """Writes ``<stem>_faces.jpg`` for every readable photo into ``out_dir``; returns the paths.

    Photos with the same file name in different folders get a numeric suffix, never overwrite.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_image: dict[str, list[dict]] = {p: [] for p in report.no_faces}
    for r in report.records:
        by_image.setdefault(r["image"], []).append(r)
    written: list[Path] = []
    for image, recs in by_image.items():
        target = out_dir / f"{Path(image).stem}_faces.jpg"
        n = 1
        while target in written:
            target = out_dir / f"{Path(image).stem}_faces_{n}.jpg"
            n += 1
        draw_faces(read_rgb(image), recs, heads).save(target, quality=90)
        written.append(target)
    return written
