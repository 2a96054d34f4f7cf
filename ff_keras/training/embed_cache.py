"""Fast path for frozen-backbone phases: embed every image once, train the heads on the cache.

With the backbone frozen, every epoch would recompute identical backbone features; on a
2-core CPU that is >95 % of the step time. Instead the backbone runs once over train and
val (optionally also on left-right flipped images, which doubles the training rows as
flip "augmentation pairs"), the result is cached as ``.npz`` in the run folder, and a
head-only copy of the model trains on it. Its weights are then copied back into the full
model, layer by layer, so the full model continues from exactly these heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ff_keras.models import multihead as model_lib


def feature_model(net: keras.Model) -> keras.Model:
    """Image (0-255) -> pooled backbone embedding, sharing ``net``'s layers."""
    image = keras.Input(net.input.shape[1:], name="image", dtype="float32")
    x = net.get_layer(model_lib.NORM_NAME)(image)
    return keras.Model(image, model_lib.get_backbone_model(net)(x), name="features")


def head_layer_names(net: keras.Model, heads: Sequence[str]) -> list[str]:
    """Layers of ``net`` after the backbone: the embedding trunk, then the heads."""
    trunk = [layer.name for layer in net.layers if layer.name.startswith(model_lib.EMBED_NAME)]
    return trunk + list(heads)


def head_model(net: keras.Model, heads: Sequence[str]) -> keras.Model:
    """Embedding -> ``{head: logits}``: fresh copies of ``net``'s layers after the backbone,
    initialised with ``net``'s current weights."""
    dim = int(model_lib.get_backbone_model(net).output.shape[-1])
    emb = keras.Input((dim,), name="embedding", dtype="float32")
    x, outputs = emb, {}
    for name in head_layer_names(net, heads):
        src = net.get_layer(name)
        clone = src.__class__.from_config(src.get_config())
        y = clone(x)
        clone.set_weights(src.get_weights())
        if name in heads:
            outputs[name] = y
        else:
            x = y
    return keras.Model(emb, outputs, name="heads")


def copy_layer_weights(src: keras.Model, dst: keras.Model, names: Sequence[str]) -> None:
    """Copies the weights of the named layers from ``src`` to ``dst`` (same architecture)."""
    for name in names:
        dst.get_layer(name).set_weights(src.get_layer(name).get_weights())


def extract(features: keras.Model, ds: tf.data.Dataset, flip: bool = False) -> dict[str, np.ndarray]:
    """Runs ``features`` over ``(uint8 images, labels, weights)`` batches.

    Returns ``{"emb": [N, D], "y_<head>": [N], "w_<head>": [N]}``; with ``flip`` the
    flipped copies follow the originals (N doubles) with the same labels.
    """
    fwd = tf.function(lambda x: features(x, training=False))
    parts: dict[str, list[np.ndarray]] = {}
    n_batches = int(ds.cardinality()) if int(ds.cardinality()) > 0 else None
    bar = keras.utils.Progbar(n_batches, unit_name="batch")
    for i, (images, y, w) in enumerate(ds):
        x = tf.cast(images, tf.float32)
        views = [x, tf.reverse(x, axis=[2])] if flip else [x]
        for view in views:
            parts.setdefault("emb", []).append(fwd(view).numpy().astype(np.float32))
            for head in y:
                parts.setdefault(f"y_{head}", []).append(np.asarray(y[head]))
                parts.setdefault(f"w_{head}", []).append(np.asarray(w[head]))
        bar.update(i + 1)
    if not parts:
        raise ValueError("extract got an empty dataset")
    return {k: np.concatenate(v) for k, v in parts.items()}


def cached(path: Path, make) -> dict[str, np.ndarray]:
    """Loads ``path`` if it exists (resumed run), else computes ``make()`` and saves it."""
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    arrays = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written cache
    return arrays


def to_dataset(
    arrays: dict[str, np.ndarray], heads: Sequence[str], batch_size: int, training: bool, seed: int = 0
) -> tf.data.Dataset:
    """Cached arrays -> ``(embedding, labels, weights)`` batches like ``data.make_dataset``."""
    missing = [h for h in heads if f"y_{h}" not in arrays]
    if missing:
        raise ValueError(f"embedding cache lacks labels for heads {missing}; has {sorted(arrays)}")
    ys = {h: arrays[f"y_{h}"] for h in heads}
    ws = {h: arrays[f"w_{h}"] for h in heads}
    ds = tf.data.Dataset.from_tensor_slices((arrays["emb"], ys, ws))
    if training:
        ds = ds.shuffle(len(arrays["emb"]), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=training and len(arrays["emb"]) >= batch_size).prefetch(2)
