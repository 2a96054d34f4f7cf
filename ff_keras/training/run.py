"""Training run: data -> model -> staged fit with callbacks -> best model + val metrics in a run folder.

``train(cfg)`` is the library behind ``scripts/train.py``. A run lives in
``<output_dir>/<name>-<run_id>/`` and holds ``config.yaml`` (resolved config, with the run id
filled in), ``command.txt`` (every command line that ran it), ``history.csv`` (one row per
epoch over all stages), ``best/model.keras`` + ``model_info.json``, ``val_metrics.json``,
confusion-matrix PNGs, the embedding cache and ``checkpoints/``. Giving the same run id again
resumes: finished stages are skipped and the current stage restarts from its last epoch
(``keras.callbacks.BackupAndRestore``), so a killed run loses at most the epoch in progress.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import secrets
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.metrics import confusion_matrix

from ff_keras.data import pipeline as data, image_check as validate
from ff_keras.training import distribute, embed_cache, precision
from ff_keras import labels
from ff_keras.splits import build as splits
from ff_keras.models import multihead as model_lib
from ff_keras.data.augment import augment_batch
from ff_keras.config import Config, StageConfig, save_config, to_dict
from ff_keras.convert.pretrained import build_pretrained, resolve_weights
from ff_keras.data.readers import resolve_data_root
from ff_keras.training.losses import build_losses, class_balance_weights, head_losses
from ff_keras.model_info import ModelInfo
from ff_keras.paths import repo_path
from ff_keras.training.tracking import Tracker, TrackingCallback
from ff_keras.training.trainer import (
    BestModelSaver,
    LearningRateLogger,
    MultiTaskTrainer,
    lr_schedule,
    make_optimizer,
    monitor_mode,
)
from ff_keras.training.loss_weighting import LossWeighting, LossWeightingCallback

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    model_path: Path  # best/model.keras (selected on train.monitor)
    history: dict[str, list[float]]  # every epoch of every stage, resumed ones included
    val_metrics: dict[str, float]


def prepare_run(cfg: Config, argv: Sequence[str]) -> tuple[Config, Path, bool]:
    """Resolves the run id, creates the folder, saves config + command; says if it resumes."""
    cfg = copy.deepcopy(cfg)
    cfg.train.run_id = cfg.train.run_id or datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = run_folder(cfg)
    resumed = (run_dir / "config.yaml").exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resumed:
        save_config(cfg, run_dir / "config.yaml")
    with open(run_dir / "command.txt", "a") as f:
        f.write(f"{datetime.now().isoformat(timespec='seconds')}\t{shlex.join([sys.executable, *argv])}\n")
    return cfg, run_dir, resumed


def run_folder(cfg: Config) -> Path:
    """``<output_dir>/<name>-<run_id>`` (a relative output_dir is relative to the repo)."""
    return repo_path(cfg.output_dir) / f"{cfg.name}-{cfg.train.run_id}"


def subsample(table: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A seeded subset of ``n`` rows stratified by source, gender and race (all rows if n<=0)."""
    if n <= 0 or n >= len(table):
        return table.reset_index(drop=True)
    from sklearn.model_selection import train_test_split

    strata = table["source"] + "|" + table["gender"].astype(str) + "|" + table["race"].astype(str)
    try:
        keep, _ = train_test_split(table, train_size=n, stratify=strata, random_state=seed)
    except ValueError:  # a stratum too small for n: fall back to a plain seeded sample
        keep = table.sample(n=n, random_state=seed)
    return keep.sort_index().reset_index(drop=True)


def load_tables(cfg: Config, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train/val rows from the committed manifests, limited and pre-flight checked."""
    out = []
    for split, limit in (("train", cfg.data.limit_train), ("val", cfg.data.limit_eval)):
        table = subsample(splits.load_split(cfg.data.manifests_dir, cfg.data.sources, split), limit, cfg.data.seed)
        if cfg.data.validate_files:
            table, bad = validate.drop_unreadable(table, root)
            for rel, why in bad:
                log.warning("dropped unreadable %s image %s: %s", split, rel, why)
        out.append(table)
    return out[0], out[1]


def resolve_stages(cfg: Config) -> list[StageConfig]:
    """``train.stages``, or one stage made of ``train.epochs/lr`` and ``model.freeze_*``."""
    if cfg.train.stages:
        return list(cfg.train.stages)
    return [StageConfig(cfg.train.epochs, cfg.train.lr, cfg.model.freeze_backbone, cfg.model.freeze_up_to)]


class CSVHistory(keras.callbacks.Callback):
    """Appends one row per epoch to a CSV; unlike CSVLogger it tolerates columns that differ
    between stages and replaces a row when a resumed run repeats an epoch."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row = pd.DataFrame([{"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}}])
        old = pd.read_csv(self.path) if self.path.exists() else None
        if old is not None:
            row = pd.concat([old[old["epoch"] != epoch], row], ignore_index=True)
        row.sort_values("epoch").to_csv(self.path, index=False)


