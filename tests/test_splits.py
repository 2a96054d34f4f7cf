"""Split manifests, grouping, duplicate policy and leakage checks.

The committed-manifest tests read CSVs only (no dlib); the rest use small synthetic data.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import pdist, squareform

from ff_keras.data import readers as datasets
from ff_keras.splits import grouping, identity, leakage, build as splits
from ff_keras.splits.grouping import GroupingParams

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "splits"
REPORT = REPO / "reports" / "leakage.json"
TOLERANCE = 0.01  # per-source split share vs 70/15/15


# === Committed manifests ===


@pytest.fixture(scope="module")
def manifest() -> pd.DataFrame:
    return pd.concat([splits.load_split(MANIFESTS, ["fairface", "utkface"], s) for s in splits.SPLITS],
                     ignore_index=True)


@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads(REPORT.read_text())


def test_manifest_files_sorted_with_contract_columns():
    for source in ("fairface", "utkface"):
        df = pd.read_csv(splits.manifest_path(MANIFESTS, source), dtype={"rel_path": str})
        assert tuple(df.columns) == splits.MANIFEST_COLUMNS
        assert df["rel_path"].is_monotonic_increasing and (df["source"] == source).all()
        assert df["rel_path"].str.startswith(source + "/").all()


def test_splits_disjoint_and_groups_never_span(manifest):
    assert not manifest["rel_path"].duplicated().any()
    assert set(manifest["split"]) == set(splits.SPLITS)
    assert (manifest.groupby("group_id")["split"].nunique() == 1).all()


def test_every_usable_image_exactly_once(manifest, report, data_root):
    (ff, ff_rep), (utk, utk_rep) = datasets.read_fairface(data_root), datasets.read_utkface(data_root)
    table = pd.concat([ff, utk])
    interim = [d["rel_path"] for d in report["dropped"] if d["reason"].startswith("INTERIM")]
    assert not interim, f"{len(interim)} images missing: manifests were made with --partial"
    policy = {d["rel_path"] for d in report["dropped"] if d["reason"] in (splits.DROP_CONFLICT, splits.DROP_COPY)}
    reader_skipped = {d["rel_path"] for d in report["dropped"]} - policy
    listed = set(manifest["rel_path"])
    assert not listed & policy
    assert listed | policy == set(table["rel_path"])
    assert reader_skipped == {f"{r.source}/{item}" for r in (ff_rep, utk_rep) for items in r.skipped.values()
                              for item in items}
    # The manifest carries the readers' labels, not stale ones.
    merged = manifest.merge(table, on="rel_path", suffixes=("", "_reader"))
    for col in ("age_bin", "gender", "race", "source"):
        assert (merged[col] == merged[f"{col}_reader"]).all(), col


def test_proportions_within_tolerance(manifest):
    for source, df in manifest.groupby("source"):
        share = df["split"].value_counts(normalize=True)
        for s, f in zip(splits.SPLITS, splits.DEFAULT_FRACTIONS):
            assert abs(share[s] - f) < TOLERANCE, (source, s, share[s])


def test_files_exist(manifest, data_root):
    missing = [p for p in manifest["rel_path"] if not (data_root / p).is_file()]
    assert not missing, missing[:5]


def test_report_matches_manifests(manifest, report):
    leak = report["leakage"]
    assert leak["ok"] is True
    for kind in ("identity_pairs", "dhash_near_duplicates", "exact_duplicates"):
        assert set(leak["cross_split"][kind].values()) == {0}, kind
    sizes = manifest.groupby(["split", "source"]).size()
    assert {(s, src): n for s, v in leak["split_sizes"].items() for src, n in v.items()} == sizes.to_dict()
    assert leak["groups"]["largest"] == manifest.groupby("group_id").size().max()


# === Grouping on synthetic descriptors ===


def test_pair_search_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 16)).astype(np.float32) * 0.1
    i, j, d = grouping.descriptor_pairs(x, 0.4, block=32)
    full = squareform(pdist(x.astype(np.float64)))
    ref = np.argwhere(np.triu(full < 0.4, 1))
    np.testing.assert_array_equal(np.stack([i, j], 1), ref)
    np.testing.assert_allclose(d, full[ref[:, 0], ref[:, 1]], atol=1e-5)
    bits = rng.integers(0, 2, size=(90, 64)).astype(np.uint8)
    bits[5] = bits[7] ^ (rng.random(64) < 0.05)  # a near copy
    hi, hj, h = grouping.hamming_pairs(np.packbits(bits, axis=1), 20, block=16)
    ham = squareform(pdist(bits, "hamming")) * 64
    ref = np.argwhere(np.triu(ham <= 20, 1))
    np.testing.assert_array_equal(np.stack([hi, hj], 1), ref)
    np.testing.assert_array_equal(h, np.rint(ham[ref[:, 0], ref[:, 1]]))


def _dense_cluster(n: int, spread: float, seed: int = 0) -> np.ndarray:
    """``n`` look-alikes: points on a small sphere, pairwise distance ~ spread * sqrt(2)."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, 128))
    return (v / np.linalg.norm(v, axis=1, keepdims=True) * spread).astype(np.float32)


