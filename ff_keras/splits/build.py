"""Identity-disjoint, stratified train/val/test splits and their committed manifests.

Manifest CSV columns: the canonical table's (see ``datasets``) plus ``group_id`` (images
that must stay together: same identity or duplicate photo, see ``grouping``) and ``split``.

Both sources are split jointly: FairFace and UTKFace share re-encoded copies of the same
photos, so a FairFace image and its UTKFace copy must land in the same split.

Exact-copy policy: byte-identical files (equal SHA-256) whose labels agree are one image,
kept once (the first path in sort order); when their labels disagree (UTKFace has 259 such
groups) nobody knows which label is right, so every copy is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ff_keras.paths import repo_path

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = (
    "rel_path", "source", "age_years", "age_bin", "gender", "race", "service_test", "group_id", "split",
)


DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)
LABEL_COLUMNS = ("source", "age_years", "age_bin", "gender", "race")
STRATUM_COLUMNS = ("source", "race", "gender", "age_bin")
DROP_CONFLICT = "exact copies with conflicting labels"
DROP_COPY = "exact copy of a kept image"


def manifest_path(manifests_dir: str | Path, source: str) -> Path:
    return repo_path(manifests_dir) / f"{source}.csv"


def load_split(manifests_dir: str | Path, sources: list[str] | tuple[str, ...], split: str) -> pd.DataFrame:
    """Rows of ``split`` from the committed manifests of ``sources``, in manifest order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    frames = []
    for source in sources:
        path = manifest_path(manifests_dir, source)
        if not path.exists():
            raise FileNotFoundError(f"split manifest not found: {path} (run scripts/make_splits.py)")
        dtypes = {"rel_path": str, "race": str, "gender": str, "age_bin": str}
        df = pd.read_csv(path, keep_default_na=True, dtype=dtypes)
        missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"{path} lacks columns {missing}")
        frames.append(df.loc[df["split"] == split])
    return pd.concat(frames, ignore_index=True)


