"""Pre-flight image check: names every file the training pipeline could not decode.

Run before training so a corrupt, truncated, missing or unsupported image is reported by
name up front, instead of being skipped (training) or failing an evaluation mid-way. Each
file gets PIL's ``verify()`` (container structure) and then a full decode (``load()``
catches truncated pixel data that ``verify`` misses); formats outside what
``tf.io.decode_image`` reads are rejected too. PIL releases the GIL while decoding, so a
thread pool scales across cores.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from PIL import Image

log = logging.getLogger(__name__)

# What decode_image (data.decode_image) handles; anything else PIL can open is rejected.
TF_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP"})


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes: exact-copy detection and reference-file comparison."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_image(path: str | os.PathLike) -> str | None:
    """None if ``path`` decodes fully, else a short reason."""
    try:
        with Image.open(path) as img:
            fmt = img.format
            img.verify()
        if fmt not in TF_FORMATS:
            return f"format {fmt} is not decodable by tf.io.decode_image ({sorted(TF_FORMATS)})"
        with Image.open(path) as img:
            img.load()  # full decode: raises on truncated pixel data
            if min(img.size) < 1:
                return f"empty image {img.size}"
    except FileNotFoundError:
        return "file not found"
    except Exception as err:  # noqa: BLE001 -- PIL raises many types (OSError, SyntaxError...)
        return f"{type(err).__name__}: {err}"
    return None


def find_unreadable(paths: Iterable[str | os.PathLike], workers: int | None = None) -> list[tuple[str, str]]:
    """Every unreadable file in ``paths`` as ``(path, reason)``, in input order."""
    paths = [str(p) for p in paths]
    workers = workers or min(32, (os.cpu_count() or 1) * 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(check_image, paths))
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]


def drop_unreadable(
    table: pd.DataFrame, data_root: Path, workers: int | None = None
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """The table without rows whose image is unreadable, plus the ``(rel_path, reason)`` list.

    Logs each dropped file by name so nothing disappears silently.
    """
    bad = find_unreadable((Path(data_root) / p for p in table["rel_path"]), workers)
    root = str(Path(data_root))
    bad_rel = [(os.path.relpath(p, root), r) for p, r in bad]
    for rel, reason in bad_rel:
        log.warning("unreadable image %s: %s", rel, reason)
    keep = ~table["rel_path"].isin({rel for rel, _ in bad_rel})
    return table.loc[keep].reset_index(drop=True), bad_rel


def assert_readable(paths: Iterable[str | os.PathLike], workers: int | None = None) -> None:
    """Raises ``ValueError`` listing every unreadable file (for strict pre-flight checks)."""
    bad = find_unreadable(paths, workers)
    if bad:
        lines = "\n".join(f"  {p}: {r}" for p, r in bad)
        raise ValueError(f"{len(bad)} unreadable image(s):\n{lines}")
