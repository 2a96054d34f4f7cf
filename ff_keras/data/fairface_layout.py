"""Builds a FairFace data root in the official layout from an image folder and the label CSV.

FairFace's own download unpacks to ``train/``, ``val/`` plus ``fairface_label_train.csv`` and
``fairface_label_val.csv``; the readers (``ff_keras.data.readers``) expect exactly that under
``<data root>/fairface/``. Images can come from elsewhere (a partial mirror, a copy on
another disk), so preparing a root checks every piece before anything trains on it:

* every label row is well formed (file name ``train/<n>.jpg``, labels from the schema, no
  duplicate file);
* every image in the folder has a label row, and every image decodes (by file name);
* rows without an image are counted (a partial mirror is allowed, and reported);
* rows already present in a reference root (the shared 10,000-image training subset) carry
  the same labels and byte-identical images.

The prepared root links to the images instead of copying them (``link="symlink"``), so
preparing costs no disk space.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from ff_keras import labels
from ff_keras.data.image_check import file_sha256, find_unreadable
from ff_keras.data.readers import read_label_table

log = logging.getLogger(__name__)

OFFICIAL_COLUMNS = ("file", "age", "gender", "race", "service_test")
TRAIN_CSV = "fairface_label_train.csv"
VAL_CSV = "fairface_label_val.csv"
SUBSET_CSV = "fairface_label_train_subset.csv"
_FILE_NAME = re.compile(r"^(train|val)/\d+\.jpg$")
_LABEL_SPACES = {"age": labels.AGE_BINS, "gender": labels.GENDERS, "race": labels.RACES}
_SERVICE_TEST = {"True", "False"}


@dataclass
class PrepareReport:
    """What preparing a root found; ``errors`` non-empty means the root must not be used."""

    images_found: int = 0
    label_rows: int = 0
    rows_written: int = 0
    rows_without_image: int = 0
    images_without_label: list[str] = field(default_factory=list)
    undecodable: list[tuple[str, str]] = field(default_factory=list)
    reference_rows_checked: int = 0
    reference_label_mismatches: list[tuple[str, str]] = field(default_factory=list)
    reference_image_mismatches: list[str] = field(default_factory=list)
    reference_rows_missing: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        out = [f"image without a label row: {f}" for f in self.images_without_label]
        out += [f"undecodable image {f}: {why}" for f, why in self.undecodable]
        out += [f"label disagrees with the reference root for {f}: {what}"
                for f, what in self.reference_label_mismatches]
        out += [f"image differs from the reference root's copy: {f}" for f in self.reference_image_mismatches]
        out += [f"reference row has no image in the new root: {f}" for f in self.reference_rows_missing]
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "errors": len(self.errors)}

    def summary(self) -> str:
        return (
            f"{self.images_found} images, {self.label_rows} label rows -> {self.rows_written} rows written; "
            f"{self.rows_without_image} label rows without an image (allowed); "
            f"{len(self.images_without_label)} images without a label row, {len(self.undecodable)} undecodable; "
            f"reference rows checked {self.reference_rows_checked}: "
            f"{len(self.reference_label_mismatches)} label and "
            f"{len(self.reference_image_mismatches)} image mismatches, "
            f"{len(self.reference_rows_missing)} missing"
        )


def read_label_csv(path: Path, split: str) -> pd.DataFrame:
    """The official label CSV, validated; raises ``ValueError`` naming the first bad row."""
    df = read_label_table(path, OFFICIAL_COLUMNS)[list(OFFICIAL_COLUMNS)]
    line = pd.Series(range(2, len(df) + 2), index=df.index)  # 1-based, after the header
    checks = [("file", df["file"].str.match(_FILE_NAME) & df["file"].str.startswith(f"{split}/"),
               f"'{split}/<number>.jpg'")]
    checks += [(col, df[col].isin(allowed), str(list(allowed))) for col, allowed in _LABEL_SPACES.items()]
    checks.append(("service_test", df["service_test"].isin(_SERVICE_TEST), "True or False"))
    for col, ok, expected in checks:
        if not ok.all():
            i = ok.idxmin()
            raise ValueError(f"{path}:{line[i]}: {col} {df.at[i, col]!r} for {df.at[i, 'file']!r}; expected {expected}")
    dup = df["file"].duplicated()
    if dup.any():
        raise ValueError(f"{path}: duplicate rows for {df.loc[dup, 'file'].iloc[0]!r}")
    return df


def _place(src: Path, dst: Path, link: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if link == "symlink":
        dst.symlink_to(src.resolve())
    elif link == "hardlink":
        os.link(src, dst)
    elif link == "copy":
        shutil.copy2(src, dst)
    else:
        raise ValueError(f"link must be symlink, hardlink or copy, got {link!r}")


def check_reference(official: pd.DataFrame, image_dir: Path, reference_fairface: Path,
                    report: PrepareReport) -> None:
    """Compares the reference root's training rows (labels and image bytes) with the official ones."""
    ref_csv = next((reference_fairface / n for n in (TRAIN_CSV, SUBSET_CSV) if (reference_fairface / n).exists()), None)
    if ref_csv is None:
        raise FileNotFoundError(f"no {TRAIN_CSV} or {SUBSET_CSV} in the reference folder {reference_fairface}")
    ref = read_label_csv(ref_csv, "train").set_index("file")
    off = official.set_index("file")
    report.reference_rows_checked = len(ref)
    for f, row in ref.iterrows():
        if f not in off.index:
            report.reference_label_mismatches.append((f, "no official label row"))
            continue
        diff = [f"{c} {row[c]!r} vs official {off.at[f, c]!r}" for c in OFFICIAL_COLUMNS[1:] if row[c] != off.at[f, c]]
        if diff:
            report.reference_label_mismatches.append((f, "; ".join(diff)))
        ours = image_dir / Path(f).name
        if not ours.is_file():
            report.reference_rows_missing.append(f)
        elif file_sha256(ours) != file_sha256(reference_fairface / f):
            report.reference_image_mismatches.append(f)