def _before_save(sync, weighting: LossWeighting, info: ModelInfo):
    """Copies cached-phase heads into the net and records the loss weighting's state
    (effective weights, uncertainty log-variances) in the sidecar of the saved model."""

    def hook() -> None:
        if sync is not None:
            sync()
        info.extra["loss_weights"] = weighting.current_weights()
        info.extra["log_vars"] = dict(zip(weighting.heads, map(float, weighting.log_vars.numpy())))

    return hook


def _augment(aug_cfg, x, training: bool, seed):
    """In-step augmentation (``MultiTaskTrainer`` passes ``x, training, seed``)."""
    return augment_batch(x, aug_cfg, seed, training)


def _save_state(net, weighting, path: Path) -> None:
    net.save_weights(path.with_suffix(".weights.h5"))
    np.savez(path.with_suffix(".weighting.npz"), *weighting.get_weights())


def _load_state(net, weighting, path: Path) -> None:
    net.load_weights(path.with_suffix(".weights.h5"))
    with np.load(path.with_suffix(".weighting.npz")) as z:
        weighting.set_weights([z[f"arr_{i}"] for i in range(len(z.files))])


def train(
    cfg: Config,
    argv: Sequence[str] | None = None,
    tables: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> TrainResult:
    """Runs (or resumes) the staged training described by ``cfg``.

    Args:
        cfg: resolved config (``config.load_config``).
        argv: command line to record (default ``sys.argv``).
        tables: (train, val) tables to use instead of the split manifests.
        extra_callbacks: appended after the built-in ones (tests use one to interrupt a run).
    """
    previous_policy = keras.mixed_precision.global_policy().name
    try:
        return _train(cfg, argv, tables, extra_callbacks)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)  # don't leak into the caller


@dataclass
class FitInputs:
    """What one stage fits: the network (full, or a head-only copy on cached embeddings), its
    data, steps source, in-step augmentation and how its weights get back into the full net."""

    net: keras.Model
    train: tf.data.Dataset
    val: tf.data.Dataset
    n_rows: int
    prepare: Callable | None = None  # (x, training, seed) -> inputs; None = plain cast
    sync: Callable[[], None] | None = None  # copies fitted head weights into the full net
    callbacks: list[keras.callbacks.Callback] = field(default_factory=list)


@dataclass
class _Run:
    """Everything the stages of one run share."""

    cfg: Config
    strategy: tf.distribute.Strategy
    run_dir: Path
    root: Path
    tables: tuple[pd.DataFrame, pd.DataFrame]
    heads: list[str]
    encoders: dict
    train_ds: tf.data.Dataset
    val_ds: tf.data.Dataset
    net: keras.Model
    weighting: LossWeighting
    loss_fns: dict
    tracker: Tracker
    info: ModelInfo


