"""Which images must share a split: exact copies, re-encoded copies and the same person.

Three kinds of edges join images into groups (connected components):

* exact duplicates: equal SHA-256 of the file bytes;
* near-duplicates: 256-bit dHash within ``dhash_bits`` (the same photo re-encoded or re-cropped);
* identity: dlib descriptor distance. Joining *every* pair under dlib's usual 0.6 chains
  almost all images into one component (look-alike chains, and infants all look alike to
  dlib), so every pair under a conservative ``identity_threshold`` is joined, and above it,
  up to ``mutual_threshold``, only pairs that are each other's ``mutual_k`` nearest
  neighbours: a dense region of look-alikes does not chain through mutual-NN edges.

The numbers behind the defaults are measured by ``ff_keras.splits.leakage.threshold_study`` and
written to ``reports/leakage.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def descriptor_pairs(x: np.ndarray, threshold: float, block: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` with Euclidean distance < ``threshold``, by blockwise matmul.

    Float64 so that a pair's side of the threshold does not depend on BLAS blocking.

    Returns:
        (i int64, j int64, distance float32), sorted by (i, j).
    """
    x = np.asarray(x, np.float64)
    sq = (x * x).sum(1)
    out_i, out_j, out_d = [], [], []
    for a in range(0, len(x), block):
        xa = x[a : a + block]
        for b in range(a, len(x), block):
            d2 = sq[a : a + block, None] + sq[None, b : b + block] - 2.0 * (xa @ x[b : b + block].T)
            ii, jj = np.nonzero(d2 < threshold * threshold)
            ii, jj = ii + a, jj + b
            keep = ii < jj
            ii, jj = ii[keep], jj[keep]
            out_i.append(ii)
            out_j.append(jj)
            out_d.append(np.sqrt(np.maximum(d2[ii - a, jj - b], 0.0)).astype(np.float32))
    i, j, d = (np.concatenate(v) if v else np.zeros(0) for v in (out_i, out_j, out_d))
    order = np.lexsort((j, i))
    return i[order].astype(np.int64), j[order].astype(np.int64), d[order].astype(np.float32)


