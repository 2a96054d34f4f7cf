"""End-to-end training on real images: staged fine-tuning, resume after a kill, GPU recipe."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from train_helpers import tiny_tables

from ff_keras import labels
from ff_keras.config import load_config
from ff_keras.model_info import load_info
from ff_keras.training.run import train

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"


class Interrupt(keras.callbacks.Callback):
    """Simulates a killed job: raises once the given epoch has fully ended (and been saved)."""

    def __init__(self, after_epoch: int):
        super().__init__()
        self.after_epoch = after_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.after_epoch:
            raise KeyboardInterrupt(f"killed after epoch {epoch}")


class EpochsRun(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs: list[int] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


@pytest.fixture(scope="module")
def tables(data_root):
    return tiny_tables(data_root)


def test_staged_run_leaves_a_usable_model_and_run_folder(tmp_path, tables):
    # Heads on cached embeddings, fine-tune, then heads again on the fine-tuned backbone's embeddings.
    stages = ("train.stages=[{epochs: 1, lr: 0.01, freeze_backbone: true}, {epochs: 1, lr: 0.01, "
              "freeze_backbone: false}, {epochs: 1, lr: 0.001, freeze_backbone: true}]")
    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", "train.run_id=staged", stages])
    result = train(cfg, argv=["scripts/train.py", "--config", str(SMOKE)], tables=tables)
    run = result.run_dir
    assert run == tmp_path / "smoke-staged"
    assert result.history["epoch"] == [0, 1, 2]
    with np.load(run / "embeddings" / "train.npz") as first, np.load(run / "embeddings_stage2" / "train.npz") as last:
        assert first["emb"].shape == last["emb"].shape
        assert not np.allclose(first["emb"], last["emb"])  # embedded again after the backbone moved
    assert "scripts/train.py --config" in (run / "command.txt").read_text()
    assert load_config(run / "config.yaml").train.run_id == "staged"
    # Frozen phase used the cache: flip pairs double the training rows.
    with np.load(run / "embeddings" / "train.npz") as z:
        assert z["emb"].shape[0] == 2 * len(tables[0])
    model = keras.models.load_model(result.model_path)  # no custom objects needed
    out = model.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0)
    assert {h: v.shape[-1] for h, v in out.items()} == {
        "age": 9, "gender": 2, "race": 7, "race_utk": 5, "age_years": 1}
    info = load_info(result.model_path)
    assert info.classes["race"] == list(labels.RACES) and info.image_size == 32
    assert info.extra["monitor"] == "val_race_accuracy"
    assert info.extra["loss_weights"]["age_years"] == pytest.approx(0.05)  # weighting state travels along
    saved = json.loads((run / "val_metrics.json").read_text())
    for key in ("race_accuracy", "gender_balanced_accuracy", "age_off_by_one", "age_years_mae", "race_utk_macro_f1"):
        assert np.isfinite(saved[key]), key
    for key in ("val_race_accuracy", "loss_weight_age", "lr", "gender_loss", "val_age_years_mae"):
        assert len(result.history[key]) == 3, key
    assert (run / "confusion_race.png").stat().st_size > 0


def test_killed_run_resumes_at_the_next_epoch(tmp_path, tables):
    overrides = [f"output_dir={tmp_path}", "train.run_id=resume",
                 "train.stages=[{epochs: 2, lr: 0.01, freeze_backbone: true}]"]
    cfg = load_config(SMOKE, overrides)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, argv=["first"], tables=tables, extra_callbacks=[Interrupt(after_epoch=0)])
    run = tmp_path / "smoke-resume"
    assert (run / "checkpoints" / "backup_stage0").is_dir()  # BackupAndRestore state survived the kill
    seen = EpochsRun()
    result = train(load_config(SMOKE, overrides), argv=["second"], tables=tables, extra_callbacks=[seen])
    assert seen.epochs == [1]  # restored from the backup: epoch 0 is not repeated
    assert result.history["epoch"] == [0, 1]  # and not lost
    assert (run / "command.txt").read_text().count("\n") == 2


def test_resnet34_recipe_runs_at_tiny_scale(tmp_path, tables):
    cfg = load_config(REPO / "configs" / "resnet34_fairface.yaml", [
        f"output_dir={tmp_path}", "train.run_id=tiny", "data.image_size=32", "data.batch_size=4",
        "model.width=0.0625", "train.steps_per_epoch=1", "train.validation_steps=1", "train.epochs=1",
        "wandb.mode=disabled", "train.verbose=0",
    ])
    assert cfg.model.backbone == "resnet34" and cfg.train.mixed_precision == "mixed_float16"
    result = train(cfg, argv=["tiny"], tables=tables)
    assert result.history["epoch"] == [0]
    assert np.isfinite(result.history["loss"][0])
    assert keras.mixed_precision.global_policy().name == "float32"  # policy restored afterwards


def test_class_balanced_race_loss_weights_come_from_the_training_rows(tmp_path, data_root):
    train_t, val_t = tiny_tables(data_root, n_train=160, n_val=16)
    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", "train.run_id=balanced", "train.class_balance={race: 0.5}",
                              "train.stages=[{epochs: 1, lr: 0.01, freeze_backbone: true}]"])
    result = train(cfg, argv=["test"], tables=(train_t, val_t))
    counts = train_t.loc[labels.labelled_mask(train_t, "race"), "race"].value_counts()
    want = np.array([counts[r] ** -0.5 for r in labels.RACES])
    want *= counts.sum() / (want * counts[list(labels.RACES)].to_numpy()).sum()
    got = load_info(result.model_path).extra["class_weights"]["race"]
    np.testing.assert_allclose(got, want, atol=1e-4)
    bad = load_config(SMOKE, [f"output_dir={tmp_path}", "train.run_id=bad", "train.class_balance={ethnicity: 1}"])
    with pytest.raises(ValueError, match=r"train.class_balance names \['ethnicity'\]"):
        train(bad, argv=["test"], tables=(train_t, val_t))
