"""The two stages every engine runs on a part: files -> face chips, chips -> rows.

``prepare_part`` (decode, detect, align; CPU) and ``finish_part`` (model; one predictor) are
plain functions of a part's inputs, so the local engine calls them in turn and the Ray engine
runs them in tasks and actors, and both write the same rows. The model sees each part's chips
in the same chunks (``predictor.batch_size`` from the part's first face) in both engines, so
even the float rounding of batched inference is the same.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ff_keras.annotate import schema as S
from ff_keras.annotate.inputs import read_bytes
from ff_keras.data.image_decode import ImageError, decode_image
from ff_keras.faces.analyze import NO_DETECTOR, _face_fields, _faces_in

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclass(frozen=True)
class Options:
    """What decides a run's rows (stored in ``_run.json``; a resume must match)."""

    model: str
    detector: str = "mtcnn"  # resolved name (``analyze.resolve_detector``) or "none"
    min_face: int = 40
    framing: str | None = None  # with detector "none": check each crop's framing with this detector
    part_size: int = 256  # inputs per part file (the unit of commit and of resume)
    batch_size: int = 32  # faces per model call


@dataclass
class Prepared:
    """A part after decoding and detection: its rows so far and one chip per face row."""

    index: int
    inputs: int
    rows: list[dict]
    chips: np.ndarray  # float32 [faces, size, size, 3]


def prepare_part(index: int, sources: Sequence[str], opts: Options, size: int) -> Prepared:
    """Decodes and detects every input of part ``index``; unreadable files and photos without a
    face get their row here, with the reason."""
    rows: list[dict] = []
    chips: list[np.ndarray] = []
    for source in sources:
        try:
            rgb = decode_image(read_bytes(source), source).rgb
        except ImageError as err:
            # Pillow's messages may name an object's address ("<_io.BytesIO object at 0x7f..>"),
            # which differs from run to run; rows must not.
            reason = _ADDRESS.sub("", f"cannot read image {err}")
            rows.append(S.error_row(source, "unreadable", reason, opts.detector))
            continue
        except OSError as err:  # a URL that cannot be fetched
            rows.append(S.error_row(source, "unreadable", f"cannot read {source}: {err}", opts.detector))
            continue
        faces, face_chips = _faces_in(rgb, opts.detector, size, opts.min_face)
        if not faces:
            rows.append(S.error_row(source, "no_face", "no face found", opts.detector))
            continue
        framing = _framing(rgb, opts) if opts.detector == NO_DETECTOR else None
        for i, (face, chip) in enumerate(zip(faces, face_chips)):
            f = _face_fields(face, rgb)
            rows.append(S.face_row(source, i, f["box"], f["confidence"], opts.detector, framing))
            chips.append(np.asarray(chip, np.float32))
    stacked = np.stack(chips) if chips else np.zeros((0, size, size, 3), np.float32)
    return Prepared(index, len(sources), rows, stacked)


def _framing(rgb: np.ndarray, opts: Options) -> dict | None:
    if opts.framing is None:
        return None
    from ff_keras.faces.framing import check_framing

    return check_framing(rgb, opts.framing).to_dict()


def finish_part(prepared: Prepared, predictor, schema: pa.Schema, extras: dict) -> pa.Table:
    """Runs the model on a prepared part's chips and returns its rows as a table of ``schema``."""
    face_rows = [r for r in prepared.rows if r["status"] == "face"]
    if face_rows:
        probs = predictor.predict(prepared.chips)
        for i, (row, result) in enumerate(zip(face_rows, predictor.results_from_probs(probs))):
            S.add_results(row, result, probs, i, extras)
    return S.to_table(prepared.rows, schema)


def run_schema(predictor) -> tuple[pa.Schema, dict]:
    """The schema of a run with ``predictor`` and the extra keys per head, found by one call on a
    blank chip (the keys a predictor adds, such as ``ambiguous``, are carried as they come)."""
    blank = np.zeros((1, *predictor.input_shape), np.float32)
    extras = S.result_extras(predictor.predict_results(blank)[0])
    return S.build_schema(predictor.info.classes, predictor.heads, extras), extras
