"""W&B offline logging: a smoke training's per-head metrics are in the run's .wandb file."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import tiny_tables

from ff_keras.config import load_config
from ff_keras.training.tracking import Tracker, wandb_key
from wandb_log import find_wandb_file, read_wandb_history
from ff_keras.training.run import train

REPO = Path(__file__).resolve().parents[1]


def test_wandb_keys_group_train_and_val_panels():
    assert wandb_key("val_race_accuracy") == "val/race_accuracy"
    assert wandb_key("gender_loss") == "train/gender_loss"
    assert wandb_key("loss_weight_age") == "loss_weight/age"
    assert wandb_key("lr") == "lr"


def test_unknown_mode_raises_and_disabled_is_a_no_op(tmp_path):
    with pytest.raises(ValueError, match="cloud"):
        Tracker("cloud", "p", tmp_path, "x", {})
    t = Tracker("disabled", "p", tmp_path, "x", {})
    t.log({"loss": 1.0}, step=0)
    t.finish()
    assert not t.enabled and not list(tmp_path.iterdir())


def test_offline_smoke_run_writes_per_head_metrics(tmp_path, data_root):
    cfg = load_config(REPO / "configs" / "smoke.yaml", [
        f"output_dir={tmp_path}", "train.run_id=wb", "wandb.mode=offline", "wandb.group=test-group",
        "wandb.tags=[smoke,ci]", "train.loss_weighting=uncertainty",
        "train.stages=[{epochs: 2, lr: 0.01, freeze_backbone: true}]",
    ])
    result = train(cfg, argv=["test"], tables=tiny_tables(data_root))
    path = find_wandb_file(result.run_dir)
    assert path.is_relative_to(result.run_dir / "wandb")  # offline run lives in the run folder
    info, rows = read_wandb_history(path)
    assert info["group"] == "test-group" and info["tags"] == ["smoke", "ci"]
    assert info["config"]["train"]["loss_weighting"] == "uncertainty"  # resolved config logged
    epochs = [r for r in rows if "val/race_accuracy" in r]
    assert [r["epoch"] for r in epochs] == [0, 1]
    for head in ("age", "gender", "race", "race_utk"):
        keys = (f"train/{head}_accuracy", f"val/{head}_balanced_accuracy", f"val/{head}_loss", f"loss_weight/{head}")
        for key in keys:
            assert all(key in r for r in epochs), key
    assert all("val/age_years_mae" in r and "lr" in r and "train/loss" in r for r in epochs)
    # Values are the ones Keras logged (history.csv), not placeholders.
    assert [r["val/race_accuracy"] for r in epochs] == pytest.approx(result.history["val_race_accuracy"])
    # End of run: its own row with the val table and one confusion image per class head.
    final = [r for r in rows if "epoch" not in r]
    assert len(final) == 1 and final[0]["_step"] == 2
    for prefix in ("val_metrics/", "confusion/age/", "confusion/gender/", "confusion/race/", "confusion/race_utk/"):
        assert any(k.startswith(prefix) for k in final[0]), prefix
    assert final[0]["confusion/race/_type"] == "image-file"
