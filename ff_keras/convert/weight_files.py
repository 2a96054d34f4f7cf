"""Converted-weight files: names from the arrays' content, and strict reading.

A converted file is an ``.npz`` named ``<stem><sep><sha8>.npz`` where ``sha8`` starts the
SHA256 of the arrays themselves (keys, dtypes, shapes, bytes), never of the zip archive
(which holds timestamps): converting the same source twice gives the same name, so a
config pins the exact file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def weights_digest(weights: Mapping[str, np.ndarray]) -> str:
    """SHA256 over sorted keys, dtypes, shapes and bytes (deterministic, unlike zip timestamps)."""
    h = hashlib.sha256()
    for key in sorted(weights):
        a = np.ascontiguousarray(weights[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_weights(weights: Mapping[str, np.ndarray], out: str | Path, stem: str, sep: str = "-") -> Path:
    """Writes ``<out>/<stem><sep><sha8>.npz`` (or exactly ``out`` if it ends in ``.npz``)."""
    out = Path(out)
    path = out if out.suffix == ".npz" else out / f"{stem}{sep}{weights_digest(weights)[:8]}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **weights)
    return path


def read_weights(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of a converted ``.npz``; a missing file raises naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"converted weights file not found: {path}")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
