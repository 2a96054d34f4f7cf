"""tf.data input pipeline: split table -> uint8 image batches + per-head labels and weights.

One element is ``(images, labels, sample_weights)``:
    images          uint8 ``[B, S, S, 3]`` raw RGB (augmentation and normalisation run on
                    the accelerator inside the training step: 4x less host->device traffic)
    labels          ``{head: int32 [B]}`` class ids in ``labels.HEAD_CLASSES`` order, plus
                    ``{"age_years": float32 [B]}`` when the regression head is on
    sample_weights  ``{head: float32 [B]}``: 1 where the row's source labels that head
                    (``labels.SOURCE_HEADS``), else 0 with label 0
Geometry follows ``preprocess.square_resize_tf`` (centre square crop, then resize).

Bad files: with ``training=True`` an image that fails to decode is skipped
(``Dataset.ignore_errors``) and counted by a ``BadFileCounter``; add the counter to
``model.fit(callbacks=...)`` to get the count logged at every epoch end. Evaluation
datasets never skip (predictions must stay aligned with table rows), so a bad file there
raises; run ``validate.find_unreadable`` / ``drop_unreadable`` on the table first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from ff_keras import labels as L
from ff_keras.config import Config
from ff_keras.data.preprocess import square_resize_tf

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE


# === Ops (each usable eagerly and inside Dataset.map) ===


def decode_image(data: tf.Tensor, dct_method: str = "") -> tf.Tensor:
    """Encoded bytes -> uint8 ``[H, W, 3]``.

    JPEG takes ``decode_jpeg`` (its ``dct_method`` is tunable; CMYK and grayscale come out
    RGB); PNG/GIF/BMP take ``decode_image`` (first frame, gray/RGBA -> RGB).
    """
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method=dct_method),
        lambda: tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def load_image(path: tf.Tensor, size: int, dct_method: str = "") -> tf.Tensor:
    """File path -> uint8 ``[size, size, 3]`` (read, decode, square crop, resize)."""
    return square_resize_tf(decode_image(tf.io.read_file(path), dct_method), size)


# === Labels ===


def dataset_heads(cfg: Config) -> list[str]:
    """Heads the dataset yields labels for: ``cfg.model.heads`` plus ``age_years`` if on."""
    heads = list(cfg.model.heads)
    if cfg.model.age_years_head and "age_years" not in heads:
        heads.append("age_years")
    unknown = [h for h in heads if h not in L.HEAD_COLUMNS]
    if unknown:
        raise ValueError(f"unknown heads {unknown}; known: {sorted(L.HEAD_COLUMNS)}")
    return heads


def fit_encoders(train_table: pd.DataFrame, heads: list[str]) -> dict[str, L.LabelEncoder]:
    """One ``LabelEncoder`` per classification head, fitted on the rows that label it."""
    encoders = {}
    for head in heads:
        if head in L.HEAD_CLASSES:
            rows = train_table.loc[L.labelled_mask(train_table, head)]
            encoders[head] = L.LabelEncoder(head).fit(rows[L.HEAD_COLUMNS[head]], rows["rel_path"].tolist())
    return encoders


def encode_labels(
    table: pd.DataFrame, heads: list[str], encoders: Mapping[str, L.LabelEncoder]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-head label arrays and 0/1 sample weights; an unseen label raises naming its file."""
    ys, ws = {}, {}
    for head in heads:
        mask = L.labelled_mask(table, head)
        values = table.loc[mask, L.HEAD_COLUMNS[head]]
        if head in L.HEAD_CLASSES:
            y = np.zeros(len(table), np.int32)
            y[mask] = encoders[head].transform(values, table.loc[mask, "rel_path"].tolist())
        else:
            y = np.zeros(len(table), np.float32)
            y[mask] = values.to_numpy(np.float32)
        ys[head], ws[head] = y, mask.astype(np.float32)
    return ys, ws


# === Bad-file accounting ===


class BadFileCounter(keras.callbacks.Callback):
    """Counts images the training pipeline skipped; logs the count at each epoch end.

    ``attempted`` is bumped before a file is read, ``decoded`` after it decoded, so
    ``attempted - decoded`` is the number skipped (exact once a pass has finished; while
    a pass runs it may include files still being decoded). The count also appears as
    ``logs["bad_files"]`` (skipped during that epoch).
    """

    def __init__(self):
        super().__init__()
        with tf.init_scope(), tf.device("/cpu:0"):  # tf.data runs on the host
            self.attempted = tf.Variable(0, dtype=tf.int64, trainable=False, name="files_attempted")
            self.decoded = tf.Variable(0, dtype=tf.int64, trainable=False, name="files_decoded")
        self._reported = 0

    @property
    def skipped(self) -> int:
        """Files skipped since the counter was made."""
        return int(self.attempted.numpy() - self.decoded.numpy())

    def wrap(self, fn):
        """Wraps a loader (``index -> (index, image)``) so every call is counted."""

        def counted(*args):
            with tf.control_dependencies([self.attempted.assign_add(1)]):
                out = fn(*args)
            with tf.control_dependencies(tf.nest.flatten(out)):  # count only after a successful decode
                done = self.decoded.assign_add(1)
            with tf.control_dependencies([done]):
                return tf.nest.map_structure(tf.identity, out)

        return counted

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        total = self.skipped
        new, self._reported = total - self._reported, total
        if logs is not None:
            logs["bad_files"] = float(new)
        if new:
            log.warning(
                "epoch %d: skipped %d unreadable image(s) (%d in total); "
                "run scripts/validate_images.py to name them",
                epoch + 1,
                new,
                total,
            )


