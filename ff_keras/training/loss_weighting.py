"""How per-head losses are combined into one: fixed, uncertainty (Kendall 2018) or DWA (Liu 2019).

One Keras layer holds the state of every strategy as variables, so the learnt log-variances
and DWA's loss memory are saved with the training checkpoint (BackupAndRestore) and a
resumed run continues with the same weights.

* fixed:        total = sum_k b_k L_k                     (b = ``train.loss_weights``)
* uncertainty:  total = sum_k c_k b_k exp(-s_k) L_k + s_k / 2, s_k = log sigma_k^2 learnt;
                c_k = 1 for classification, 1/2 for regression (Kendall et al. eq. 7 / 10).
                At the optimum exp(-s_k) ~ 1 / L_k, so a noisier task gets a smaller weight.
* dwa:          total = sum_k b_k w_k L_k with w_k = K softmax_k(r_k / T), r_k = L_k(t-1) / L_k(t-2)
                (epoch-mean training losses; w = 1 for the first two epochs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from ff_keras import labels

STRATEGIES = ("fixed", "uncertainty", "dwa")


@keras.saving.register_keras_serializable(package="ff_keras")
class LossWeighting(keras.layers.Layer):
    """Combines per-head scalar losses into the training objective.

    Args:
        heads: head names, in a fixed order.
        strategy: one of ``STRATEGIES``.
        base_weights: ``{head: b_k}``; heads absent default to 1.0.
        temperature: DWA's T (2 in the paper).
    """

    def __init__(
        self,
        heads: Sequence[str],
        strategy: str = "fixed",
        base_weights: Mapping[str, float] | None = None,
        temperature: float = 2.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown loss_weighting {strategy!r}; expected one of {STRATEGIES}")
        if temperature <= 0:
            raise ValueError(f"DWA temperature must be > 0, got {temperature}")
        base_weights = dict(base_weights or {})
        unknown = sorted(set(base_weights) - set(heads))
        # Weights for heads the model lacks are ignored (a config may list race_utk for a
        # FairFace-only run); negative weights are an error.
        bad = {h: w for h, w in base_weights.items() if w < 0}
        if bad:
            raise ValueError(f"loss weights must be >= 0, got {bad}")
        self.heads = list(heads)
        self.strategy = strategy
        self.base_weights = {h: float(base_weights.get(h, 1.0)) for h in self.heads}
        self.ignored_weights = unknown
        self.temperature = float(temperature)
        k = len(self.heads)
        self._base = np.array([self.base_weights[h] for h in self.heads], np.float32)
        self._coef = np.array([0.5 if h in labels.REGRESSION_HEADS else 1.0 for h in self.heads], np.float32)
        self.log_vars = self.add_weight(
            shape=(k,), initializer="zeros", trainable=strategy == "uncertainty", name="log_vars"
        )
        self.dwa_weights = self.add_weight(shape=(k,), initializer="ones", trainable=False, name="dwa_weights")
        # Epoch-mean losses of the last two epochs (row 0 = older) and how many were seen.
        self.loss_memory = self.add_weight(shape=(2, k), initializer="zeros", trainable=False, name="loss_memory")
        self.epochs_seen = self.add_weight(shape=(), initializer="zeros", trainable=False, name="epochs_seen")

    def combine(self, losses: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Total loss from per-head scalar losses (graph-safe)."""
        stacked = tf.stack([tf.cast(losses[h], tf.float32) for h in self.heads])
        base = tf.constant(self._base)
        if self.strategy == "uncertainty":
            s = tf.cast(self.log_vars, tf.float32)
            terms = tf.constant(self._coef) * base * tf.exp(-s) * stacked + 0.5 * s
            # A head with b_k = 0 is switched off entirely, its log-variance included.
            terms = tf.where(base > 0, terms, tf.zeros_like(terms))
            return tf.reduce_sum(terms)
        if self.strategy == "dwa":
            return tf.reduce_sum(base * tf.cast(self.dwa_weights, tf.float32) * stacked)
        return tf.reduce_sum(base * stacked)

    def current_weights(self) -> dict[str, float]:
        """Effective multiplier on each head's loss right now (for logging)."""
        if self.strategy == "uncertainty":
            w = self._coef * self._base * np.exp(-np.asarray(self.log_vars.numpy()))
        elif self.strategy == "dwa":
            w = self._base * np.asarray(self.dwa_weights.numpy())
        else:
            w = self._base
        return {h: float(v) for h, v in zip(self.heads, w)}

    def end_epoch(self, epoch_losses: Mapping[str, float]) -> None:
        """Records one epoch's mean training losses; DWA recomputes its weights from them."""
        missing = [h for h in self.heads if h not in epoch_losses]
        if missing:
            raise ValueError(f"end_epoch needs a loss for every head; missing {missing}")
        now = np.array([epoch_losses[h] for h in self.heads], np.float32)
        mem = np.asarray(self.loss_memory.numpy())
        mem = np.stack([mem[1], now])
        seen = int(self.epochs_seen.numpy()) + 1
        self.loss_memory.assign(mem)
        self.epochs_seen.assign(float(seen))
        if self.strategy == "dwa" and seen >= 2:
            # r_k = L_k(t-1) / L_k(t-2); a head whose loss falls slower (larger r) gets more weight.
            ratio = np.where(mem[0] > 0, mem[1] / np.maximum(mem[0], 1e-12), 1.0)
            z = np.exp((ratio - ratio.max()) / self.temperature)
            self.dwa_weights.assign((len(self.heads) * z / z.sum()).astype(np.float32))

    def get_config(self) -> dict:
        cfg = super().get_config()
        cfg.update(
            heads=self.heads, strategy=self.strategy, base_weights=self.base_weights, temperature=self.temperature
        )
        return cfg


class LossWeightingCallback(keras.callbacks.Callback):
    """Feeds each epoch's per-head training losses to the weighting and logs its weights.

    Writes ``loss_weight_<head>`` into the epoch logs (before CSV/W&B callbacks read them):
    the weights that were in force during the epoch that just ended.
    """

    def __init__(self, weighting: LossWeighting):
        super().__init__()
        self.weighting = weighting

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        for head, w in self.weighting.current_weights().items():
            logs[f"loss_weight_{head}"] = w
        self.weighting.end_epoch({h: float(logs[f"{h}_loss"]) for h in self.weighting.heads})
