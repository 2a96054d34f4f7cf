"""Identity-disjoint, stratified train/val/test splits and their committed manifests.

Manifest CSV columns: the canonical table's (see ``datasets``) plus ``group_id`` (images
that must stay together: same identity or duplicate photo) and ``split``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = (
    "rel_path", "source", "age_years", "age_bin", "gender", "race", "service_test", "group_id", "split",
)


def manifest_path(manifests_dir: str | Path, source: str) -> Path:
    d = Path(manifests_dir)
    if not d.is_absolute():
        d = Path(__file__).resolve().parents[1] / d
    return d / f"{source}.csv"


def load_split(manifests_dir: str | Path, sources: list[str] | tuple[str, ...], split: str) -> pd.DataFrame:
    """Rows of ``split`` from the committed manifests of ``sources``, in manifest order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    frames = []
    for source in sources:
        path = manifest_path(manifests_dir, source)
        if not path.exists():
            raise FileNotFoundError(f"split manifest not found: {path} (run scripts/make_splits.py)")
        df = pd.read_csv(path, keep_default_na=True, dtype={"rel_path": str, "race": str, "gender": str, "age_bin": str})
        missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"{path} lacks columns {missing}")
        frames.append(df.loc[df["split"] == split])
    return pd.concat(frames, ignore_index=True)
