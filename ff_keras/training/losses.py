"""Per-head losses keyed by head name, and the masked mean that combines them with sample weights.

Every head gets an *unreduced* per-sample loss; ``masked_mean`` then divides by the sum of
the head's sample weights rather than the batch size. A UTKFace row has weight 0 on the
``race`` head, so a batch that is half UTKFace still gives ``race`` a full-strength mean
instead of one diluted by the rows that carry no race-7 label.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from ff_keras import labels

PerSampleLoss = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
REGRESSION_LOSSES = ("l1", "huber")
# Huber's delta in years: errors beyond ~5 years are penalised linearly (robust to label noise).
HUBER_DELTA_YEARS = 5.0


class SparseCEFromLogits:
    """Sparse categorical cross-entropy from logits with optional label smoothing.

    Keras' SparseCategoricalCrossentropy has no ``label_smoothing``; integer labels become
    smoothed one-hot targets for ``tf.nn.softmax_cross_entropy_with_logits`` (unreduced,
    Keras' CategoricalCrossentropy formula without its per-call overhead).

    ``class_weights`` (one per class, see ``class_balance_weights``) scale each row's loss by
    the weight of its true class.
    """

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, class_weights: Sequence[float] | None = None):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} entries for {num_classes} classes")
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        self.class_weights = None if class_weights is None else tf.constant(class_weights, tf.float32)

    def __call__(self, y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        ids = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        # Masked rows may carry a placeholder label (e.g. -1); clip so one_hot stays valid,
        # their weight of 0 removes them from the mean anyway.
        ids = tf.clip_by_value(ids, 0, self.num_classes - 1)
        eps = self.label_smoothing
        target = tf.one_hot(ids, self.num_classes, on_value=1.0 - eps + eps / self.num_classes,
                            off_value=eps / self.num_classes, dtype=tf.float32)
        loss = tf.nn.softmax_cross_entropy_with_logits(target, tf.cast(logits, tf.float32))
        return loss if self.class_weights is None else loss * tf.gather(self.class_weights, ids)


def class_balance_weights(class_ids: np.ndarray, num_classes: int, power: float) -> np.ndarray:
    """Per-class loss weights ``n_c ** -power``, scaled to average 1 over the rows ``class_ids``.

    power 0 = off, 0.5 = inverse square root of the class frequency, 1 = every class counts as
    much as the others in total (sklearn's "balanced"). The mean of 1 keeps the head's loss
    scale, so ``loss_weights`` keep their meaning.
    """
    if not 0.0 <= power <= 1.0:
        raise ValueError(f"class balance power must be in [0, 1], got {power}")
    counts = np.bincount(np.asarray(class_ids, np.int64), minlength=num_classes).astype(np.float64)
    if (counts == 0).any():
        raise ValueError(f"classes {np.flatnonzero(counts == 0).tolist()} have no training rows; cannot balance")
    weights = counts**-power
    return weights * counts.sum() / (weights * counts).sum()


class RegressionLoss:
    """L1 or Huber loss on a (B, 1) regression output, per sample."""

    def __init__(self, kind: str = "huber"):
        if kind not in REGRESSION_LOSSES:
            raise ValueError(f"unknown age_years loss {kind!r}; expected one of {REGRESSION_LOSSES}")
        self.kind = kind

    def __call__(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        y_true = tf.reshape(tf.cast(y_true, tf.float32), [-1, 1])
        # NaN ages (FairFace rows) are masked by weight 0, but NaN * 0 is still NaN.
        y_true = tf.where(tf.math.is_finite(y_true), y_true, tf.zeros_like(y_true))
        err = tf.abs(tf.reshape(tf.cast(y_pred, tf.float32), [-1, 1]) - y_true)[:, 0]
        if self.kind == "l1":
            return err
        quad = tf.minimum(err, HUBER_DELTA_YEARS)  # Huber: quadratic near 0, linear beyond delta
        return 0.5 * quad**2 + HUBER_DELTA_YEARS * (err - quad)


def build_losses(
    heads: Sequence[str], label_smoothing: float = 0.0, age_years_loss: str = "huber",
    class_weights: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, PerSampleLoss]:
    """Per-sample loss per head: cross-entropy for class heads (optionally class-weighted),
    L1/Huber for ``age_years``."""
    class_weights = dict(class_weights or {})
    stray = [h for h in class_weights if h not in heads or h not in labels.HEAD_CLASSES]
    if stray:
        raise ValueError(f"class weights for {stray}, which are not class heads of this model ({list(heads)})")
    out: dict[str, PerSampleLoss] = {}
    for head in heads:
        if head in labels.HEAD_CLASSES:
            out[head] = SparseCEFromLogits(len(labels.HEAD_CLASSES[head]), label_smoothing, class_weights.get(head))
        elif head in labels.REGRESSION_HEADS:
            out[head] = RegressionLoss(age_years_loss)
        else:
            known = sorted(labels.HEAD_CLASSES) + list(labels.REGRESSION_HEADS)
            raise ValueError(f"no loss for head {head!r}; known heads: {known}")
    return out


def masked_mean(per_sample: tf.Tensor, weight: tf.Tensor | None) -> tf.Tensor:
    """Weighted mean over the rows whose weight is > 0 (0 when a batch has none)."""
    per_sample = tf.reshape(tf.cast(per_sample, tf.float32), [-1])
    if weight is None:
        return tf.reduce_mean(per_sample)
    weight = tf.reshape(tf.cast(weight, tf.float32), [-1])
    return tf.math.divide_no_nan(tf.reduce_sum(per_sample * weight), tf.reduce_sum(weight))


def head_losses(
    losses: Mapping[str, PerSampleLoss],
    y_true: Mapping[str, tf.Tensor],
    y_pred: Mapping[str, tf.Tensor],
    sample_weight: Mapping[str, tf.Tensor] | None = None,
) -> dict[str, tf.Tensor]:
    """Scalar masked-mean loss per head."""
    missing = [h for h in losses if h not in y_true or h not in y_pred]
    if missing:
        raise ValueError(
            f"heads {missing} lack labels or outputs; labels have {sorted(y_true)}, outputs {sorted(y_pred)}"
        )
    sw = sample_weight or {}
    return {h: masked_mean(fn(y_true[h], y_pred[h]), sw.get(h)) for h, fn in losses.items()}
