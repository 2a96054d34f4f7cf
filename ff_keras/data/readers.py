"""Readers that turn FairFace and UTKFace folders into one canonical table.

Canonical columns (one row per usable image):
    rel_path     path relative to the data root, e.g. ``fairface/val/1.jpg``
    source       ``fairface`` | ``utkface``
    age_years    float, NaN where unknown (FairFace only has bins)
    age_bin      one of labels.AGE_BINS
    gender       one of labels.GENDERS
    race         in the source's own label space (labels.RACES or labels.UTK_RACES)
    service_test FairFace's balanced-subset flag (False for UTKFace)
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ff_keras import labels
from ff_keras.paths import repo_path

log = logging.getLogger(__name__)

DATA_ROOT_ENV = "FF_DATA_ROOT"
CANONICAL_COLUMNS = ("rel_path", "source", "age_years", "age_bin", "gender", "race", "service_test")
# Training labels: FairFace's full official CSV when the root has it, else the shared subset's.
FAIRFACE_TRAIN_CSVS = ("fairface_label_train.csv", "fairface_label_train_subset.csv")
FAIRFACE_VAL_CSV = "fairface_label_val.csv"
FAIRFACE_REQUIRED = ("file", "age", "gender", "race")
# age_gender_race_datetime.jpg.chip.jpg; anything else is reported and skipped.
UTK_NAME = re.compile(r"^(?P<age>\d{1,3})_(?P<gender>[01])_(?P<race>[0-4])_(?P<stamp>\d+)\.jpg\.chip\.jpg$")


def resolve_data_root(configured: str | os.PathLike | None = None) -> Path:
    """Data root: $FF_DATA_ROOT, else the configured path, else ``../shared/data``.

    A relative configured path is taken relative to the repository root, so scripts work
    from any working directory.
    """
    env = os.environ.get(DATA_ROOT_ENV)
    return repo_path(env or configured or "../shared/data").resolve()


@dataclass
class ReadReport:
    """What a reader skipped and why, so nothing is dropped silently."""

    source: str
    n_rows: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, item: str) -> None:
        self.skipped.setdefault(reason, []).append(item)

    @property
    def n_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def summary(self) -> str:
        parts = [f"{self.source}: {self.n_rows} usable rows"]
        for reason, items in self.skipped.items():
            shown = ", ".join(items[:5]) + (" ..." if len(items) > 5 else "")
            parts.append(f"skipped {len(items)} ({reason}): {shown}")
        return "; ".join(parts)


def read_label_table(csv: Path, required: Sequence[str]) -> pd.DataFrame:
    """A label CSV as strings (empty cells stay ""); a malformed file or a missing column
    raises ``ValueError`` naming the file."""
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"malformed CSV {csv}: {err}") from err
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{csv} lacks required columns {missing}; found {list(df.columns)}")
    return df


def fairface_csvs(folder: Path) -> tuple[str, str]:
    """The (training, validation) label CSV names present in a ``fairface`` folder."""
    train = next((n for n in FAIRFACE_TRAIN_CSVS if (folder / n).exists()), FAIRFACE_TRAIN_CSVS[-1])
    return train, FAIRFACE_VAL_CSV


def read_fairface(root: Path, csv_names: tuple[str, ...] | None = None) -> tuple[pd.DataFrame, ReadReport]:
    """Reads FairFace's label CSVs (official layout) and merges their pools.

    ``file`` is relative to the ``fairface`` folder. Missing columns, unknown labels or a
    missing CSV raise; rows whose image file is absent are reported and skipped.
    """
    folder = Path(root) / "fairface"
    csv_names = csv_names or fairface_csvs(folder)
    report = ReadReport("fairface")
    frames = []
    for name in csv_names:
        csv = folder / name
        if not csv.exists():
            raise FileNotFoundError(f"FairFace label file not found: {csv}")
        df = read_label_table(csv, FAIRFACE_REQUIRED)
        df["_row"] = [f"{csv.name}:{i + 2}" for i in range(len(df))]  # +2: header, 1-based
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    for col, allowed in (("age", labels.AGE_BINS), ("gender", labels.GENDERS), ("race", labels.RACES)):
        bad = df.loc[~df[col].isin(allowed)]
        if len(bad):
            r = bad.iloc[0]
            raise ValueError(
                f"unknown FairFace {col} {r[col]!r} at {r['_row']} ({r['file']}); expected one of {list(allowed)}"
            )
    exists = df["file"].map(lambda f: (folder / f).is_file())
    for f in df.loc[~exists, "file"]:
        report.skip("image file missing", f)
    df = df.loc[exists]
    if df["file"].duplicated().any():
        raise ValueError(f"duplicate FairFace file entries, e.g. {df.loc[df['file'].duplicated(), 'file'].iloc[0]}")
    service = df["service_test"].str.lower().eq("true") if "service_test" in df else False
    out = pd.DataFrame({
        "rel_path": "fairface/" + df["file"],
        "source": "fairface",
        "age_years": float("nan"),
        "age_bin": df["age"],
        "gender": df["gender"],
        "race": df["race"],
        "service_test": service,
    })
    report.n_rows = len(out)
    return out.reset_index(drop=True), report


def parse_utk_name(name: str) -> dict | None:
    """Labels from a UTKFace file name, or None if the name is malformed (never guessed)."""
    m = UTK_NAME.match(name)
    if not m:
        return None
    age = int(m["age"])
    return {
        "age_years": float(age),
        "age_bin": labels.age_to_bin(age),
        "gender": labels.UTK_GENDERS[int(m["gender"])],
        "race": labels.UTK_RACES[int(m["race"])],
    }


def read_utkface(root: Path) -> tuple[pd.DataFrame, ReadReport]:
    """Parses the UTKFace folder's ``age_gender_race_datetime.jpg.chip.jpg`` names."""
    folder = Path(root) / "utkface"
    if not folder.is_dir():
        raise FileNotFoundError(f"UTKFace folder not found: {folder}")
    report = ReadReport("utkface")
    rows = []
    for name in sorted(os.listdir(folder)):
        parsed = parse_utk_name(name)
        if parsed is None:
            report.skip("malformed file name", name)
            continue
        rows.append({"rel_path": f"utkface/{name}", "source": "utkface", **parsed, "service_test": False})
    out = pd.DataFrame(rows, columns=list(CANONICAL_COLUMNS))
    report.n_rows = len(out)
    return out, report


READERS = {"fairface": read_fairface, "utkface": read_utkface}


def read_sources(root: Path, sources: tuple[str, ...] = ("fairface", "utkface")) -> pd.DataFrame:
    """Canonical table over the requested sources; logs each reader's skip report."""
    frames = []
    for source in sources:
        if source not in READERS:
            raise ValueError(f"unknown data source {source!r}; known: {sorted(READERS)}")
        df, report = READERS[source](Path(root))
        log.info(report.summary())
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
