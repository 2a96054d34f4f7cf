"""Keras metrics per head that honour sample weights, so rows masked for a head never count.

Names follow ``<head>_<metric>`` (``race_accuracy``, ``age_off_by_one``, ``age_years_mae``);
Keras adds the ``val_`` prefix, so ``train.monitor`` reads e.g. ``val_race_accuracy``.
Balanced accuracy and macro-F1 come from a weighted confusion matrix accumulated over the
epoch and divided once at the end (sklearn's definitions, checked in tests).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from ff_keras import labels

CONFUSION_KINDS = ("balanced_accuracy", "macro_f1")


def _ids(y_true: tf.Tensor, n: int) -> tf.Tensor:
    return tf.clip_by_value(tf.reshape(tf.cast(y_true, tf.int32), [-1]), 0, n - 1)


class ConfusionMetric(keras.metrics.Metric):
    """Balanced accuracy or macro-F1 from a sample-weighted confusion matrix.

    Both only average over classes that occur (in y_true; for F1 also in y_pred), like
    sklearn, so a class absent from a small val batch does not drag the score to 0.
    """

    def __init__(self, num_classes: int, kind: str = "balanced_accuracy", name: str | None = None, **kwargs):
        super().__init__(name=name or kind, **kwargs)
        if kind not in CONFUSION_KINDS:
            raise ValueError(f"unknown confusion metric {kind!r}; expected one of {CONFUSION_KINDS}")
        self.num_classes = int(num_classes)
        self.kind = kind
        self.matrix = self.add_variable(
            shape=(self.num_classes, self.num_classes), initializer="zeros", name="matrix", dtype="float32"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        n = self.num_classes
        pred = tf.argmax(tf.reshape(y_pred, [-1, n]), axis=-1, output_type=tf.int32)
        true = _ids(y_true, n)
        w = (tf.ones_like(true, tf.float32) if sample_weight is None
             else tf.reshape(tf.cast(sample_weight, tf.float32), [-1]))
        # one_hot(true)^T @ (w * one_hot(pred)): tf.math.confusion_matrix's runtime asserts
        # make the training step several times slower to trace.
        cm = tf.matmul(tf.one_hot(true, n), tf.one_hot(pred, n) * w[:, None], transpose_a=True)
        self.matrix.assign_add(cm)

    def result(self):
        cm = tf.convert_to_tensor(self.matrix)
        tp = tf.linalg.diag_part(cm)
        support = tf.reduce_sum(cm, axis=1)
        predicted = tf.reduce_sum(cm, axis=0)
        if self.kind == "balanced_accuracy":
            present = support > 0
            per_class = tf.math.divide_no_nan(tp, support)
        else:
            present = (support > 0) | (predicted > 0)
            per_class = tf.math.divide_no_nan(2.0 * tp, support + predicted)
        n_present = tf.reduce_sum(tf.cast(present, tf.float32))
        return tf.math.divide_no_nan(tf.reduce_sum(tf.where(present, per_class, 0.0)), n_present)

    def reset_state(self):
        self.matrix.assign(tf.zeros_like(self.matrix))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "kind": self.kind}


def _accuracy(y_true, y_pred):
    n = tf.shape(y_pred)[-1]
    return tf.cast(tf.equal(_ids(y_true, n), tf.argmax(y_pred, axis=-1, output_type=tf.int32)), tf.float32)


def _off_by_one(y_true, y_pred):
    n = tf.shape(y_pred)[-1]
    pred = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
    return tf.cast(tf.abs(_ids(y_true, n) - pred) <= 1, tf.float32)


def _top2(y_true, y_pred):
    n = tf.shape(y_pred)[-1]
    return tf.cast(tf.math.in_top_k(_ids(y_true, n), tf.cast(y_pred, tf.float32), 2), tf.float32)


def _abs_error(y_true, y_pred):
    y_true = tf.reshape(tf.cast(y_true, tf.float32), [-1])
    y_true = tf.where(tf.math.is_finite(y_true), y_true, tf.zeros_like(y_true))  # NaN rows are masked
    return tf.abs(y_true - tf.reshape(tf.cast(y_pred, tf.float32), [-1]))


def head_metrics(head: str) -> list[keras.metrics.Metric]:
    """The metrics of one head; each is updated with that head's sample weights."""
    if head in labels.REGRESSION_HEADS:
        return [keras.metrics.MeanMetricWrapper(_abs_error, name=f"{head}_mae")]
    if head not in labels.HEAD_CLASSES:
        raise ValueError(f"no metrics for head {head!r}; known: {sorted(labels.HEAD_CLASSES)}")
    n = len(labels.HEAD_CLASSES[head])
    out = [
        keras.metrics.MeanMetricWrapper(_accuracy, name=f"{head}_accuracy"),
        ConfusionMetric(n, "balanced_accuracy", name=f"{head}_balanced_accuracy"),
        ConfusionMetric(n, "macro_f1", name=f"{head}_macro_f1"),
    ]
    if head == "age":  # ordinal bins: near misses matter
        out += [
            keras.metrics.MeanMetricWrapper(_top2, name="age_top2"),
            keras.metrics.MeanMetricWrapper(_off_by_one, name="age_off_by_one"),
        ]
    return out