def _no_hash_links(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 32), dtype=np.uint8), np.array([f"h{k}" for k in range(n)])


def test_grouping_resists_chaining():
    params = GroupingParams(identity_threshold=0.30, mutual_threshold=0.45, mutual_k=1, dhash_bits=22)
    x = _dense_cluster(60, spread=0.28)  # pairwise ~0.40: all under mutual_threshold, none under t
    dh, sha = _no_hash_links(len(x))
    i, j, _ = grouping.descriptor_pairs(x, params.mutual_threshold)
    plain = np.bincount(grouping.connected_groups(len(x), [(i, j)]))
    assert plain.max() == len(x)  # a plain threshold at 0.45 chains everything
    groups, info = grouping.group_images(x, dh, sha, params)
    assert np.bincount(groups).max() <= 2 and info["edges"]["identity"] == 0 and info["edges"]["mutual_nn"] > 0


def test_threshold_lowered_until_groups_small():
    x = _dense_cluster(40, spread=0.2)  # pairwise ~0.28: one chain at t = 0.30
    dh, sha = _no_hash_links(len(x))
    groups, info = grouping.group_images(x, dh, sha, GroupingParams(max_group=5))
    t, tried = info["identity_threshold"], info["largest_by_threshold"]
    assert tried["0.30"] == len(x) and t < 0.30
    assert np.bincount(groups).max() == info["largest"] == tried[f"{t:.2f}"] <= 5
    assert tried[f"{t + 0.01:.2f}"] > 5  # the largest threshold that keeps groups small


def test_grouping_joins_identity_and_duplicates():
    params = GroupingParams()
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 128)).astype(np.float32)  # far apart: ~16 units
    x[1] = x[0] + 0.01  # same person
    dh, sha = _no_hash_links(6)
    sha[3] = sha[2]  # byte-identical files
    bits = np.unpackbits(dh, axis=1)
    bits[5, :20] = bits[4, :20] ^ 1  # 20 bits away: re-encoded copy
    bits[5, 20:] = bits[4, 20:]
    dh = np.packbits(bits, axis=1)
    groups, info = grouping.group_images(x, dh, sha, params)
    assert groups.tolist() == [0, 0, 1, 1, 2, 2]
    assert info["edges"] == {"exact": 1, "dhash": 1, "identity": 1, "mutual_nn": 0}
    assert info["identity_threshold"] == grouping.THRESHOLD_CANDIDATES[0]


def test_mutual_knn_mask():
    # 0-1 are each other's nearest; 2's nearest is 1 but 1's nearest is 0.
    i, j, d = np.array([0, 1, 0]), np.array([1, 2, 2]), np.array([0.1, 0.2, 0.3])
    assert grouping.mutual_knn_mask(3, i, j, d, 1).tolist() == [True, False, False]
    assert grouping.mutual_knn_mask(3, i, j, d, 2).tolist() == [True, True, True]


