"""Reads an offline W&B run back: offline mode writes no summary JSON, so this parses the
``.wandb`` transaction log itself (LevelDB log framing around ``Record`` protos)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

_BLOCK = 32768  # LevelDB log block size used by W&B's transaction log
_HEADER = 7  # ":W&B" + magic (2 bytes) + version (1 byte); each record header is also 7 bytes
_FULL, _LAST = 1, 4


def find_wandb_file(folder: str | Path) -> Path:
    """The newest ``run-*.wandb`` under ``folder`` (searched recursively)."""
    found = sorted(Path(folder).rglob("run-*.wandb"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no run-*.wandb file under {folder}")
    return found[-1]


def read_wandb_records(path: str | Path) -> list[Any]:
    """Parses a ``.wandb`` transaction log into ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log (header {data[:4]!r})")
    records, pos, chunk = [], _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        pos += _HEADER
        if length == 0 and kind == 0:
            break
        chunk += data[pos : pos + length]
        pos += length
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def read_wandb_history(path: str | Path, wait_s: float = 30.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(run info: config, group, tags; history rows as ``{key: value}``) of an offline run."""
    info: dict[str, Any] = {"config": {}, "group": None, "tags": []}
    rows = []
    # wandb-core flushes the offline log asynchronously after run.finish(); the final
    # record of a complete log is "exit", so wait (bounded) until it is there.
    deadline = time.monotonic() + wait_s
    records = read_wandb_records(path)
    while (not records or records[-1].WhichOneof("record_type") != "exit") and time.monotonic() < deadline:
        time.sleep(0.2)
        records = read_wandb_records(path)
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            # A run may be written more than once (later updates can omit group and tags).
            info["group"] = record.run.run_group or info["group"]
            info["tags"] = list(record.run.tags) or info["tags"]
            info["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            info["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
    return info, rows