def resolve_exact_duplicates(table: pd.DataFrame, sha256: Sequence[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Applies the exact-copy policy (module docstring).

    Args:
        table: canonical rows sorted by ``rel_path``.
        sha256: file hash per row.

    Returns:
        (keep mask, dropped rows with columns rel_path, reason, duplicate_of)
    """
    if len(sha256) != len(table):
        raise ValueError(f"{len(sha256)} hashes for {len(table)} rows")
    labels = _row_keys(table, LABEL_COLUMNS)
    df = pd.DataFrame({"rel_path": table["rel_path"].to_numpy(), "sha": np.asarray(sha256), "labels": labels})
    keep = np.ones(len(df), bool)
    dropped = []
    for _, g in df.loc[df["sha"].duplicated(keep=False)].groupby("sha", sort=True):
        g = g.sort_values("rel_path")
        first = g["rel_path"].iloc[0]
        if g["labels"].nunique() > 1:
            keep[g.index] = False
            dropped += [(p, DROP_CONFLICT, ";".join(q for q in g["rel_path"] if q != p)) for p in g["rel_path"]]
        else:
            keep[g.index[1:]] = False
            dropped += [(p, DROP_COPY, first) for p in g["rel_path"].iloc[1:]]
    out = pd.DataFrame(dropped, columns=["rel_path", "reason", "duplicate_of"])
    return keep, out.sort_values("rel_path", ignore_index=True)


def strata(table: pd.DataFrame) -> np.ndarray:
    """Stratum per row: source x race x gender x age bin."""
    return _row_keys(table, STRATUM_COLUMNS)


def _row_keys(table: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """One string per row joining ``columns`` (NaN -> "nan", so missing ages compare equal)."""
    cols = [table[c].to_numpy(dtype=object) for c in columns]
    return np.array(["|".join(map(str, vals)) for vals in zip(*cols)], dtype=object)


def assign_splits(
    stratum: np.ndarray,
    groups: np.ndarray,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    n_folds: int = 20,
) -> np.ndarray:
    """Split name per row: whole groups go to one split, strata keep ~``fractions``.

    One stratified group k-fold pass into ``n_folds`` equal folds, then whole folds are
    handed to train/val/test (20 folds of 5 % give 70/15/15 exactly).
    """
    counts = np.rint(np.asarray(fractions, float) * n_folds).astype(int)
    exact = np.allclose(counts, np.asarray(fractions) * n_folds)
    if len(fractions) != len(SPLITS) or not exact or counts.sum() != n_folds:
        raise ValueError(f"fractions {tuple(fractions)} must be 3 multiples of 1/{n_folds} summing to 1")
    fold_split = np.repeat(np.arange(len(SPLITS)), counts)
    fold = stratified_group_folds(np.asarray(stratum), np.asarray(groups), n_folds, seed)
    return np.asarray(SPLITS, dtype=object)[fold_split[fold]]


def stratified_group_folds(stratum: np.ndarray, groups: np.ndarray, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold per row, by scikit-learn StratifiedGroupKFold's greedy, vectorised over folds.

    Groups go, most class-skewed first (seeded shuffle, then stable sort), to the fold
    that keeps each class's share per fold most even (mean over classes of the std across
    folds), ties to the smaller fold. sklearn loops over folds in Python (~1-20 ms per
    group here, minutes for 40k groups); only classes the group holds change, so only
    those are evaluated.
    """
    g_ids, g_inv = np.unique(groups, return_inverse=True)
    _, c_inv = np.unique(stratum, return_inverse=True)
    counts = np.zeros((len(g_ids), c_inv.max() + 1 if len(c_inv) else 0))
    np.add.at(counts, (g_inv, c_inv), 1)
    share = counts / counts.sum(0)  # a group's share of each class
    order = np.random.RandomState(seed).permutation(len(g_ids))
    order = order[np.argsort(-counts[order].std(axis=1), kind="mergesort")]
    f = np.zeros((n_folds, counts.shape[1]))  # class shares per fold
    col_sum, col_sq = np.zeros(counts.shape[1]), np.zeros(counts.shape[1])
    size = np.zeros(n_folds)
    fold_of_group = np.empty(len(g_ids), np.int64)
    for g in order:
        nz = np.flatnonzero(counts[g])
        a = share[g, nz]
        # Variance across folds of each touched class if the group joined fold i (rows).
        var = (col_sq[nz] + 2 * f[:, nz] * a + a * a) / n_folds - ((col_sum[nz] + a) / n_folds) ** 2
        score = np.sqrt(np.maximum(var, 0)).sum(1)
        tied = np.flatnonzero(np.isclose(score, score.min()))
        best = tied[np.argmin(size[tied])]
        col_sq[nz] += 2 * f[best, nz] * a + a * a
        col_sum[nz] += a
        f[best, nz] += a
        size[best] += counts[g].sum()
        fold_of_group[g] = best
    return fold_of_group[g_inv]


def write_manifests(manifest: pd.DataFrame, manifests_dir: str | Path) -> list[Path]:
    """One CSV per source, sorted by rel_path, written byte-for-byte deterministically."""
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}")
    paths = []
    for source, df in manifest.groupby("source", sort=True):
        path = manifest_path(manifests_dir, source)
        path.parent.mkdir(parents=True, exist_ok=True)
        df = df.sort_values("rel_path")[list(MANIFEST_COLUMNS)]
        df.to_csv(path, index=False, float_format="%.1f", lineterminator="\n")
        paths.append(path)
    return paths


def build_manifest(
    table: pd.DataFrame,
    embeddings: dict[str, np.ndarray],
    params=None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Canonical table + aligned identity cache -> (manifest, dropped rows, grouping info).

    Applies the exact-copy policy, groups the kept images (``grouping.group_images``) and
    assigns whole groups to splits, stratified over source x race x gender x age bin.
    """
    from ff_keras.splits.grouping import GroupingParams, group_images

    params = params or GroupingParams()
    if list(embeddings["key"]) != list(table["rel_path"]):
        raise ValueError("embeddings are not aligned with the table's rel_path order")
    keep, dropped = resolve_exact_duplicates(table, embeddings["sha256"])
    kept = table.loc[keep].reset_index(drop=True)
    groups, info = group_images(
        embeddings["descriptor"][keep], embeddings["dhash"][keep], embeddings["sha256"][keep], params
    )
    manifest = kept.assign(group_id=groups, split=assign_splits(strata(kept), groups, fractions, seed))
    return manifest[list(MANIFEST_COLUMNS)], dropped, info


DROP_LINKED = "shares a group with a val/test image"


def extend_manifest(
    base: pd.DataFrame,
    table: pd.DataFrame,
    embeddings: dict[str, np.ndarray],
    params,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Adds new images to the training split of ``base`` without moving any base row.

    Every base row keeps its split; the exact-copy policy applies to the new images (a
    byte-identical copy of a kept image is dropped, conflicting copies among new images are
    all dropped); the rest join train unless they fall into a group (exact copy, dHash
    near-copy, identity pair: ``grouping.group_images`` with the base's fixed ``params``)
    with a val/test image. Removing images can create new mutual-nearest-neighbour pairs,
    so grouping repeats on what is left until no new image is linked to val/test (each round
    removes at least one image; the pair searches run once, only the linking repeats).

    Args:
        base: committed manifest rows (all sources).
        table: canonical table of the extended pool, sorted by ``rel_path``; must contain
            every base row with the same labels.
        embeddings: identity cache aligned with ``table``.
        params: ``GroupingParams`` with the base's ``identity_threshold``.

    Returns:
        (extended manifest, dropped new rows with rel_path/reason/duplicate_of, info)
    """
    from ff_keras.splits.grouping import candidate_pairs, group_pairs

    if params.identity_threshold is None:
        raise ValueError("extending a manifest needs the base's fixed identity_threshold")
    if list(embeddings["key"]) != list(table["rel_path"]):
        raise ValueError("embeddings are not aligned with the table's rel_path order")
    _check_base_rows(base, table)
    in_base = table["rel_path"].isin(set(base["rel_path"])).to_numpy()
    pool, dropped = _new_rows_after_copy_policy(table, embeddings["sha256"], in_base)
    base_split = base.set_index("rel_path")["split"]
    candidates = candidate_pairs(embeddings["descriptor"][pool], embeddings["dhash"][pool],
                                 embeddings["sha256"][pool], params)
    alive, linked, rounds = np.arange(len(pool)), [], 0  # positions in ``pool`` still taking part
    while True:
        rounds += 1
        groups, info = group_pairs(candidates.subset(alive), params)
        split = table["rel_path"].iloc[pool[alive]].map(base_split).fillna("train").to_numpy()
        bad = ~in_base[pool[alive]] & np.isin(groups, np.unique(groups[split != "train"]))
        if not bad.any():
            break
        linked += pool[alive[bad]].tolist()
        alive = alive[~bad]
    pool = pool[alive]
    dropped = pd.concat([dropped, _dropped_rows(table, linked, DROP_LINKED)])
    manifest = table.iloc[pool].assign(group_id=groups, split=split).reset_index(drop=True)
    missing = set(base["rel_path"]) - set(manifest["rel_path"])
    if missing:
        raise AssertionError(f"{len(missing)} base rows lost, e.g. {sorted(missing)[0]}")
    info = {**info, "grouping_rounds": rounds, "new_rows": int((~in_base).sum()),
            "new_rows_added": int((~in_base[pool]).sum()), "dropped": dropped["reason"].value_counts().to_dict()}
    return manifest[list(MANIFEST_COLUMNS)], dropped.sort_values("rel_path", ignore_index=True), info


def _dropped_rows(table: pd.DataFrame, rows, reason: str) -> pd.DataFrame:
    return pd.DataFrame({"rel_path": table["rel_path"].to_numpy()[rows], "reason": reason, "duplicate_of": ""})


def _new_rows_after_copy_policy(
    table: pd.DataFrame, sha256: np.ndarray, in_base: np.ndarray
) -> tuple[np.ndarray, pd.DataFrame]:
    """Rows taking part in the extension (every base row, and the new rows the exact-copy
    policy keeps that are not byte copies of a base image), and the new rows it drops."""
    keep_copy, dropped = resolve_exact_duplicates(table, sha256)
    # Only new rows are dropped here: a base row is never removed by the extension.
    dropped = dropped.loc[dropped["rel_path"].isin(set(table.loc[~in_base & ~keep_copy, "rel_path"]))]
    pool = np.flatnonzero(in_base | keep_copy)
    sha_base = set(np.asarray(sha256)[in_base].tolist())
    copies_of_base = [i for i in pool if not in_base[i] and sha256[i] in sha_base]
    pool = np.setdiff1d(pool, copies_of_base)
    return pool, pd.concat([dropped, _dropped_rows(table, copies_of_base, DROP_COPY)])


def _check_base_rows(base: pd.DataFrame, table: pd.DataFrame) -> None:
    """Every base row must be in the extended table with the same labels."""
    t = table.set_index("rel_path")
    absent = base.loc[~base["rel_path"].isin(t.index), "rel_path"]
    if len(absent):
        raise ValueError(f"{len(absent)} base manifest rows are missing from the extended pool, e.g. {absent.iloc[0]}")
    for col, changed in _changed_base_rows(base, t, ("source", "age_bin", "gender", "race")):
        f = changed[0]
        raise ValueError(
            f"{f}: {col} is {t.at[f, col]!r} in the extended pool but {base.set_index('rel_path').at[f, col]!r} "
            "in the base manifest")


def _changed_base_rows(base: pd.DataFrame, other: pd.DataFrame, columns: Sequence[str]):
    """Yields ``(column, rel_paths)`` for each column whose value differs between the base rows
    and the same rows of ``other`` (indexed by rel_path); base rows absent from ``other`` are skipped."""
    b = base.loc[base["rel_path"].isin(other.index)].set_index("rel_path")
    for col in columns:
        diff = b[col].astype(str) != other.loc[b.index, col].astype(str)
        if diff.any():
            yield col, diff[diff].index


def check_extension(base: pd.DataFrame, extended: pd.DataFrame) -> list[str]:
    """Problems with an extended manifest relative to its base (empty list: consistent).

    Base rows keep split and labels, new rows are training rows, no file appears twice, and
    no group of the extended manifest mixes splits.
    """
    problems = []
    ext = extended.set_index("rel_path")
    if extended["rel_path"].duplicated().any():
        problems.append(f"duplicate rows, e.g. {extended.loc[extended['rel_path'].duplicated(), 'rel_path'].iloc[0]}")
        return problems
    missing = base.loc[~base["rel_path"].isin(ext.index), "rel_path"]
    if len(missing):
        problems.append(f"{len(missing)} base rows missing, e.g. {missing.iloc[0]}")
    for col, changed in _changed_base_rows(base, ext, ("split", "source", "age_bin", "gender", "race")):
        problems.append(f"{len(changed)} base rows changed {col}, e.g. {changed[0]}")
    new = extended.loc[~extended["rel_path"].isin(set(base["rel_path"]))]
    if (new["split"] != "train").any():
        problems.append(f"new rows outside train, e.g. {new.loc[new['split'] != 'train', 'rel_path'].iloc[0]}")
    spans = extended.groupby("group_id")["split"].nunique()
    if (spans > 1).any():
        problems.append(f"{int((spans > 1).sum())} groups span splits, e.g. group {spans[spans > 1].index[0]}")
    return problems
