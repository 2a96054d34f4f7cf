"""The label schema: class names per head, in the order every model, metric and export uses.

FairFace and UTKFace label race differently (7 vs 5 classes), so they keep separate label
spaces: FairFace's 7 classes train the ``race`` head, UTKFace's 5 classes train the
``race_utk`` head, and each source's rows carry weight 0 on the head it has no label for.
UTKFace's "Asian" is never mapped to FairFace's "East Asian" (it also covers South-East
Asians), and "Others" has no FairFace counterpart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

# FairFace's age bins in natural order (pandas would sort "10-19" before "3-9").
AGE_BINS: tuple[str, ...] = (
    "0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70",
)
GENDERS: tuple[str, ...] = ("Male", "Female")
# Order of the FairFace authors' released 7-race model (dchen236/FairFace predict.py).
RACES: tuple[str, ...] = (
    "White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern",
)
UTK_RACES: tuple[str, ...] = ("White", "Black", "Asian", "Indian", "Others")
UTK_GENDERS: tuple[str, ...] = GENDERS  # UTKFace file names: 0 = male, 1 = female

# Classification heads and their class names. ``age_years`` is a regression head.
HEAD_CLASSES: dict[str, tuple[str, ...]] = {
    "age": AGE_BINS,
    "gender": GENDERS,
    "race": RACES,
    "race_utk": UTK_RACES,
}
# Heads of the public inference contract (exports, service).
CONTRACT_HEADS: tuple[str, ...] = ("age", "gender", "race")
REGRESSION_HEADS: tuple[str, ...] = ("age_years",)
# Which heads each source labels; the rest get sample weight 0.
SOURCE_HEADS: dict[str, tuple[str, ...]] = {
    "fairface": ("age", "gender", "race"),
    "utkface": ("age", "gender", "race_utk", "age_years"),
}
# Column of the canonical table (``data.readers``) that holds each head's label.
HEAD_COLUMNS: dict[str, str] = {
    "age": "age_bin",
    "gender": "gender",
    "race": "race",
    "race_utk": "race",
    "age_years": "age_years",
}
# Layout of the FairFace authors' 18-way fc: race 7, gender 2, age 9.
SOURCE_HEAD_ORDER: tuple[str, ...] = ("race", "gender", "age")

# Upper edges (exclusive) of the age bins in years; the last bin is open.
_AGE_BIN_EDGES = (3, 10, 20, 30, 40, 50, 60, 70)


def age_to_bin(age_years: float) -> str:
    """Maps an age in years to FairFace's bin name (``70`` and older -> ``"more than 70"``)."""
    if age_years is None or (isinstance(age_years, float) and math.isnan(age_years)) or age_years < 0:
        raise ValueError(f"age must be a non-negative number of years, got {age_years!r}")
    idx = int(np.searchsorted(_AGE_BIN_EDGES, age_years, side="right"))
    return AGE_BINS[idx]


def label_column(head: str) -> str:
    """The table column holding ``head``'s label; an unknown head raises, naming it."""
    if head not in HEAD_COLUMNS:
        raise ValueError(f"unknown head {head!r}; known: {sorted(HEAD_COLUMNS)}")
    return HEAD_COLUMNS[head]


def labelled_mask(table, head: str) -> np.ndarray:
    """Rows of a canonical table that carry a label for ``head``: their source labels it
    (``SOURCE_HEADS``) and the value is present.

    Raises:
        ValueError: naming any source that is not in ``SOURCE_HEADS`` (a table from a reader
            this schema does not know must not be silently treated as unlabelled).
    """
    column = label_column(head)
    unknown = sorted(set(table["source"]) - set(SOURCE_HEADS))
    if unknown:
        raise ValueError(f"unknown source(s) {unknown} in table; known: {sorted(SOURCE_HEADS)}")
    mask = table["source"].map(lambda s: head in SOURCE_HEADS[s]).to_numpy(bool)
    return mask & table[column].notna().to_numpy(bool)


def head_slices(order: Sequence[str] = SOURCE_HEAD_ORDER) -> dict[str, slice]:
    """Slices of a concatenated logit vector, derived from the class counts (never typed)."""
    out, start = {}, 0
    for head in order:
        n = len(HEAD_CLASSES[head])
        out[head] = slice(start, start + n)
        start += n
    return out


class LabelEncoder:
    """Maps class names to ids in schema order; fitted on the training split.

    Unlike sklearn's LabelEncoder it keeps the schema's order (not alphabetical) and an
    unseen value raises an error that names the value and the row it came from.
    """

    def __init__(self, head: str, classes: Sequence[str] | None = None):
        self.head = head
        self.schema = HEAD_CLASSES[head]
        self.classes_: tuple[str, ...] | None = tuple(classes) if classes is not None else None

    def fit(self, values: Iterable[str], rows: Sequence[str] | None = None) -> LabelEncoder:
        values = list(values)
        self._check_known(values, rows, self.schema, "label schema")
        # Keep every schema class, even if absent from this split, so ids are stable.
        self.classes_ = self.schema
        return self

    def transform(self, values: Iterable[str], rows: Sequence[str] | None = None) -> np.ndarray:
        if self.classes_ is None:
            raise RuntimeError(f"LabelEncoder({self.head!r}) used before fit")
        values = list(values)
        self._check_known(values, rows, self.classes_, "fitted classes")
        index = {c: i for i, c in enumerate(self.classes_)}
        return np.array([index[v] for v in values], dtype=np.int32)

    def inverse_transform(self, ids: Iterable[int]) -> list[str]:
        return [self.classes_[int(i)] for i in ids]

    def _check_known(self, values, rows, allowed, what) -> None:
        allowed = set(allowed)
        for i, v in enumerate(values):
            if v not in allowed:
                where = rows[i] if rows is not None else f"row {i}"
                raise ValueError(
                    f"unseen {self.head} label {v!r} in {where}; {what} are {sorted(allowed)}"
                )


def label_spaces() -> dict[str, list[str]]:
    """Class names per head, as saved beside every model (labels.json)."""
    return {head: list(names) for head, names in HEAD_CLASSES.items()}


def check_label_spaces(saved: Mapping[str, Sequence[str]]) -> None:
    """Fails if a saved model's class order differs from this code's schema."""
    for head, names in saved.items():
        if head in HEAD_CLASSES and tuple(names) != HEAD_CLASSES[head]:
            raise ValueError(f"model's {head} classes {list(names)} differ from schema {list(HEAD_CLASSES[head])}")
