"""The Parquet schema of an annotation run: one row per face, one per file without a face.

Every part file of a run has the same schema, whichever engine wrote it, so the output
folder reads as one table (``pyarrow.dataset``, pandas, DuckDB, Spark). Per head there is a
label column (``race``), a probability list in the model's class order (``race_probs``; the
class names are in the schema metadata, ``classes``) and one column per extra key the
predictor puts in a head's result (``race_ambiguous``...), found by asking the predictor
once, so keys added to the predictor later are carried without a change here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

# Row kinds: a face, a readable photo where the detector found none, a file that is no image.
STATUSES = ("face", "no_face", "unreadable")

BASE_FIELDS = [
    pa.field("source", pa.string(), nullable=False),  # the input as listed (path or URL)
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),  # why a file has no face rows
    pa.field("face", pa.int32()),  # face index within the photo, 0.. in detector order
    pa.field("box_x", pa.int32()),
    pa.field("box_y", pa.int32()),
    pa.field("box_w", pa.int32()),
    pa.field("box_h", pa.int32()),
    pa.field("confidence", pa.float64()),  # the detector's own score; null without detection
    pa.field("detector", pa.string()),
    # Crops (``--detector none``) checked against FairFace's framing (``faces.framing``).
    pa.field("framing", pa.string()),
    pa.field("framing_scale", pa.float32()),
]

# float64 keeps values the predictor rounded (age_years 23.9) exactly as in its JSON records.
_PY_TYPES = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
TOP = ""  # key of the per-face (not per-head) values, such as age_years, in ``extras``


def _arrow_type(value) -> pa.DataType:
    """Arrow type of an extra value; anything but a scalar (or a None) is stored as JSON text."""
    return _PY_TYPES.get(type(value), pa.string())


def result_extras(sample: Mapping) -> dict[str, dict[str, pa.DataType]]:
    """The columns one ``results_from_probs`` item calls for beyond label and probabilities:
    {head: {key: type}} for keys in a head's result, and {TOP: {key: type}} for per-face keys."""
    extras = {head: {k: _arrow_type(v) for k, v in res.items() if k not in ("label", "probabilities")}
              for head, res in sample["heads"].items()}
    extras[TOP] = {k: _arrow_type(v) for k, v in sample.items() if k != "heads"}
    return extras


def build_schema(classes: Mapping[str, Sequence[str]], heads: Sequence[str],
                 extras: Mapping[str, Mapping]) -> pa.Schema:
    """The run's schema; ``classes`` and ``heads`` as in the model's sidecar."""
    fields = list(BASE_FIELDS)
    for head in heads:
        fields += [pa.field(head, pa.string()), pa.field(f"{head}_probs", pa.list_(pa.float32()))]
        fields += [pa.field(f"{head}_{k}", t) for k, t in extras.get(head, {}).items()]
    fields += [pa.field(k, t) for k, t in extras.get(TOP, {}).items()]
    meta = {"classes": json.dumps({h: list(classes[h]) for h in heads}), "heads": json.dumps(list(heads))}
    return pa.schema(fields, metadata=meta)


def schema_classes(schema: pa.Schema) -> dict[str, list[str]]:
    """Class names per head, as the run's schema recorded them."""
    return json.loads(schema.metadata[b"classes"])


def face_row(source: str, face: int, box: Sequence[int], confidence: float | None, detector: str,
             framing: Mapping | None = None) -> dict:
    """A face row's detection fields (the model's fields are added by ``add_results``)."""
    x, y, w, h = (int(v) for v in box)
    return {"source": source, "status": "face", "error": None, "face": face, "box_x": x, "box_y": y,
            "box_w": w, "box_h": h, "confidence": confidence, "detector": detector,
            "framing": None if framing is None else framing["status"],
            "framing_scale": None if framing is None else framing["scale"]}


def error_row(source: str, status: str, error: str, detector: str) -> dict:
    """A row for a file that yields no face: unreadable (with the decoder's reason) or no face found."""
    return {"source": source, "status": status, "error": error, "detector": detector}


def _value(v, t: pa.DataType):
    """``v`` as its column stores it: text columns take JSON for anything but a string."""
    return v if v is None or not pa.types.is_string(t) or isinstance(v, str) else json.dumps(v)


def add_results(row: dict, result: Mapping, probs: Mapping[str, np.ndarray], i: int,
                extras: Mapping[str, Mapping]) -> dict:
    """Fills one face row from the predictor's result item ``result`` and probability row ``i``."""
    for head, res in result["heads"].items():
        row[head] = res["label"]
        row[f"{head}_probs"] = probs[head][i].tolist()
        for key, t in extras.get(head, {}).items():
            row[f"{head}_{key}"] = _value(res.get(key), t)
    for key, t in extras.get(TOP, {}).items():
        row[key] = _value(result.get(key), t)
    return row


def to_table(rows: Sequence[dict], schema: pa.Schema) -> pa.Table:
    """Rows -> a table of exactly ``schema`` (missing keys are null)."""
    return pa.Table.from_pylist(list(rows), schema=schema)