def test_repair_keys_restores_truncated_cache_keys():
    paths = ["fairface/val/1000.jpg", "fairface/val/10000.jpg", "fairface/val/10001.jpg", "utkface/1_0_0_2.jpg"]
    cut = np.array(["fairface/val/1000.jp", "fairface/val/10000.", "fairface/val/10001.", "utkface/other.jpg"])
    got = identity.repair_keys(cut, paths)
    assert got.tolist() == paths[:3] + ["utkface/other.jpg"]


# === Exact-duplicate policy and split assignment ===


def test_conflicting_duplicates_dropped_agreeing_kept_once():
    table = pd.DataFrame({
        "rel_path": ["utkface/a", "utkface/b", "utkface/c", "utkface/d", "utkface/e"],
        "source": "utkface", "age_years": [30.0, 30.0, 80.0, 103.0, 5.0],
        "age_bin": ["30-39", "30-39", "more than 70", "more than 70", "3-9"],
        "gender": "Male", "race": "Asian",
    })
    keep, dropped = splits.resolve_exact_duplicates(table, ["h1", "h1", "h2", "h2", "h3"])
    assert keep.tolist() == [True, False, False, False, True]
    assert dropped.to_dict("list") == {
        "rel_path": ["utkface/b", "utkface/c", "utkface/d"],
        "reason": [splits.DROP_COPY, splits.DROP_CONFLICT, splits.DROP_CONFLICT],
        "duplicate_of": ["utkface/a", "utkface/d", "utkface/c"],
    }


def test_assign_splits_by_group_stratified_and_seeded():
    rng = np.random.default_rng(3)
    stratum = rng.choice(["a", "b", "c"], size=1200, p=[0.5, 0.3, 0.2])
    groups = rng.integers(0, 500, size=1200)  # ~2.4 images per group
    s1 = splits.assign_splits(stratum, groups, seed=5)
    assert (pd.Series(s1).groupby(groups).nunique() == 1).all()
    for st in "abc":
        share = pd.Series(s1[stratum == st]).value_counts(normalize=True)
        assert abs(share["train"] - 0.7) < 0.05 and abs(share["test"] - 0.15) < 0.05
    np.testing.assert_array_equal(s1, splits.assign_splits(stratum, groups, seed=5))
    assert (s1 != splits.assign_splits(stratum, groups, seed=6)).any()
    with pytest.raises(ValueError, match="fractions"):
        splits.assign_splits(stratum, groups, fractions=(0.71, 0.14, 0.15))


def test_group_folds_balance_like_sklearn():
    from sklearn.model_selection import StratifiedGroupKFold

    rng = np.random.default_rng(7)
    stratum, groups = rng.choice(list("abcdef"), size=300), rng.integers(0, 200, size=300)

    def imbalance(fold):  # sklearn's objective: mean over classes of the std of fold shares
        tab = pd.crosstab(stratum, fold)
        return tab.div(tab.sum(axis=1), axis=0).std(axis=1, ddof=0).mean()

    ref = np.empty(len(stratum), np.int64)
    for k, (_, idx) in enumerate(StratifiedGroupKFold(5, shuffle=True, random_state=0).split(stratum, stratum, groups)):
        ref[idx] = k
    got = splits.stratified_group_folds(stratum, groups, 5, seed=0)
    assert (pd.Series(got).groupby(groups).nunique() == 1).all()
    assert imbalance(got) <= imbalance(ref) + 1e-9


# === Leakage verification ===


def _synthetic_manifest(n: int = 90) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(n, 128)).astype(np.float32)
    dh, sha = _no_hash_links(n)
    df = pd.DataFrame({
        "rel_path": [f"fairface/val/{k}.jpg" for k in range(n)], "source": "fairface", "age_years": np.nan,
        "age_bin": "20-29", "gender": rng.choice(["Male", "Female"], n), "race": "White", "service_test": False,
        "group_id": np.arange(n), "split": np.array(splits.SPLITS)[np.arange(n) % 3],
    })
    return df, {"descriptor": x, "dhash": dh, "sha256": sha}


