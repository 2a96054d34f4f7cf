"""Extending committed manifests with new training images, and preparing a FairFace root.

Synthetic identity data checks the extension rules; the committed extended manifest is
checked against its base from the CSVs alone (the extra images are not needed).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ff_keras.data import readers as datasets
from ff_keras.data import fairface_layout
from ff_keras.splits import build as splits
from ff_keras.splits.grouping import GroupingParams

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "splits"
EXTENDED = REPO / "splits" / "extended"


def _rows(paths: list[str], split: list[str] | None = None) -> pd.DataFrame:
    df = pd.DataFrame({
        "rel_path": paths, "source": "fairface", "age_years": np.nan, "age_bin": "20-29",
        "gender": "Male", "race": "White", "service_test": False,
    })
    if split is not None:
        df = df.assign(group_id=np.arange(len(df)), split=split)
    return df


def _pool(n_base: int = 30, n_new: int = 6, seed: int = 3):
    rng = np.random.default_rng(seed)
    base = _rows([f"fairface/val/{k:03d}.jpg" for k in range(n_base)],
                 list(np.array(splits.SPLITS)[np.arange(n_base) % 3]))
    new = _rows([f"fairface/train/{k:03d}.jpg" for k in range(n_new)])
    table = pd.concat([base.drop(columns=["group_id", "split"]), new]).sort_values("rel_path", ignore_index=True)
    n = len(table)
    emb = {
        "key": table["rel_path"].to_numpy(),
        "descriptor": rng.normal(size=(n, 128)).astype(np.float32) * 3,
        "dhash": rng.integers(0, 256, size=(n, 32), dtype=np.uint8),
        "sha256": np.array([f"sha{k}" for k in range(n)]),
    }
    return base, table, emb


def _index(table: pd.DataFrame, path: str) -> int:
    return int(np.flatnonzero(table["rel_path"].to_numpy() == path)[0])


def test_extension_keeps_base_splits_and_excludes_linked_new_images():
    base, table, emb = _pool()
    i = {p: _index(table, p) for p in table["rel_path"]}
    val = base.loc[base["split"] == "val", "rel_path"].iloc[0]
    test = base.loc[base["split"] == "test", "rel_path"].iloc[0]
    train = base.loc[base["split"] == "train", "rel_path"].iloc[0]
    d = emb["descriptor"]
    d[i["fairface/train/000.jpg"]] = d[i[val]] + 0.001  # same person as a val image
    d[i["fairface/train/001.jpg"]] = d[i[test]] + 0.002  # chain: 002 -> 001 -> test image
    d[i["fairface/train/002.jpg"]] = d[i["fairface/train/001.jpg"]] + 0.002
    emb["sha256"][i["fairface/train/003.jpg"]] = emb["sha256"][i[train]]  # byte copy of a base image
    emb["dhash"][i["fairface/train/004.jpg"]] = emb["dhash"][i[train]]  # re-encoded copy of a train image: fine
    params = GroupingParams(identity_threshold=0.23)
    ext, dropped, info = splits.extend_manifest(base, table, emb, params)

    assert splits.check_extension(base, ext) == []
    reasons = dropped.set_index("rel_path")["reason"].to_dict()
    assert reasons == {
        "fairface/train/000.jpg": splits.DROP_LINKED, "fairface/train/001.jpg": splits.DROP_LINKED,
        "fairface/train/002.jpg": splits.DROP_LINKED, "fairface/train/003.jpg": splits.DROP_COPY,
    }
    added = ext.loc[ext["rel_path"].str.startswith("fairface/train/")].set_index("rel_path")
    assert sorted(added.index) == ["fairface/train/004.jpg", "fairface/train/005.jpg"]
    assert (added["split"] == "train").all()
    g = ext.set_index("rel_path")["group_id"]
    assert g["fairface/train/004.jpg"] == g[train]
    assert info["new_rows"] == 6 and info["new_rows_added"] == 2


def test_extension_rejects_changed_base_labels_and_check_finds_moved_rows():
    base, table, emb = _pool()
    changed = table.copy()
    changed.loc[changed["rel_path"] == "fairface/val/000.jpg", "gender"] = "Female"
    with pytest.raises(ValueError, match=r"fairface/val/000\.jpg: gender"):
        splits.extend_manifest(base, changed, emb, GroupingParams(identity_threshold=0.23))
    ext, _, _ = splits.extend_manifest(base, table, emb, GroupingParams(identity_threshold=0.23))
    moved = ext.copy()
    moved.loc[moved["split"] == "val", "split"] = "train"
    assert any("changed split" in p for p in splits.check_extension(base, moved))
    leaked = ext.copy()
    leaked.loc[leaked["rel_path"] == "fairface/train/005.jpg", "split"] = "test"
    assert any("new rows outside train" in p for p in splits.check_extension(base, leaked))


def _manifest(folder: Path) -> pd.DataFrame:
    return pd.concat([pd.read_csv(folder / f"{s}.csv", dtype={"rel_path": str, "race": str})
                      for s in ("fairface", "utkface")], ignore_index=True)


def test_committed_extended_manifest_is_consistent_with_the_base():
    base, ext = _manifest(BASE), _manifest(EXTENDED)
    assert splits.check_extension(base, ext) == []
    assert tuple(ext.columns) == splits.MANIFEST_COLUMNS
    ff_train = ext.loc[(ext["source"] == "fairface") & (ext["split"] == "train")]
    assert len(ff_train) >= 35_000
    report = json.loads((REPO / "reports" / "leakage_extended.json").read_text())
    assert report["leakage"]["ok"]
    assert report["n_usable"] == len(ext)
    excluded = [d for d in report["dropped"] if d["reason"] == splits.DROP_LINKED]
    assert not set(d["rel_path"] for d in excluded) & set(ext["rel_path"])


# === Preparing a FairFace root ===


def _official_subset(data_root: Path, n: int) -> pd.DataFrame:
    return pd.read_csv(data_root / "fairface" / "fairface_label_train_subset.csv", dtype=str,
                       keep_default_na=False).sort_values("file").head(n)


def _image_folder(tmp_path: Path, data_root: Path, rows: pd.DataFrame) -> Path:
    """A folder of the rows' real images named ``<n>.jpg``, as a FairFace download has them."""
    images = tmp_path / "images"
    images.mkdir()
    for f in rows["file"]:
        shutil.copy(data_root / "fairface" / f, images / Path(f).name)
    return images


