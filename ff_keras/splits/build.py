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
