"""Per-head losses (masking, label smoothing, age regression) and per-head metrics vs sklearn."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import balanced_accuracy_score, f1_score

from ff_keras.training import losses, head_metrics as metrics

RNG = np.random.default_rng(0)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_cross_entropy_matches_numpy_with_label_smoothing():
    logits = RNG.normal(size=(6, 7)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 6])
    eps = 0.1
    target = np.full((6, 7), eps / 7) + (1 - eps) * np.eye(7)[y]
    expected = -(target * np.log(_softmax(logits))).sum(-1)
    got = losses.SparseCEFromLogits(7, label_smoothing=eps)(tf.constant(y), tf.constant(logits))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    plain = losses.SparseCEFromLogits(7)(tf.constant(y), tf.constant(logits)).numpy()
    assert not np.allclose(plain, expected)  # smoothing changes the loss


def test_masked_rows_do_not_change_the_head_loss():
    fns = losses.build_losses(["race", "age_years"])
    logits = RNG.normal(size=(4, 7)).astype(np.float32)
    w = {"race": np.array([1, 1, 0, 0], np.float32), "age_years": np.array([0, 0, 1, 1], np.float32)}
    y1 = {"race": np.array([1, 2, 3, 4]), "age_years": np.array([np.nan, np.nan, 30.0, 50.0], np.float32)}
    y2 = {"race": np.array([1, 2, 0, 6]), "age_years": np.array([np.nan, 99.0, 30.0, 50.0], np.float32)}
    pred = {"race": logits, "age_years": np.array([[1.0], [2.0], [31.0], [40.0]], np.float32)}
    a = losses.head_losses(fns, y1, pred, w)
    b = losses.head_losses(fns, y2, pred, w)
    for head in a:
        assert np.isfinite(a[head].numpy()), head  # NaN ages of masked rows never leak in
        np.testing.assert_allclose(a[head].numpy(), b[head].numpy())
    # Mean over the labelled rows, not over the batch: Huber(1) = 0.5, Huber(10, delta 5) = 37.5
    np.testing.assert_allclose(a["age_years"].numpy(), (0.5 + 37.5) / 2, rtol=1e-6)


def test_l1_loss_and_unknown_names_raise():
    l1 = losses.RegressionLoss("l1")
    np.testing.assert_allclose(l1(tf.constant([10.0]), tf.constant([[13.0]])).numpy(), [3.0])
    with pytest.raises(ValueError, match="mse"):
        losses.RegressionLoss("mse")
    with pytest.raises(ValueError, match="hair"):
        losses.build_losses(["hair"])
    with pytest.raises(ValueError, match="race"):
        losses.head_losses(losses.build_losses(["race"]), {}, {})


def _update(metric, y, pred, w):
    metric.update_state(tf.constant(y), tf.constant(pred), sample_weight=tf.constant(w))
    return float(metric.result())


def test_confusion_metrics_match_sklearn_and_ignore_masked_rows():
    y = RNG.integers(0, 7, size=60)
    logits = RNG.normal(size=(60, 7)).astype(np.float32) + 2 * np.eye(7)[y] * (RNG.random((60, 1)) > 0.4)
    w = (RNG.random(60) > 0.3).astype(np.float32)
    keep = w > 0
    pred = logits.argmax(-1)
    by_name = {m.name: m for m in metrics.head_metrics("race")}
    assert _update(by_name["race_balanced_accuracy"], y, logits, w) == pytest.approx(
        balanced_accuracy_score(y[keep], pred[keep]), abs=1e-6)
    assert _update(by_name["race_macro_f1"], y, logits, w) == pytest.approx(
        f1_score(y[keep], pred[keep], average="macro"), abs=1e-6)
    assert _update(by_name["race_accuracy"], y, logits, w) == pytest.approx(
        (y[keep] == pred[keep]).mean(), abs=1e-6)


def test_age_metrics_off_by_one_top2_and_mae():
    y = np.array([0, 3, 5, 8])
    logits = np.zeros((4, 9), np.float32)
    logits[[0, 1, 2, 3], [1, 3, 7, 0]] = 5.0  # off by 1, exact, off by 2, off by 8
    logits[[0, 1, 2, 3], [0, 4, 5, 2]] = 4.0  # second choices
    w = np.array([1, 1, 1, 0], np.float32)
    by_name = {m.name: m for m in metrics.head_metrics("age")}
    assert _update(by_name["age_off_by_one"], y, logits, w) == pytest.approx(2 / 3)
    assert _update(by_name["age_top2"], y, logits, w) == pytest.approx(1.0)
    mae = metrics.head_metrics("age_years")[0]
    got = _update(mae, np.array([20.0, np.nan, 40.0], np.float32), np.array([[25.0], [0.0], [30.0]], np.float32),
                  np.array([1, 0, 1], np.float32))
    assert got == pytest.approx(7.5)


def test_class_balance_weights_follow_the_counts_and_keep_the_loss_scale():
    from sklearn.utils.class_weight import compute_class_weight

    ids = np.array([0] * 60 + [1] * 30 + [2] * 10)
    full = losses.class_balance_weights(ids, 3, 1.0)
    np.testing.assert_allclose(full, compute_class_weight("balanced", classes=np.arange(3), y=ids))
    sqrt = losses.class_balance_weights(ids, 3, 0.5)
    np.testing.assert_allclose(sqrt[2] / sqrt[0], np.sqrt(6.0))
    for w in (full, sqrt):
        assert np.isclose(w[ids].mean(), 1.0)  # mean weight 1 over the rows
    np.testing.assert_allclose(losses.class_balance_weights(ids, 3, 0.0), 1.0)
    with pytest.raises(ValueError, match=r"classes \[3\] have no training rows"):
        losses.class_balance_weights(ids, 4, 0.5)
    with pytest.raises(ValueError, match="power must be in"):
        losses.class_balance_weights(ids, 3, 2.0)


def test_class_weighted_cross_entropy_scales_each_row_by_its_class():
    logits = RNG.normal(size=(5, 7)).astype(np.float32)
    y = np.array([0, 6, 6, 2, 0])
    weights = np.arange(1, 8, dtype=np.float32)
    plain = losses.SparseCEFromLogits(7)(tf.constant(y), tf.constant(logits)).numpy()
    weighted = losses.build_losses(["race"], class_weights={"race": weights})["race"]
    np.testing.assert_allclose(weighted(tf.constant(y), tf.constant(logits)).numpy(), plain * weights[y], rtol=1e-6)
    with pytest.raises(ValueError, match=r"class weights for \['gender'\]"):
        losses.build_losses(["race"], class_weights={"gender": [1.0, 1.0]})
    with pytest.raises(ValueError, match="3 entries for 7 classes"):
        losses.SparseCEFromLogits(7, class_weights=[1.0, 1.0, 1.0])