def test_verify_leakage_counts_planted_leaks():
    df, emb = _synthetic_manifest()
    params = GroupingParams(identity_threshold=0.3)
    assert leakage.verify_leakage(df, emb, params)["ok"]
    emb["descriptor"][1] = emb["descriptor"][0] + 0.01  # rows 0 (train) and 1 (val): same person
    emb["sha256"][4] = emb["sha256"][2]  # val and test: same file
    emb["dhash"][4] = emb["dhash"][3]  # train and val: same photo
    res = leakage.verify_leakage(df, emb, params)
    assert not res["ok"]
    assert res["cross_split"]["identity_pairs"] == {"train|val": 1, "train|test": 0, "val|test": 0}
    assert res["cross_split"]["exact_duplicates"] == {"train|val": 0, "train|test": 0, "val|test": 1}
    assert res["cross_split"]["dhash_near_duplicates"]["train|val"] == 1


def test_pair_rate_counts_match_brute_force():
    df, emb = _synthetic_manifest(150)
    x = emb["descriptor"] * 0.05
    split, group, gender = df["split"].to_numpy(), df["group_id"].to_numpy() // 2, df["gender"].to_numpy()
    thr = [0.6, 0.8]
    got = leakage.pair_rate_counts(x, split, group, gender, thr, block=40)
    iu = np.triu_indices(len(x), 1)
    d = squareform(pdist(x.astype(np.float64)))[iu]
    si, sj = split[iu[0]], split[iu[1]]

    def ref(m):
        return [int(((d < t) & m).sum()) for t in thr] + [int(m.sum())]

    assert got["train|val"].tolist() == ref(((si == "train") & (sj == "val")) | ((si == "val") & (sj == "train")))
    assert got["within_split_same_group"].tolist() == ref((si == sj) & (group[iu[0]] == group[iu[1]]))
    assert got["within_split_other_group"].tolist() == ref((si == sj) & (group[iu[0]] != group[iu[1]]))
    assert got["unrelated_other_gender"].tolist() == ref(gender[iu[0]] != gender[iu[1]])


# === Manifest I/O ===


def test_write_then_load_split_round_trip(tmp_path):
    df, _ = _synthetic_manifest(12)
    df.loc[df.index % 2 == 0, "source"] = "utkface"
    df.loc[df["source"] == "utkface", "age_years"] = 31.0
    df["rel_path"] = df["source"] + "/" + df["rel_path"].str.split("/").str[-1]
    splits.write_manifests(df, tmp_path)
    first = (tmp_path / "fairface.csv").read_bytes()
    for s in splits.SPLITS:
        got = splits.load_split(tmp_path, ["fairface", "utkface"], s)
        want = df.loc[df["split"] == s].sort_values(["source", "rel_path"], ignore_index=True)
        pd.testing.assert_frame_equal(got[list(splits.MANIFEST_COLUMNS)], want[list(splits.MANIFEST_COLUMNS)],
                                      check_dtype=False)
    splits.write_manifests(df, tmp_path)
    assert (tmp_path / "fairface.csv").read_bytes() == first


@pytest.mark.large
def test_make_splits_regenerates_committed_manifests(tmp_path):
    """Needs the identity cache (.cache/identity_v1.npz); minutes of CPU."""
    if not (REPO / ".cache" / "identity_v1.npz").exists():
        pytest.skip("no identity cache")
    cmd = [sys.executable, "scripts/make_splits.py", "--out", str(tmp_path / "s"), "--reports", str(tmp_path / "r")]
    subprocess.run(cmd, cwd=REPO, check=True, timeout=1800)
    for source in ("fairface", "utkface"):
        assert (tmp_path / "s" / f"{source}.csv").read_bytes() == splits.manifest_path(MANIFESTS, source).read_bytes()