# === Dataset ===


def parallel_calls(cfg: Config) -> int:
    """``data.parallel_calls`` resolved: 0 = host CPUs, -1 = AUTOTUNE."""
    n = cfg.data.parallel_calls
    if n < -1:
        raise ValueError(f"data.parallel_calls must be >= -1, got {n}")
    return AUTOTUNE if n == -1 else n or os.cpu_count() or 1


def sharding_options() -> tf.data.Options:
    """Sharding for multi-worker input: DATA (each worker keeps every n-th batch).

    Our pipelines start from ``from_tensor_slices`` over a table of paths (or cached
    embeddings), not from a list of files read by a file reader dataset, so FILE sharding
    has nothing to split (AUTO would try FILE, fail and fall back to DATA with a warning).
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def pipeline_options(cfg: Config) -> tf.data.Options:
    """Ordering, autotuning and multi-worker sharding options shared by our datasets."""
    options = sharding_options()  # DATA auto-sharding for multi-worker input
    options.deterministic = cfg.data.deterministic
    options.autotune.enabled = cfg.data.autotune
    return options


def _indexed_images(paths: list[str], cfg: Config, training: bool, counter: BadFileCounter | None) -> tf.data.Dataset:
    """``(row index, uint8 image)`` elements: seeded reshuffle, parallel decode, skip-and-count
    of bad files and the optional cache, for training; table order and strict decoding otherwise."""
    d = cfg.data
    # Elements are row indices: shuffling them is a full-table shuffle for 8 bytes a row, and
    # labels are gathered once per batch instead of travelling with every image.
    paths_t = tf.constant(paths)
    ds = tf.data.Dataset.range(len(paths))
    if training and not d.cache:
        ds = ds.shuffle(len(paths), seed=d.seed, reshuffle_each_iteration=True)

    def load(index):
        return index, load_image(tf.gather(paths_t, index), d.image_size, d.jpeg_dct_method)

    workers = parallel_calls(cfg)
    if training:
        ds = ds.map(counter.wrap(load), num_parallel_calls=workers, deterministic=d.deterministic)
        ds = ds.ignore_errors(log_warning=True)
    else:
        ds = ds.map(load, num_parallel_calls=workers, deterministic=d.deterministic)
    if d.cache:
        ds = ds.cache()  # decoded uint8 pixels; later epochs skip read+decode
        if training:
            ds = ds.shuffle(d.shuffle_buffer, seed=d.seed, reshuffle_each_iteration=True)
    return ds


def _attach_labels(ds: tf.data.Dataset, ys: Mapping[str, np.ndarray], ws: Mapping[str, np.ndarray]) -> tf.data.Dataset:
    """``(index batch, images)`` -> ``(images, labels, sample_weights)`` by gathering the rows."""
    ys_t = {h: tf.constant(v) for h, v in ys.items()}
    ws_t = {h: tf.constant(v) for h, v in ws.items()}

    def attach(index, images):
        labels = {h: tf.gather(v, index) for h, v in ys_t.items()}
        return images, labels, {h: tf.gather(v, index) for h, v in ws_t.items()}

    return ds.map(attach)


def make_dataset(
    table: pd.DataFrame,
    data_root: Path,
    cfg: Config,
    training: bool,
    encoders: Mapping[str, L.LabelEncoder] | None = None,
    counter: BadFileCounter | None = None,
) -> tf.data.Dataset:
    """Batches of ``(uint8 images, labels, sample_weights)`` from a split table.

    Args:
        table: rows with ``rel_path``, ``source`` and the label columns (``splits``).
        data_root: folder the ``rel_path`` values are relative to.
        cfg: run config (``data``, ``model.heads``, ``model.age_years_head``).
        training: seeded reshuffle every epoch, skip-and-count bad files, drop the last
            partial batch. Otherwise table order, every row, errors raise.
        encoders: label encoders fitted on the training table (default: fit on ``table``).
        counter: where skipped files are counted (training only); default a new one,
            available as ``dataset.bad_file_counter``.
    """
    if len(table) == 0:
        raise ValueError("make_dataset got an empty table")
    heads = dataset_heads(cfg)
    encoders = encoders if encoders is not None else fit_encoders(table, heads)
    ys, ws = encode_labels(table, heads, encoders)
    paths = [str(Path(data_root) / p) for p in table["rel_path"]]
    if training:
        counter = counter if counter is not None else BadFileCounter()
    ds = _indexed_images(paths, cfg, training, counter)
    # A plain (serial) batch: its copy is cheap next to decoding, and parallel batching
    # only adds threads competing with the decoders for the host's cores.
    ds = ds.batch(cfg.data.batch_size, drop_remainder=training)
    ds = _attach_labels(ds, ys, ws)
    ds = ds.with_options(pipeline_options(cfg)).prefetch(AUTOTUNE if cfg.data.autotune else cfg.data.prefetch_batches)
    gpus = tf.config.list_logical_devices("GPU")
    if cfg.data.prefetch_to_device and gpus and cfg.train.distribute == "none":
        # Overlaps the (uint8) host->device copy with the previous step; must be last.
        ds = ds.apply(tf.data.experimental.prefetch_to_device(gpus[0].name))
    ds.bad_file_counter = counter
    return ds
