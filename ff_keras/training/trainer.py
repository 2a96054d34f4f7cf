"""The training-side Keras model: per-head masked losses, loss weighting, in-step augmentation.

``MultiTaskTrainer`` wraps the functional network from ``ff_keras.models.multihead.build_model`` (or a
head-only network on cached embeddings) and overrides ``train_step``/``test_step``: the
dataset yields uint8 images, augmentation runs inside the step (on the accelerator, not in
tf.data), every head's loss is a masked mean under its sample weights, and a
``LossWeighting`` layer combines them. The wrapped ``net`` is what gets exported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import keras
import tensorflow as tf

from ff_keras.training import losses as losses_lib
from ff_keras.training import head_metrics as metrics_lib
from ff_keras.training.loss_weighting import LossWeighting

Prepare = Callable[[tf.Tensor, bool, tf.Tensor], tf.Tensor]
OPTIMIZERS = ("adam", "adamw", "sgd")


def _step_logs(logs: dict) -> dict:
    """Keras 3.15 mean-reduces step logs over MultiWorkerMirroredStrategy replicas with
    ``reduce(axis=0)``, which fails on scalars; give them that axis there. (Epoch logs are
    recomputed from the synced metric variables, so they are exact either way.)"""
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return {k: tf.reshape(v, [1]) for k, v in logs.items()}
    return logs


class MultiTaskTrainer(keras.Model):
    """Trains ``net`` (dict of logits) on ``(x, labels, sample_weights)`` batches.

    Args:
        net: functional model mapping inputs to ``{head: logits}``.
        weighting: combines per-head losses (its variables train/save with this model).
        head_losses: per-sample loss per head (``losses.build_losses``).
        prepare: ``(x, training, seed) -> float inputs``; augmentation goes here. None = cast.
        seed: base seed of the per-step augmentation seeds.
    """

    def __init__(
        self,
        net: keras.Model,
        weighting: LossWeighting,
        head_losses: Mapping[str, losses_lib.PerSampleLoss],
        prepare: Prepare | None = None,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.net = net
        self.weighting = weighting
        self.head_names = list(head_losses)
        self._loss_fns = dict(head_losses)
        self._prepare = prepare
        self._seed = int(seed)
        self.total_tracker = keras.metrics.Mean(name="loss")
        self.loss_trackers = [keras.metrics.Mean(name=f"{h}_loss") for h in self.head_names]
        self.head_metrics = [(h, m) for h in self.head_names for m in metrics_lib.head_metrics(h)]
        self.built = True  # ``net`` is built already; checkpointing needs this wrapper marked built

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self.total_tracker, *self.loss_trackers, *(m for _, m in self.head_metrics)]

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a tf.distribute strategy Keras 3.15 peeks one batch to build the model here:
        # that opens an extra iterator (a reshuffling pipeline then starts at a different
        # permutation than without the strategy) and all-reduces the batch, which
        # MultiWorkerMirroredStrategy cannot do for uint8 images ("PerReplica ... to a
        # Tensor"). ``net`` is built already; only the optimizer needs its slots, in scope.
        if self._distribute_strategy is None or iterator is None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        with self.distribute_strategy.scope():
            if self.optimizer is not None and not self.optimizer.built:
                self.optimizer.build(self.trainable_variables)
            self._post_build()

    def call(self, x, training: bool = False):
        return self.net(x, training=training)

    def _inputs(self, x, training: bool) -> tf.Tensor:
        if self._prepare is None:
            return tf.cast(x, tf.float32)
        step = tf.cast(self.optimizer.iterations if self.optimizer is not None else 0, tf.int32)
        return self._prepare(x, training, tf.stack([tf.constant(self._seed, tf.int32), step]))

    def update_metrics(self, per_head, total, y, y_pred, sw) -> dict:
        """Updates loss trackers and per-head metrics (each under its head's sample weights)."""
        self.total_tracker.update_state(total)
        for head, tracker in zip(self.head_names, self.loss_trackers):
            tracker.update_state(per_head[head])
        for head, metric in self.head_metrics:
            metric.update_state(y[head], y_pred[head], sample_weight=None if sw is None else sw.get(head))
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
        x = self._inputs(x, training=True)
        with tf.GradientTape() as tape:
            y_pred = self.net(x, training=True)
            per_head = losses_lib.head_losses(self._loss_fns, y, y_pred, sw)
            total = self.weighting.combine(per_head)
            objective = total + tf.add_n([tf.cast(r, tf.float32) for r in self.net.losses] or [0.0])
            # Each replica's gradients are summed, so scale by 1/replicas (no-op without distribution).
            objective = objective / tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(objective)
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        return _step_logs(self.update_metrics(per_head, total, y, y_pred, sw))

    def test_step(self, data):
        x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self.net(self._inputs(x, training=False), training=False)
        per_head = losses_lib.head_losses(self._loss_fns, y, y_pred, sw)
        return _step_logs(self.update_metrics(per_head, self.weighting.combine(per_head), y, y_pred, sw))

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.net(self._inputs(x, training=False), training=False)


def lr_schedule(lr: float, epochs: int, steps_per_epoch: int, warmup_epochs: float):
    """Per-step cosine decay to 0 after a linear warmup from 0 (warmup capped at half the stage)."""
    total = max(1, epochs * steps_per_epoch)
    warmup = min(round(warmup_epochs * steps_per_epoch), total // 2)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=total)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=total - warmup, warmup_target=lr, warmup_steps=warmup
    )


class _ScaledLearningRate:
    """Optimizer mixin: each variable's step uses the learning rate times its scale.

    ``lr_scales`` maps ``variable.path`` to a multiplier (absent = 1); layer-wise LR decay
    (``multihead.layer_lr_scales``) uses it. Adam-type updates are invariant to gradient
    scaling, so the rate itself has to be scaled per variable.
    """

    def __init__(self, *args, lr_scales: Mapping[str, float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_scales = dict(lr_scales or {})
        self._scale_at: list[float] = []

    def build(self, variables):
        super().build(variables)
        # update_step sees the backend variable (no path); its index in the built list is stable.
        self._scale_at = [self.lr_scales.get(v.path, 1.0) for v in variables]

    def _apply_weight_decay(self, variables):
        """Decoupled weight decay is a step of size lr * wd, so it takes the variable's scale too."""
        if self.weight_decay is None or not self.lr_scales:
            return super()._apply_weight_decay(variables)
        groups: dict[float, list] = {}
        for variable in variables:
            groups.setdefault(self.lr_scales.get(variable.path, 1.0), []).append(variable)
        base = self.weight_decay
        try:
            for scale, group in groups.items():
                self.weight_decay = base * scale  # read once per variable while tracing
                super()._apply_weight_decay(group)
        finally:
            self.weight_decay = base

    def update_step(self, gradient, variable, learning_rate):
        scale = self._scale_at[self._get_variable_index(variable)] if self._scale_at else 1.0
        if scale != 1.0:
            learning_rate = keras.ops.cast(learning_rate, variable.dtype) * scale
        return super().update_step(gradient, variable, learning_rate)


class ScaledAdam(_ScaledLearningRate, keras.optimizers.Adam):
    pass


class ScaledAdamW(_ScaledLearningRate, keras.optimizers.AdamW):
    pass


class ScaledSGD(_ScaledLearningRate, keras.optimizers.SGD):
    pass


def make_optimizer(name: str, schedule, weight_decay: float,
                   lr_scales: Mapping[str, float] | None = None) -> keras.optimizers.Optimizer:
    """Adam / AdamW (decoupled decay, not on biases, norms or log-variances) / SGD+momentum.

    ``lr_scales``: per-variable learning-rate multipliers by ``variable.path`` (layer-wise decay).
    """
    if name == "adam":
        return ScaledAdam(schedule, lr_scales=lr_scales)
    if name == "adamw":
        opt = ScaledAdamW(schedule, weight_decay=weight_decay, lr_scales=lr_scales)
        opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "log_vars"])
        return opt
    if name == "sgd":
        return ScaledSGD(schedule, momentum=0.9, nesterov=True, lr_scales=lr_scales)
    raise ValueError(f"unknown train.optimizer {name!r}; expected one of {OPTIMIZERS}")


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the optimizer's current learning rate to the epoch logs as ``lr``."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def monitor_mode(monitor: str) -> str:
    """``min`` for losses and errors, ``max`` for accuracies and scores."""
    return "min" if monitor.endswith(("loss", "mae")) else "max"


class BestModelSaver(keras.callbacks.Callback):
    """Saves ``net`` as ``model.keras`` + ``model_info.json`` whenever ``monitor`` improves.

    The best value is kept in the sidecar, so a resumed run only overwrites the saved model
    with a better one. ``before_save`` lets the cached-embedding phase copy its heads back
    into the full network first.
    """

    def __init__(self, net: keras.Model, folder, monitor: str, info, before_save: Callable[[], None] | None = None):
        super().__init__()
        from ff_keras import model_info as mi

        self._mi = mi
        self.net, self.folder, self.monitor, self.info = net, Path(folder), monitor, info
        self.before_save = before_save
        self.mode = monitor_mode(monitor)
        self.best: float | None = None
        if (self.folder / mi.INFO_NAME).exists():
            self.best = mi.load_info(self.folder / "model.keras").extra.get("monitor_value")

    def _better(self, value: float) -> bool:
        if self.best is None or not math.isfinite(self.best):
            return math.isfinite(value)
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if self.monitor not in logs:
            raise ValueError(f"train.monitor {self.monitor!r} is not among the epoch logs {sorted(logs)}")
        value = float(logs[self.monitor])
        if not self._better(value):
            return
        self.best = value
        if self.before_save is not None:
            self.before_save()
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / "model.tmp.keras"
        self.net.save(tmp)
        tmp.replace(self.folder / "model.keras")
        self.info.extra.update(monitor=self.monitor, monitor_value=value, epoch=epoch + 1)
        self._mi.save_info(self.info, self.folder)
