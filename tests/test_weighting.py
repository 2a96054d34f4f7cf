"""Loss weighting: each strategy's weights move the way its paper says, and are saved."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from ff_keras.training import losses, loss_weighting as weighting
from ff_keras.training.trainer import MultiTaskTrainer

HEADS = ["gender", "race"]


def _fit(strategy: str, epochs: int, base=None):
    """Real training of two linear heads: ``gender`` is learnable, ``race`` is pure noise."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = {"gender": (x[:, 0] > 0).astype(np.int32), "race": rng.integers(0, 7, 256).astype(np.int32)}
    w = {h: np.ones(256, np.float32) for h in HEADS}
    inp = keras.Input((8,), name="image")
    net = keras.Model(inp, {"gender": keras.layers.Dense(2, name="gender")(inp),
                            "race": keras.layers.Dense(7, name="race")(inp)})
    lw = weighting.LossWeighting(HEADS, strategy, base or {})
    trainer = MultiTaskTrainer(net, lw, losses.build_losses(HEADS))
    trainer.compile(optimizer=keras.optimizers.Adam(0.05), jit_compile=False)
    ds = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(32)
    hist = trainer.fit(ds, epochs=epochs, verbose=0, shuffle=False, callbacks=[weighting.LossWeightingCallback(lw)])
    return trainer, lw, hist.history


def test_fixed_weights_stay_constant():
    _, _, hist = _fit("fixed", 3, {"gender": 2.0, "race": 0.5})
    assert hist["loss_weight_gender"] == [2.0, 2.0, 2.0]
    assert hist["loss_weight_race"] == [0.5, 0.5, 0.5]


def test_uncertainty_gives_the_noisier_task_a_larger_log_variance(tmp_path):
    trainer, lw, hist = _fit("uncertainty", 6)
    s = dict(zip(HEADS, lw.log_vars.numpy()))
    assert s["race"] > s["gender"] + 1.0  # noise-only labels: larger sigma^2, smaller weight
    assert hist["loss_weight_race"][-1] < hist["loss_weight_gender"][-1]
    assert hist["loss_weight_gender"][0] != hist["loss_weight_gender"][-1]  # learnt, not fixed
    # The log-variances are model variables: they go through a checkpoint and come back.
    assert any("log_vars" in v.path for v in trainer.trainable_variables)
    trainer.save_weights(tmp_path / "ckpt.weights.h5")
    lw.log_vars.assign(np.zeros(2, np.float32))
    trainer.load_weights(tmp_path / "ckpt.weights.h5")
    np.testing.assert_allclose(lw.log_vars.numpy(), list(s.values()))


def test_dwa_upweights_the_task_whose_loss_falls_slower():
    lw = weighting.LossWeighting(HEADS, "dwa", temperature=2.0)
    lw.end_epoch({"gender": 1.0, "race": 2.0})
    assert lw.current_weights() == {"gender": 1.0, "race": 1.0}  # w = 1 for the first two epochs
    lw.end_epoch({"gender": 0.5, "race": 1.9})  # gender halves, race barely moves
    w = lw.current_weights()
    assert w["race"] > w["gender"]
    assert sum(w.values()) == pytest.approx(len(HEADS))
    r = np.array([0.5 / 1.0, 1.9 / 2.0])  # K * softmax(r / T)
    expected = 2 * np.exp(r / 2) / np.exp(r / 2).sum()
    np.testing.assert_allclose([w["gender"], w["race"]], expected, rtol=1e-5)


def test_dwa_in_a_real_fit_changes_weights_after_two_epochs():
    _, _, hist = _fit("dwa", 4)
    assert hist["loss_weight_gender"][:2] == [1.0, 1.0]
    # gender's loss keeps falling, the noise head's does not: race gains weight from epoch 3.
    assert hist["loss_weight_race"][2] > 1.0 > hist["loss_weight_gender"][2]


def test_bad_strategy_and_negative_weight_raise():
    with pytest.raises(ValueError, match="magic"):
        weighting.LossWeighting(HEADS, "magic")
    with pytest.raises(ValueError, match="race"):
        weighting.LossWeighting(HEADS, "fixed", {"race": -1.0})


def test_compare_weighting_runs_tiny(tmp_path, data_root):
    import json
    from pathlib import Path

    from train_helpers import tiny_tables

    from studies.weighting import METHODS, compare
    from ff_keras.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml", ["train.verbose=0"])
    table = compare(cfg, tmp_path, epochs=3, tables=tiny_tables(data_root))
    assert list(table.index) == list(METHODS)
    assert table["race_accuracy"].between(0, 1).all() and (table["age_years_mae"] > 0).all()
    # Same initial heads and data, different weighting: the final weights differ as designed.
    assert table.loc["fixed_equal", "final_weight_age_years"] == 1.0
    assert table.loc["fixed_tuned", "final_weight_age_years"] == pytest.approx(cfg.train.loss_weights["age_years"])
    assert table.loc["dwa", "final_weight_race"] != 1.0  # DWA moved after two epochs
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in saved["results"]] == list(METHODS)
    assert "| uncertainty |" in (tmp_path / "results.md").read_text()
