"""What to annotate: folders, image files, text/CSV lists of paths, fsspec URLs.

Inputs come out one at a time in a deterministic order (folders walked with each directory's
entries sorted), so a resumed run sees the same sequence as the first one and a collection of
millions of files is never held as one list. Files that are no image are passed on as
they are: the run records them as unreadable rows with the reason.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

# Inputs with these suffixes are lists of paths, one per line (CSV: a path column).
LIST_SUFFIXES = (".txt", ".lst", ".csv", ".tsv")
# CSV columns taken as the path, in order of preference; otherwise the first column.
PATH_COLUMNS = ("path", "file", "rel_path", "image", "source")


def is_url(item: str) -> bool:
    return "://" in item and not item.startswith("file://")


def iter_inputs(items: Iterable[str | os.PathLike]) -> Iterator[str]:
    """Every input path or URL, in a deterministic order.

    Raises:
        ValueError: for a URL when fsspec (the optional dependency) is not installed, or an
            empty list file or CSV without rows, naming it.
    """
    for item in map(str, items):
        if item.startswith("file://"):
            item = item[len("file://"):]
        if is_url(item):
            yield from _iter_url(item)
        elif os.path.isdir(item):
            yield from _walk(item)
        elif item.lower().endswith(LIST_SUFFIXES) and os.path.isfile(item):
            yield from _read_list(item, Path(item).read_text(encoding="utf-8").splitlines(), Path(item).parent)
        else:
            yield item  # a missing file becomes an "unreadable" row naming it


def _walk(folder: str) -> Iterator[str]:
    """Files under ``folder``, depth first, each directory's entries sorted by name, hidden ones left out."""
    with os.scandir(folder) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    for e in entries:
        if e.is_dir():
            yield from _walk(e.path)
        elif e.is_file():
            yield e.path


def _read_list(name: str, lines: list[str], base: Path | None) -> Iterator[str]:
    """Paths in a list; relative local paths are taken relative to the list's folder."""
    if name.lower().endswith((".csv", ".tsv")):
        rows = list(csv.reader(lines, delimiter="\t" if name.lower().endswith(".tsv") else ","))
        if len(rows) < 2:
            raise ValueError(f"{name}: a CSV list needs a header row and at least one path")
        header = [h.strip().lower() for h in rows[0]]
        col = next((header.index(c) for c in PATH_COLUMNS if c in header), 0)
        paths = [r[col].strip() for r in rows[1:] if len(r) > col and r[col].strip()]
    else:
        paths = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    for p in paths:
        if base is not None and not is_url(p) and not os.path.isabs(p):
            p = str(base / p)
        yield p


def _iter_url(url: str) -> Iterator[str]:
    try:
        import fsspec
    except ImportError as err:
        raise ValueError(f"{url}: reading URLs needs the optional dependency fsspec (pip install fsspec s3fs)") from err
    fs, path = fsspec.core.url_to_fs(url)
    protocol = url.split("://", 1)[0]
    if fs.isdir(path):
        for p in sorted(fs.find(path)):
            if not Path(p).name.startswith("."):
                yield f"{protocol}://{p}"
    elif url.lower().endswith(LIST_SUFFIXES):
        with fsspec.open(url, "rt", encoding="utf-8") as f:
            yield from _read_list(url, f.read().splitlines(), None)
    else:
        yield url


def read_bytes(source: str) -> bytes | str:
    """What ``decode_image`` takes for ``source``: the local path itself, or a URL's bytes."""
    if not is_url(source):
        return source
    import fsspec

    with fsspec.open(source, "rb") as f:
        return f.read()


def chunked(it: Iterable[str], size: int) -> Iterator[list[str]]:
    """Consecutive lists of ``size`` inputs (the last may be shorter): the run's parts."""
    it = iter(it)
    while chunk := list(islice(it, size)):
        yield chunk