def hamming_pairs(
    bits_packed: np.ndarray, max_bits: int, block: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``i < j`` of packed hashes whose Hamming distance is <= ``max_bits``.

    Hamming = popcount(a) + popcount(b) - 2 a.b on unpacked 0/1 vectors, exact in float32.
    """
    x = np.unpackbits(np.asarray(bits_packed, np.uint8), axis=1).astype(np.float32)
    pop = x.sum(1)
    out_i, out_j, out_h = [], [], []
    for a in range(0, len(x), block):
        for b in range(a, len(x), block):
            h = pop[a : a + block, None] + pop[None, b : b + block] - 2.0 * (x[a : a + block] @ x[b : b + block].T)
            ii, jj = np.nonzero(h <= max_bits + 0.5)
            ii, jj = ii + a, jj + b
            keep = ii < jj
            out_i.append(ii[keep])
            out_j.append(jj[keep])
            out_h.append(np.rint(h[ii[keep] - a, jj[keep] - b]).astype(np.int16))
    i, j, h = (np.concatenate(v) if v else np.zeros(0) for v in (out_i, out_j, out_h))
    order = np.lexsort((j, i))
    return i[order].astype(np.int64), j[order].astype(np.int64), h[order].astype(np.int16)


def mutual_knn_mask(n: int, i: np.ndarray, j: np.ndarray, d: np.ndarray, k: int) -> np.ndarray:
    """Which candidate pairs are mutual k-nearest neighbours (each among the other's k closest).

    Only candidate pairs are ranked; for pairs under the candidate threshold that is exact,
    because anything closer than a candidate is itself a candidate.
    """
    src = np.concatenate([i, j])
    dst = np.concatenate([j, i])
    dist = np.concatenate([d, d])
    # Rank each node's candidates by distance (ties broken by neighbour index: deterministic).
    order = np.lexsort((dst, dist, src))
    src_sorted = src[order]
    starts = np.searchsorted(src_sorted, np.arange(n))
    rank = np.empty(len(src), np.int64)
    rank[order] = np.arange(len(src)) - starts[src_sorted]
    m = len(i)
    return (rank[:m] < k) & (rank[m:] < k)


def connected_groups(n: int, edges: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Connected components of the union of edge lists, numbered by their first member's index."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows = np.concatenate([e[0] for e in edges] + [np.zeros(0, np.int64)]).astype(np.int64)
    cols = np.concatenate([e[1] for e in edges] + [np.zeros(0, np.int64)]).astype(np.int64)
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # Renumber by first occurrence so ids are stable for a fixed row order.
    _, first = np.unique(labels, return_index=True)
    rename = np.empty(len(first), np.int64)
    rename[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rename[labels]


# Identity thresholds tried, largest first, when none is given (see ``group_images``).
THRESHOLD_CANDIDATES = tuple(np.round(np.arange(0.30, 0.1999, -0.01), 2).tolist())


@dataclass(frozen=True)
class GroupingParams:
    """Linkage settings; defaults chosen from the measurements in reports/leakage.md."""

    identity_threshold: float | None = None  # every pair closer shares a group; None: chosen (below)
    mutual_threshold: float = 0.45  # mutual k-NN pairs closer than this also share a group
    mutual_k: int = 1
    dhash_bits: int = 22  # Hamming distance (of 256) at or under which two files are one photo
    max_group: int = 50  # the chosen threshold is the largest keeping every group at most this big

    def __post_init__(self) -> None:
        t = self.identity_threshold
        if t is not None and not 0 < t <= self.mutual_threshold:
            raise ValueError(f"need 0 < identity_threshold <= mutual_threshold, got {self}")
        if self.mutual_k < 0 or not 0 <= self.dhash_bits < 256 or self.max_group < 2:
            raise ValueError(f"need mutual_k >= 0, dhash_bits in [0, 256), max_group >= 2, got {self}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CandidatePairs:
    """Every pair that may join two images: dHash pairs within ``dhash_bits`` and descriptor
    pairs closer than ``mutual_threshold`` (row indices ``i < j``), plus each row's file hash.

    Distances are pairwise, so the candidates among a subset of rows are the pairs whose
    both ends are in it (``subset``); only the mutual-NN ranking depends on who else is there,
    and ``group_pairs`` recomputes it.
    """

    n: int
    sha256: np.ndarray
    dhash: tuple[np.ndarray, np.ndarray]
    desc: tuple[np.ndarray, np.ndarray, np.ndarray]

    def subset(self, rows: np.ndarray) -> CandidatePairs:
        """The candidates among ``rows`` (sorted indices), renumbered 0..len(rows)-1."""
        new = np.full(self.n, -1, np.int64)
        new[rows] = np.arange(len(rows))

        def keep(i: np.ndarray, j: np.ndarray) -> np.ndarray:
            return (new[i] >= 0) & (new[j] >= 0)

        hi, hj = self.dhash
        di, dj, dd = self.desc
        kh, kd = keep(hi, hj), keep(di, dj)
        return CandidatePairs(len(rows), self.sha256[rows], (new[hi[kh]], new[hj[kh]]),
                              (new[di[kd]], new[dj[kd]], dd[kd]))


def candidate_pairs(
    descriptors: np.ndarray, dhashes: np.ndarray, sha256: np.ndarray, params: GroupingParams = GroupingParams()
) -> CandidatePairs:
    """The expensive part of grouping: all-pairs dHash and descriptor searches."""
    n = len(descriptors)
    if not len(dhashes) == len(sha256) == n:
        raise ValueError(f"misaligned inputs: {n} descriptors, {len(dhashes)} dhashes, {len(sha256)} hashes")
    hi, hj, _ = hamming_pairs(dhashes, params.dhash_bits)
    return CandidatePairs(n, np.asarray(sha256), (hi, hj), descriptor_pairs(descriptors, params.mutual_threshold))


def group_images(
    descriptors: np.ndarray, dhashes: np.ndarray, sha256: np.ndarray, params: GroupingParams = GroupingParams()
) -> tuple[np.ndarray, dict]:
    """Group id per image (numbered by first member) and what was joined (``group_pairs``)."""
    return group_pairs(candidate_pairs(descriptors, dhashes, sha256, params), params)


def group_pairs(pairs: CandidatePairs, params: GroupingParams = GroupingParams()) -> tuple[np.ndarray, dict]:
    """Groups from candidate pairs: exact copies, dHash pairs, identity and mutual-NN pairs.

    Without a fixed ``identity_threshold`` the largest of ``THRESHOLD_CANDIDATES`` whose
    groups (all edge kinds together) stay within ``max_group`` images is used: above ~0.3
    near pairs no longer signal identity (reports/leakage.md), and below it the threshold
    only has to stop infants and look-alikes from chaining.

    Returns:
        (groups int64 [N], info): info holds the ``identity_threshold`` used, pairs joined per
        edge kind, the largest group, and the largest group for each threshold tried.
    """
    n = pairs.n
    _, sha_group = np.unique(pairs.sha256, return_inverse=True)
    order = np.argsort(sha_group, kind="stable")
    same = sha_group[order][1:] == sha_group[order][:-1]
    exact = (order[:-1][same], order[1:][same])
    hi, hj = pairs.dhash
    i, j, d = pairs.desc
    mutual_all = mutual_knn_mask(n, i, j, d, params.mutual_k)
    fixed, tried = params.identity_threshold, {}
    for t in [fixed] if fixed is not None else THRESHOLD_CANDIDATES:
        core = d < t
        mutual = ~core & mutual_all
        edges = {"exact": exact, "dhash": (hi, hj), "identity": (i[core], j[core]), "mutual_nn": (i[mutual], j[mutual])}
        groups = connected_groups(n, list(edges.values()))
        largest = int(np.bincount(groups).max()) if n else 0
        tried[f"{t:.2f}"] = largest
        if largest <= params.max_group:
            break
    info = {"identity_threshold": float(t), "edges": {k: len(e[0]) for k, e in edges.items()},
            "largest": largest, "largest_by_threshold": tried}
    return groups, info
