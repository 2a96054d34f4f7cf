"""Metrics from arrays: hand-made 10-row cases, sklearn/fairlearn parity, real label tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from ff_keras.evaluation import baselines, run as eval_pipeline
from ff_keras.data import readers as datasets
from ff_keras import labels
from ff_keras.splits import build as splits
from ff_keras.evaluation import metrics as E


def onehot(pred, k):
    return np.eye(k)[pred] * 0.9 + 0.1 / k


def test_head_metrics_hand_made():
    y = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 3])
    pred = np.array([0, 2, 2, 3, 6, 5, 5, 1, 8, 4])
    idx = E.bootstrap_indices(len(y), 300, 0)
    m = E.head_metrics(y, onehot(pred, 9), "age", idx, 0.95)
    cm = np.asarray(m["confusion"])
    assert cm.sum() == 10 and m["n"] == 10
    assert m["accuracy"] == np.trace(cm) / 10 == 0.5
    # |pred - true| <= 1: rows 0,1,2,3,5,6,8,9 -> 8 of 10.
    assert m["off_by_one"] == 0.8
    for name, ci in m["ci"].items():
        assert ci[0] <= m[name] <= ci[1]
    assert m["classes"] == list(labels.AGE_BINS)


def test_scores_from_confusion_match_sklearn():
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 7, 300), rng.integers(0, 7, 300)
    y[y == 3] = 4  # a class absent from the truth but present in predictions
    cm = np.bincount(y * 7 + p, minlength=49).reshape(7, 7)
    s = E.scores_from_confusion(cm)
    assert math.isclose(s["accuracy"], (y == p).mean())
    assert math.isclose(s["balanced_accuracy"], balanced_accuracy_score(y, p))
    assert math.isclose(s["macro_f1"], f1_score(y, p, average="macro"))
    # The bootstrap confusions resample rows: every one sums to n.
    boot = E.boot_confusions(y, p, 7, E.bootstrap_indices(300, 50, 0))
    assert (boot.sum((1, 2)) == 300).all()


def test_group_metrics_hand_made():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])
    p = np.array([0, 0, 0, 1, 1, 0, 0, 1, 1, 1])
    g = pd.Series(["a"] * 4 + ["b"] * 5 + ["c"])
    res = E.group_metrics(y, p, g, E.bootstrap_indices(10, 500, 0), 0.95, min_group_n=2)
    by = {r["group"]: r for r in res["groups"]}
    assert {k: v["n"] for k, v in by.items()} == {"a": 4, "b": 5, "c": 1}
    assert by["a"]["accuracy"] == 0.75 and by["b"]["accuracy"] == 0.6 and by["c"]["accuracy"] == 0.0
    # "c" (n = 1) is listed but cannot decide the gap.
    assert res["eligible"] == ["a", "b"] and res["worst"]["group"] == "b"
    assert math.isclose(res["gap"]["value"], 0.15) and math.isclose(res["ratio"]["value"], 0.8)
    for key in ("worst", "gap", "ratio"):
        point = res[key].get("accuracy", res[key].get("value"))
        assert res[key]["ci"][0] <= point <= res[key]["ci"][1]


def test_too_few_groups_gives_no_gap():
    res = E.group_metrics(
        np.zeros(4, int),
        np.zeros(4, int),
        pd.Series(["a", "a", "a", "b"]),
        E.bootstrap_indices(4, 20, 0),
        0.95,
        min_group_n=2,
    )
    assert "gap" not in res and "fewer than 2" in res["note"]


@pytest.fixture(scope="module")
def fairface_table(data_root):
    table, _ = datasets.read_fairface(data_root, ("fairface_label_val.csv",))
    return table.sample(400, random_state=0).reset_index(drop=True)


def test_evaluate_table_on_real_labels(fairface_table):
    rng = np.random.default_rng(0)
    probs = {
        h: rng.dirichlet(np.ones(len(labels.HEAD_CLASSES[h])), len(fairface_table))
        for h in labels.CONTRACT_HEADS
    }
    out = E.evaluate_table(fairface_table, probs, "fairface", n_boot=200, min_group_n=5)
    assert set(out["heads"]) == {"age", "gender", "race"} and out["skipped"] == []
    for grouping in E.GROUPINGS:
        for g in out["groups"][grouping].values():
            assert sum(r["n"] for r in g["groups"]) == 400
            for r in g["groups"]:
                assert r["ci"][0] <= r["accuracy"] <= r["ci"][1]
    ages = [r["group"] for r in out["groups"]["age_bin"]["age"]["groups"]]
    assert ages == [a for a in labels.AGE_BINS if a in set(ages)]  # natural order
    # Seeded: the same inputs give the same intervals.
    again = E.evaluate_table(fairface_table, probs, "fairface", n_boot=200, min_group_n=5)
    assert again["heads"]["race"]["ci"] == out["heads"]["race"]["ci"]


def test_utkface_rows_use_their_own_heads_and_mae(data_root):
    table, _ = datasets.read_utkface(data_root)
    table = table.sample(120, random_state=0).reset_index(drop=True)
    rng = np.random.default_rng(0)
    probs = {h: rng.dirichlet(np.ones(len(labels.HEAD_CLASSES[h])), 120) for h in ("age", "gender", "race")}
    years = table["age_years"].to_numpy() + 3.0
    out = E.evaluate_table(table, {**probs, "age_years": years}, "utkface", n_boot=100)
    # FairFace's 7-race head is not scored on UTKFace; the model has no race_utk head here.
    assert set(out["heads"]) == {"age", "gender"} and "race_utk" in out["skipped"]
    assert math.isclose(out["age_years"]["mae"], 3.0) and out["age_years"]["n"] == 120


def test_bad_inputs_name_the_problem(fairface_table):
    probs = {"race": np.full((len(fairface_table), 5), 0.2)}
    with pytest.raises(ValueError, match="race probabilities have shape"):
        E.evaluate_table(fairface_table, probs, "fairface", n_boot=10)
    with pytest.raises(ValueError, match="gender has 3 predictions"):
        E.evaluate_table(fairface_table, {"gender": np.full((3, 2), 0.5)}, "fairface", n_boot=10)
    with pytest.raises(ValueError, match="unknown source"):
        E.evaluate_table(fairface_table, {}, "celeba")


def test_baselines_are_sourced_and_merge_works():
    rows = baselines.load()
    assert rows and all(r["source"] and isinstance(r["value"], float) for r in rows)
    cm = [[5, 1, 0], [2, 3, 1], [0, 0, 4]]  # merging classes a, b counts their mix-ups as hits
    assert math.isclose(baselines.merged_accuracy(cm, ["a", "b", "c"], [["a", "b"]]), 15 / 16)
    with pytest.raises(ValueError, match="unknown classes"):
        baselines.merged_accuracy(cm, ["a", "b", "c"], [["a", "z"]])


def _manifest_dir(tmp_path, data_root):
    table, _ = datasets.read_fairface(data_root, ("fairface_label_val.csv",))
    table = table.head(30).copy()
    table["group_id"] = np.arange(30)
    table["split"] = np.array(["train", "val", "test"])[np.arange(30) % 3]
    table[list(splits.MANIFEST_COLUMNS)].to_csv(tmp_path / "fairface.csv", index=False)
    return table


def _cfg(tmp_path, *extra):
    from ff_keras.config import load_config

    return load_config(
        None,
        [
            f"data.manifests_dir={tmp_path}",
            "data.sources=[fairface]",
            "evaluation.identity_cache=null",
            *extra,
        ],
    )


def test_leakage_recheck_from_identity_cache(tmp_path, data_root):
    table = _manifest_dir(tmp_path, data_root)
    rng = np.random.default_rng(0)
    cache = {
        "key": table.rel_path.to_numpy(str),
        "descriptor": rng.normal(0, 1, (30, 128)).astype(np.float32),  # pairwise distances ~16 >> 0.3
        "detected": np.ones(30, bool),
        "dhash": rng.integers(0, 256, (30, 32)).astype(np.uint8),
        "sha256": np.array([f"{i:064x}" for i in range(30)]),
    }
    np.savez(tmp_path / "ok.npz", **cache)
    out = eval_pipeline.leakage_check(
        _cfg(tmp_path, f"evaluation.identity_cache={tmp_path / 'ok.npz'}"), "test"
    )
    assert out["ok"] is True and out["source"].startswith("recomputed")
    # Row 2 (test) gets the descriptor of row 0 (train): one cross-split identity pair.
    cache["descriptor"][2] = cache["descriptor"][0]
    np.savez(tmp_path / "leak.npz", **cache)
    out = eval_pipeline.leakage_check(
        _cfg(tmp_path, f"evaluation.identity_cache={tmp_path / 'leak.npz'}"), "test"
    )
    assert out["ok"] is False and out["identity_pairs[train|test]"] == 1


def test_leakage_falls_back_to_split_report_and_manifest(tmp_path, data_root):
    table = _manifest_dir(tmp_path, data_root)
    saved = {"ok": True, "cross_split": {"identity_pairs": {"train|val": 0, "train|test": 0, "val|test": 0}}}
    (tmp_path / "leakage.json").write_text(json.dumps(saved))
    out = eval_pipeline.leakage_check(
        _cfg(tmp_path, f"evaluation.leakage_report={tmp_path / 'leakage.json'}"), "test"
    )
    assert out["ok_at_split_time"] is True and out["identity_pairs[train|test]"] == 0
    assert "identity_pairs[train|val]" not in out  # only the pairs that involve the evaluated split
    # A group id shared by a train and a test row is a leak the manifest re-check catches.
    table.loc[2, "group_id"] = 0
    table[list(splits.MANIFEST_COLUMNS)].to_csv(tmp_path / "fairface.csv", index=False)
    out = eval_pipeline.leakage_check(_cfg(tmp_path), "test")
    assert out["groups_spanning_splits"] == 1 and "LEAK" in out["summary"]
