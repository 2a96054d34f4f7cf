"""Temperature scaling, ECE and reliability data on hand-made and synthetic arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import softmax

from ff_keras.evaluation import calibration as C
from ff_keras.model_info import ModelInfo, load_info, save_info


def test_ece_matches_hand_computed_example():
    # Binary, 4 bins (0, .25], (.25, .5], (.5, .75], (.75, 1].
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.45, 0.55]])
    y = np.array([0, 0, 0, 1])  # correct, wrong, correct, correct
    # Bin (.75, 1]: conf (.9 + .8) / 2 = .85, acc .5 -> gap .35; bin (.5, .75]: conf .575, acc 1 -> .425.
    assert math.isclose(C.ece(probs, y, n_bins=4), (2 * 0.35 + 2 * 0.425) / 4)
    r = C.reliability(probs, y, n_bins=4)
    assert r["count"] == [0, 0, 2, 2]
    assert np.allclose(r["accuracy"], [0, 0, 1.0, 0.5]) and np.allclose(r["confidence"], [0, 0, 0.575, 0.85])


def test_bin_edges_are_right_closed():
    probs = np.array([[0.75, 0.25]])
    assert C.reliability(probs, np.array([0]), n_bins=4)["count"] == [0, 0, 1, 0]


def _overconfident(n=4000, k=5, sharpen=3.0, seed=0):
    """Labels drawn from softmax(z) (calibrated at T=1), reported as softmax(sharpen * z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    p_true = softmax(z, axis=1)
    y = np.array([rng.choice(k, p=p) for p in p_true])
    return softmax(sharpen * z, axis=1), y


def test_temperature_scaling_fixes_overconfidence():
    probs, y = _overconfident()
    t = C.fit_temperature(probs, y)
    assert 2.5 < t < 3.5  # recovers the sharpening factor
    after = C.apply_temperature(probs, t)
    assert C.nll(after, y) < C.nll(probs, y) - 0.1
    assert C.ece(after, y) < C.ece(probs, y) / 2
    # Temperature never changes the predicted class.
    assert (after.argmax(1) == probs.argmax(1)).all()


def test_apply_temperature_round_trips():
    probs, _ = _overconfident(n=50)
    assert np.allclose(C.apply_temperature(C.apply_temperature(probs, 2.0), 0.5), probs, atol=1e-9)
    with pytest.raises(ValueError, match="temperature"):
        C.apply_temperature(probs, 0.0)


def test_bad_labels_raise():
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        C.nll(np.full((2, 2), 0.5), np.array([0, 2]))
    with pytest.raises(ValueError, match="do not match"):
        C.ece(np.full((3, 2), 0.5), np.array([0, 1]))


def test_store_temperature_updates_model_info(tmp_path):
    artifact = tmp_path / "model.keras"
    artifact.write_bytes(b"")
    save_info(ModelInfo(image_size=32, backbone="resnet18", temperature={"age": 1.5}), tmp_path)
    C.store_temperature(artifact, {"race": 1.25})
    assert load_info(artifact).temperature == {"age": 1.5, "race": 1.25}
    with pytest.raises(ValueError, match="colour"):
        C.store_temperature(artifact, {"colour": 2.0})