def prepare_fairface_root(
    image_dir: Path,
    labels_csv: Path,
    out_root: Path,
    val_dir: Path | None = None,
    val_csv: Path | None = None,
    reference_fairface: Path | None = None,
    utkface_dir: Path | None = None,
    link: str = "symlink",
    workers: int | None = None,
) -> PrepareReport:
    """Checks ``image_dir`` against the official ``labels_csv`` and writes ``out_root/fairface``.

    Args:
        image_dir: folder of FairFace training images named ``<n>.jpg``.
        labels_csv: FairFace's official ``fairface_label_train.csv``.
        out_root: data root to create (``fairface/`` and optionally ``utkface/`` inside).
        val_dir, val_csv: FairFace's validation images and labels, linked in unchanged.
        reference_fairface: an existing ``fairface/`` folder whose training rows must agree.
        utkface_dir: UTKFace folder to link in as ``utkface/``.
        link: how images enter the root: ``symlink`` | ``hardlink`` | ``copy``.

    Returns:
        the report; when ``report.errors`` is non-empty nothing is written.
    """
    image_dir, out_root = Path(image_dir), Path(out_root)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    official = read_label_csv(Path(labels_csv), "train")
    report = PrepareReport(label_rows=len(official))
    images = sorted(p.name for p in image_dir.iterdir() if p.is_file())
    report.images_found = len(images)
    labelled = set(official["file"].str.removeprefix("train/"))
    report.images_without_label = [f"train/{n}" for n in images if n not in labelled]
    present = official["file"].str.removeprefix("train/").isin(set(images))
    report.rows_without_image = int((~present).sum())
    log.info("decoding %d images to check them ...", len(images))
    bad = find_unreadable([image_dir / n for n in images], workers)
    report.undecodable = [(f"train/{Path(p).name}", why) for p, why in bad]
    if reference_fairface is not None:
        check_reference(official, image_dir, Path(reference_fairface), report)
    if report.errors:
        return report

    rows = official.loc[present & ~official["file"].isin({f for f, _ in report.undecodable})]
    fairface = out_root / "fairface"
    fairface.mkdir(parents=True, exist_ok=True)
    for f in rows["file"]:
        _place(image_dir / Path(f).name, fairface / f, link)
    rows.to_csv(fairface / TRAIN_CSV, index=False, lineterminator="\n")
    report.rows_written = len(rows)
    if val_dir is not None:
        _place_folder(Path(val_dir), fairface / "val")
    if val_csv is not None:
        read_label_csv(Path(val_csv), "val")
        shutil.copyfile(val_csv, fairface / VAL_CSV)
    if utkface_dir is not None:
        _place_folder(Path(utkface_dir), out_root / "utkface")
    return report


def _place_folder(src: Path, dst: Path) -> None:
    """Links a whole folder into the root (one symlink, not one per file)."""
    if not src.is_dir():
        raise FileNotFoundError(f"folder not found: {src}")
    if dst.is_symlink():
        dst.unlink()
    elif dst.exists():
        raise FileExistsError(f"{dst} exists and is not a link; remove it first")
    dst.symlink_to(src.resolve(), target_is_directory=True)