def test_prepare_builds_a_readable_root_and_checks_the_reference(tmp_path, data_root):
    rows = _official_subset(data_root, 6)
    images = _image_folder(tmp_path, data_root, rows)
    extra = pd.DataFrame([{"file": "train/999999.jpg", "age": "3-9", "gender": "Male", "race": "Black",
                           "service_test": "False"}])
    pd.concat([rows, extra]).to_csv(tmp_path / "labels.csv", index=False)
    ref = tmp_path / "ref"
    (ref / "train").mkdir(parents=True)
    rows.head(3).to_csv(ref / "fairface_label_train_subset.csv", index=False)
    for f in rows["file"].head(3):
        shutil.copy(data_root / "fairface" / f, ref / f)
    out = tmp_path / "root"
    rep = fairface_layout.prepare_fairface_root(images, tmp_path / "labels.csv", out, reference_fairface=ref)
    assert rep.errors == []
    assert (rep.rows_written, rep.rows_without_image, rep.reference_rows_checked) == (6, 1, 3)
    (out / "fairface" / "val").mkdir()
    pd.DataFrame(columns=fairface_layout.OFFICIAL_COLUMNS).to_csv(out / "fairface" / "fairface_label_val.csv",
                                                                 index=False)
    table, _ = datasets.read_fairface(out)
    assert sorted(table["rel_path"]) == sorted("fairface/" + rows["file"])


def test_prepare_names_every_bad_file(tmp_path, data_root):
    rows = _official_subset(data_root, 4)
    images = _image_folder(tmp_path, data_root, rows)
    first, second = (Path(f).name for f in rows["file"].iloc[:2])
    (images / first).write_bytes((images / first).read_bytes()[:300])  # truncated JPEG
    shutil.copy(images / second, images / "123456789.jpg")  # no label row
    wrong = rows.copy()
    wrong.loc[wrong.index[2], "race"] = "Black" if wrong.iloc[2]["race"] != "Black" else "White"
    wrong.to_csv(tmp_path / "labels.csv", index=False)
    rep = fairface_layout.prepare_fairface_root(images, tmp_path / "labels.csv", tmp_path / "root",
                                                reference_fairface=data_root / "fairface")
    text = "\n".join(rep.errors)
    assert f"undecodable image train/{first}" in text
    assert "image without a label row: train/123456789.jpg" in text
    assert f"label disagrees with the reference root for {wrong.iloc[2]['file']}: race" in text
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("bad, message", [
    ("file,age,gender,race,service_test\ntrain/1.jpg,20-29,Male,Martian,False\n", r"labels\.csv:2: race 'Martian'"),
    ("file,age,gender,race,service_test\nval/1.jpg,20-29,Male,White,False\n", r"labels\.csv:2: file 'val/1\.jpg'"),
    ("file,age,gender,race,service_test\ntrain/1.jpg,20-29,Male,White,TRUE\n", r"service_test 'TRUE'"),
    ("file,age,race\ntrain/1.jpg,20-29,White\n", r"lacks required columns \[.gender., .service_test.\]"),
])
def test_label_csv_errors_name_the_row(tmp_path, bad, message):
    (tmp_path / "labels.csv").write_text(bad)
    with pytest.raises(ValueError, match=message):
        fairface_layout.read_label_csv(tmp_path / "labels.csv", "train")


def test_grouping_a_subset_of_candidate_pairs_equals_grouping_from_scratch():
    from ff_keras.splits import grouping

    rng = np.random.default_rng(7)
    base = rng.normal(size=(40, 128)).astype(np.float32)
    x = np.concatenate([base, base[:20] + rng.normal(scale=0.02, size=(20, 128)).astype(np.float32)])
    dh = rng.integers(0, 256, size=(60, 32), dtype=np.uint8)
    dh[50] = dh[3]
    sha = np.array([f"s{k}" for k in range(60)])
    params = GroupingParams(identity_threshold=0.23, mutual_threshold=0.6)
    cands = grouping.candidate_pairs(x, dh, sha, params)
    rows = np.sort(rng.choice(60, size=45, replace=False))
    got, _ = grouping.group_pairs(cands.subset(rows), params)
    want, _ = grouping.group_images(x[rows], dh[rows], sha[rows], params)
    np.testing.assert_array_equal(got, want)
