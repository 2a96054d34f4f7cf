"""Output folder layout and the commit protocol that makes a killed run resumable and exact.

    DIR/_run.json         the run's settings; a resume with other settings is refused
    DIR/part-000000.parquet, ...   part i = rows of inputs [i * part_size, (i + 1) * part_size)
    DIR/_manifest.jsonl   one line per committed part

A part counts only once its manifest line is written. It is written to a temporary name,
fsynced and renamed, and only then is its line appended (and fsynced). A kill at any point
leaves either a committed part or debris: on resume, part files without a line, temporary
files and a torn last line are discarded and those inputs redone. Because inputs come in a
deterministic order and a part's rows depend only on its inputs, the resumed output equals an
uninterrupted one row for row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# Leading underscores: pyarrow/pandas skip such files, so ``pd.read_parquet(DIR)`` reads the parts only.
RUN_FILE = "_run.json"
MANIFEST = "_manifest.jsonl"
TMP_SUFFIX = ".tmp"


def part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def start_run(out: str | Path, settings: Mapping) -> dict[int, dict]:
    """Creates or reopens ``out``; returns the committed parts {index: manifest entry}.

    Raises:
        ValueError: when ``out`` holds a run with different settings (naming them), so two
            different runs never mix in one folder.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_file = out / RUN_FILE
    settings = json.loads(json.dumps(dict(settings)))  # tuples -> lists, as read back
    if run_file.exists():
        before = json.loads(run_file.read_text())
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            diff = "; ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in changed)
            raise ValueError(f"{out} holds a run with other settings ({diff}); use a new --out folder")
    else:
        tmp = run_file.with_name(RUN_FILE + TMP_SUFFIX)
        tmp.write_text(json.dumps(settings, indent=2))
        os.replace(tmp, run_file)
    committed = read_manifest(out, repair=True)
    for p in out.iterdir():  # debris of a killed run
        if p.name.endswith(TMP_SUFFIX) or (p.name.startswith("part-") and p.name not in
                                           {e["file"] for e in committed.values()}):
            p.unlink()
    return committed


def read_manifest(out: str | Path, repair: bool = False) -> dict[int, dict]:
    """Committed parts {index: entry}. A torn last line (killed mid-append) is not a commit;
    ``repair`` cuts it off so the next append starts on a fresh line."""
    path = Path(out) / MANIFEST
    if not path.exists():
        return {}
    data = path.read_bytes()
    good = data[: data.rfind(b"\n") + 1]
    if repair and len(good) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(good))
    entries = {}
    for line in good.decode().splitlines():
        entry = json.loads(line)
        entries[entry["part"]] = entry
    return entries


def commit_part(out: str | Path, index: int, table: pa.Table, inputs: int) -> dict:
    """Writes part ``index`` and then its manifest line (see module docstring); returns the entry."""
    out = Path(out)
    final = out / part_name(index)
    tmp = final.with_name(final.name + TMP_SUFFIX)
    with open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(out)
    status = table.column("status").to_pylist() if table.num_rows else []
    entry = {"part": index, "file": final.name, "inputs": inputs, "rows": table.num_rows,
             "faces": status.count("face"), "unreadable": status.count("unreadable"),
             "no_face": status.count("no_face")}
    with open(out / MANIFEST, "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return entry


def read_output(out: str | Path, columns: list[str] | None = None) -> pa.Table:
    """The committed rows of a run, in input order (parts by index).

    Raises:
        FileNotFoundError: when ``out`` has no committed part.
    """
    entries = read_manifest(out)
    if not entries:
        raise FileNotFoundError(f"{out}: no committed parts ({MANIFEST} missing or empty); run annotate first")
    tables = [pq.read_table(Path(out) / entries[i]["file"], columns=columns) for i in sorted(entries)]
    return pa.concat_tables(tables)