def cached_embeddings(net: keras.Model, train_ds: tf.data.Dataset, val_ds: tf.data.Dataset, folder: Path,
                      flip: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Frozen-backbone embeddings of ``train_ds`` (plus flips) and ``val_ds``, cached in ``folder``."""
    feats = embed_cache.feature_model(net)
    tr = embed_cache.cached(folder / "train.npz", partial(embed_cache.extract, feats, train_ds, flip=flip))
    va = embed_cache.cached(folder / "val.npz", partial(embed_cache.extract, feats, val_ds))
    return tr, va


def embedding_fit_inputs(net: keras.Model, heads: Sequence[str], tr: dict[str, np.ndarray],
                         va: dict[str, np.ndarray], batch_size: int, seed: int,
                         strategy: tf.distribute.Strategy | None = None) -> FitInputs:
    """A head-only copy of ``net`` (its current head weights) fitted on cached embeddings."""
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        heads_net = embed_cache.head_model(net, heads)
    sync = partial(embed_cache.copy_layer_weights, heads_net, net, embed_cache.head_layer_names(net, heads))
    shard = data.sharding_options()
    return FitInputs(
        heads_net,
        embed_cache.to_dataset(tr, heads, batch_size, True, seed).repeat().with_options(shard),
        embed_cache.to_dataset(va, heads, batch_size, False).with_options(shard),
        len(tr["emb"]),
        sync=sync,
    )


def fit_inputs(run: _Run, stage: StageConfig, index: int = 0) -> FitInputs:
    """The stage's inputs: cached embeddings for a frozen backbone (when enabled), else images.

    Each stage ``index`` > 0 caches in its own folder: a frozen stage after a fine-tuning one
    must embed with the fine-tuned backbone, not reuse the first stage's embeddings.
    """
    cfg = run.cfg
    if stage.freeze_backbone and cfg.train.cache_frozen_embeddings:
        plain = data.make_dataset(run.tables[0], run.root, cfg, False, run.encoders)
        folder = run.run_dir / ("embeddings" if index == 0 else f"embeddings_stage{index}")
        tr, va = cached_embeddings(run.net, plain, run.val_ds, folder, cfg.train.cache_flip)
        return embedding_fit_inputs(run.net, run.heads, tr, va, cfg.data.batch_size, cfg.train.seed, run.strategy)
    return FitInputs(run.net, run.train_ds.repeat(), run.val_ds, len(run.tables[0]),
                     prepare=partial(_augment, cfg.augment), callbacks=[run.train_ds.bad_file_counter])


def compile_trainer(fit: FitInputs, weighting: LossWeighting, loss_fns: dict, cfg: Config, lr: float,
                    epochs: int, steps: int, seed: int = 0, jit_compile: bool = False,
                    lr_scales: dict[str, float] | None = None) -> MultiTaskTrainer:
    """``MultiTaskTrainer`` over ``fit.net`` with the configured optimizer and LR schedule
    (``lr_scales``: per-variable multipliers, e.g. ``multihead.layer_lr_scales``)."""
    trainer = MultiTaskTrainer(fit.net, weighting, loss_fns, fit.prepare, seed=seed)
    schedule = lr_schedule(lr, epochs, steps, cfg.train.warmup_epochs)
    trainer.compile(optimizer=make_optimizer(cfg.train.optimizer, schedule, cfg.model.weight_decay, lr_scales),
                    jit_compile=jit_compile)
    return trainer


def stage_callbacks(weighting: LossWeighting, tracker: Tracker,
                    between: Sequence[keras.callbacks.Callback] = ()) -> list[keras.callbacks.Callback]:
    """Loss-weight and LR logging first (they write into the epoch logs), tracking last."""
    return [LossWeightingCallback(weighting), LearningRateLogger(), *between, TrackingCallback(tracker)]


def balanced_class_weights(table: pd.DataFrame, heads: list[str], encoders: dict,
                           powers: dict[str, float]) -> dict[str, np.ndarray]:
    """``train.class_balance`` -> per-class loss weights from the training rows' label counts."""
    unknown = [h for h in powers if h not in encoders]
    if unknown:
        raise ValueError(f"train.class_balance names {unknown}, not class heads of this run ({sorted(encoders)})")
    ys, ws = data.encode_labels(table, list(powers), encoders)
    out = {}
    for head, power in powers.items():
        out[head] = class_balance_weights(ys[head][ws[head] > 0], len(labels.HEAD_CLASSES[head]), float(power))
        print(f"class-balanced {head} loss (power {power}): "
              + ", ".join(f"{c} {w:.2f}" for c, w in zip(labels.HEAD_CLASSES[head], out[head])), flush=True)
    return out


def _start_run(cfg: Config, argv, tables) -> _Run:
    """Strategy, run folder, data, model, loss weighting, tracker and sidecar of a run."""
    # First: logical devices and collectives must be set up before the TF runtime starts.
    strategy = distribute.get_strategy(cfg.train.distribute, cfg.train.logical_devices)
    if not distribute.is_chief(strategy):  # same code on every worker; only the chief writes
        if not cfg.train.run_id:
            raise ValueError("train.distribute=multi_worker needs the same train.run_id on every worker")
        cfg.output_dir = str(distribute.worker_dir(run_folder(cfg), strategy))
        cfg.wandb.mode = "disabled"
    if cfg.model.weights:  # before the config is saved: the run records the exact file
        cfg.model.weights = str(resolve_weights(cfg.model.weights, cfg.model.backbone))
    cfg, run_dir, resumed = prepare_run(cfg, sys.argv if argv is None else argv)
    print(f"{'resuming' if resumed else 'starting'} run {run_dir}", flush=True)
    keras.utils.set_random_seed(cfg.train.seed)
    policy = precision.set_policy(cfg.train.mixed_precision)
    root = resolve_data_root(cfg.data.root)
    train_t, val_t = tables if tables is not None else load_tables(cfg, root)
    heads = data.dataset_heads(cfg)
    encoders = data.fit_encoders(train_t, heads)
    train_ds = data.make_dataset(train_t, root, cfg, True, encoders)
    val_ds = data.make_dataset(val_t, root, cfg, False, encoders)
    bs = cfg.data.batch_size
    replicas = {"strategy": cfg.train.distribute, "replicas": strategy.num_replicas_in_sync,
                "global_batch": bs, "per_replica_batch": distribute.per_replica_batch(bs, strategy)}
    print(f"train {len(train_t)} rows, val {len(val_t)} rows, heads {heads}, precision {policy}, "
          f"{replicas}", flush=True)
    with strategy.scope():
        net = build_pretrained(cfg)
        weighting = LossWeighting(heads, cfg.train.loss_weighting, cfg.train.loss_weights, cfg.train.dwa_temperature)
    class_weights = balanced_class_weights(train_t, heads, encoders, cfg.train.class_balance)
    loss_fns = build_losses(heads, cfg.train.label_smoothing, cfg.train.age_years_loss, class_weights)
    info = ModelInfo(cfg.data.image_size, cfg.model.backbone,
                     heads=[h for h in heads if h in labels.HEAD_CLASSES],
                     extra={"regression_heads": [h for h in heads if h in labels.REGRESSION_HEADS],
                            "run": run_dir.name, "loss_weighting": cfg.train.loss_weighting,
                            # read back from the losses themselves: what training really weighs
                            "class_weights": {h: [round(float(v), 4) for v in fn.class_weights.numpy()]
                                              for h, fn in loss_fns.items()
                                              if getattr(fn, "class_weights", None) is not None},
                            "distribute": replicas})
    return _Run(cfg, strategy, run_dir, root, (train_t, val_t), heads, encoders, train_ds, val_ds, net, weighting,
                loss_fns, _run_tracker(cfg, run_dir, policy), info)


def _run_tracker(cfg: Config, run_dir: Path, policy: str) -> Tracker:
    """The run's W&B tracker; its id is kept in the run folder so a resumed run continues it."""
    id_file = run_dir / "wandb_id.txt"
    if not id_file.exists():
        id_file.write_text(secrets.token_hex(4))
    w = cfg.wandb
    return Tracker(w.mode, w.project, run_dir, run_dir.name, {**to_dict(cfg), "precision": policy},
                   w.group, w.tags, id_file.read_text().strip(), w.dir or None)


def _fit_stage(run: _Run, i: int, stage: StageConfig, epoch0: int, extra_callbacks) -> None:
    """Trains one stage from ``epoch0`` and saves its end state (``stage<i>_done``)."""
    cfg, net, weighting = run.cfg, run.net, run.weighting
    model_lib.set_trainable(net, stage.freeze_backbone, stage.freeze_up_to)
    fast = stage.freeze_backbone and cfg.train.cache_frozen_embeddings
    print(f"stage {i}: {stage.epochs} epoch(s), lr {stage.lr}, freeze_backbone={stage.freeze_backbone}, "
          f"freeze_up_to={stage.freeze_up_to}{', cached embeddings' if fast else ''}", flush=True)
    fit = fit_inputs(run, stage, i)
    steps = stage.steps_per_epoch or cfg.train.steps_per_epoch or max(1, fit.n_rows // cfg.data.batch_size)
    lr_scales = {} if fast else model_lib.layer_lr_scales(net, cfg.train.layer_lr_decay)
    with run.strategy.scope():
        trainer = compile_trainer(fit, weighting, run.loss_fns, cfg, stage.lr, stage.epochs, steps,
                                  seed=cfg.train.seed + i, jit_compile=cfg.train.jit_compile, lr_scales=lr_scales)
    ckpt = run.run_dir / "checkpoints"
    callbacks = stage_callbacks(weighting, run.tracker, [
        *fit.callbacks,
        BestModelSaver(net, run.run_dir / "best", cfg.train.monitor, run.info,
                       _before_save(fit.sync, weighting, run.info)),
        keras.callbacks.BackupAndRestore(str(ckpt / f"backup_stage{i}")),
        CSVHistory(run.run_dir / "history.csv"),
    ])
    if cfg.train.early_stopping_patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(
            cfg.train.monitor, patience=cfg.train.early_stopping_patience, mode=monitor_mode(cfg.train.monitor)))
    trainer.fit(fit.train, validation_data=fit.val, initial_epoch=epoch0, epochs=epoch0 + stage.epochs,
                steps_per_epoch=steps, validation_steps=cfg.train.validation_steps or None,
                callbacks=[*callbacks, *extra_callbacks], verbose=cfg.train.verbose, shuffle=False)
    if fit.sync is not None:
        fit.sync()
    _save_state(net, weighting, ckpt / f"stage{i}_done")


def _train(cfg, argv, tables, extra_callbacks) -> TrainResult:
    run = _start_run(copy.deepcopy(cfg), argv, tables)
    ckpt = run.run_dir / "checkpoints"
    ckpt.mkdir(exist_ok=True)
    epoch0 = 0
    for i, stage in enumerate(resolve_stages(run.cfg)):
        done = ckpt / f"stage{i}_done"
        if done.with_suffix(".weights.h5").exists():
            _load_state(run.net, run.weighting, done)
            print(f"stage {i}: already finished, restored", flush=True)
        else:
            _fit_stage(run, i, stage, epoch0, extra_callbacks)
        epoch0 += stage.epochs
    best = run.run_dir / "best" / "model.keras"
    val_metrics = final_validation(best, run.val_ds, run.heads, run.weighting, run.loss_fns, run.tracker,
                                   run.run_dir)
    run.tracker.finish()
    history = pd.read_csv(run.run_dir / "history.csv").to_dict(orient="list")
    if not distribute.is_chief(run.strategy):  # a non-chief's copies were needed only while its collectives ran
        shutil.rmtree(run.cfg.output_dir, ignore_errors=True)
    print(f"done: best model {best}", flush=True)
    return TrainResult(run.run_dir, best, history, val_metrics)


def final_validation(model_path: Path, val_ds, heads, weighting, loss_fns, tracker: Tracker,
                     run_dir: Path) -> dict[str, float]:
    """Evaluates the saved best model on val: metrics JSON, confusion PNGs, W&B table/images.

    One pass: a traced forward per batch, metrics updated eagerly (no second test_step trace).
    """
    if not model_path.exists():
        raise FileNotFoundError(f"no best model was saved at {model_path} (train.monitor never finite?)")
    best = keras.models.load_model(model_path)
    scorer = MultiTaskTrainer(best, weighting, loss_fns)
    forward = tf.function(lambda x: best(tf.cast(x, tf.float32), training=False))
    truth: dict[str, list] = {h: [] for h in heads}
    preds: dict[str, list] = {h: [] for h in heads}
    weights: dict[str, list] = {h: [] for h in heads}
    for images, y, w in val_ds:
        out = forward(images)
        per_head = head_losses(loss_fns, y, out, w)
        scorer.update_metrics(per_head, weighting.combine(per_head), y, out, w)
        for h in heads:
            truth[h].append(np.asarray(y[h]))
            preds[h].append(np.asarray(out[h]))
            weights[h].append(np.asarray(w[h]))
    metrics = {m.name: float(m.result()) for m in scorer.metrics}
    confusions = {}
    for h in heads:
        if h not in labels.HEAD_CLASSES:
            continue
        n = len(labels.HEAD_CLASSES[h])
        mask = np.concatenate(weights[h]) > 0
        if mask.any():
            y_true = np.concatenate(truth[h])[mask]
            y_pred = np.concatenate(preds[h]).argmax(-1)[mask]
            confusions[h] = (confusion_matrix(y_true, y_pred, labels=list(range(n))), labels.HEAD_CLASSES[h])
    (run_dir / "val_metrics.json").write_text(json.dumps(metrics, indent=2))
    tracker.log_final(metrics, confusions, out_dir=run_dir)
    return metrics
