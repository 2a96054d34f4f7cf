"""Small real train/val tables (FairFace val + UTKFace rows) for the training tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ff_keras.data.readers import read_fairface, read_utkface


def tiny_tables(root: Path, n_train: int = 32, n_val: int = 16) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Half FairFace, half UTKFace, disjoint rows; both sources so every head has labels."""
    ff, _ = read_fairface(root, ("fairface_label_val.csv",))
    utk, _ = read_utkface(root)
    h, v = n_train // 2, n_val // 2
    train = pd.concat([ff.iloc[:h], utk.iloc[:h]], ignore_index=True)
    val = pd.concat([ff.iloc[h:h + v], utk.iloc[h:h + v]], ignore_index=True)
    return train, val
