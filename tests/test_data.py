"""Input pipeline: decode ops, label/weight alignment, shuffling, bad files, normalisation."""

from __future__ import annotations

import os
import shutil

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from ff_keras.data import pipeline as data, preprocess, image_check as validate
from ff_keras import labels
from ff_keras.training import precision
from ff_keras.config import load_config
from ff_keras.data.readers import parse_utk_name


def _cfg(size: int = 32, batch: int = 4, **extra):
    overrides = [f"data.image_size={size}", f"data.batch_size={batch}"]
    return load_config(None, overrides + [f"{k}={v}" for k, v in extra.items()])


def _fairface_table(root, n: int) -> pd.DataFrame:
    df = pd.read_csv(root / "fairface" / "fairface_label_val.csv", nrows=n)
    return pd.DataFrame(
        {
            "rel_path": "fairface/" + df["file"],
            "source": "fairface",
            "age_years": np.nan,
            "age_bin": df["age"],
            "gender": df["gender"],
            "race": df["race"],
        }
    )


def _utk_table(root, n: int) -> pd.DataFrame:
    names = sorted(p.name for p in (root / "utkface").glob("*_*_*_*.jpg.chip.jpg"))[:n]
    rows = [{"rel_path": f"utkface/{name}", "source": "utkface", **parse_utk_name(name)} for name in names]
    return pd.DataFrame(rows)


def tfrun(fn, *args):
    """big_vision's pattern: an op must give the same result eagerly and inside Dataset.map."""
    eager = fn(*args)
    mapped = next(iter(tf.data.Dataset.from_tensors(args).map(fn)))
    return eager, mapped


# === Shapes, dtypes, labels and weights ===


def test_parallelism_and_autotune_come_from_the_config(data_root):
    assert data.parallel_calls(_cfg(**{"data.parallel_calls": 0})) == os.cpu_count()
    assert data.parallel_calls(_cfg(**{"data.parallel_calls": 3})) == 3
    assert data.parallel_calls(_cfg(**{"data.parallel_calls": -1})) == tf.data.AUTOTUNE
    with pytest.raises(ValueError, match="parallel_calls"):
        data.parallel_calls(_cfg(**{"data.parallel_calls": -2}))
    table = _fairface_table(data_root, 8)
    for autotune in (False, True):
        ds = data.make_dataset(table, data_root, _cfg(**{"data.autotune": autotune}), training=True)
        assert ds.options().autotune.enabled is autotune


def test_batches_have_shapes_dtypes_and_source_weights(data_root):
    table = pd.concat([_fairface_table(data_root, 4), _utk_table(data_root, 4)], ignore_index=True)
    ds = data.make_dataset(table, data_root, _cfg(size=32, batch=8), training=False)
    images, ys, ws = next(iter(ds))
    assert images.shape == (8, 32, 32, 3) and images.dtype == tf.uint8
    assert set(ys) == set(ws) == {"age", "gender", "race", "race_utk", "age_years"}
    assert ys["age_years"].dtype == tf.float32 and ys["race"].dtype == tf.int32
    ff, utk = slice(0, 4), slice(4, 8)
    np.testing.assert_array_equal(ws["race"].numpy()[ff], 1.0)
    np.testing.assert_array_equal(ws["race"].numpy()[utk], 0.0)  # UTKFace has no 7-race label
    np.testing.assert_array_equal(ws["race_utk"].numpy()[ff], 0.0)
    np.testing.assert_array_equal(ws["age_years"].numpy()[ff], 0.0)
    np.testing.assert_array_equal(ys["race_utk"].numpy()[ff], 0)  # label 0 where weight 0
    np.testing.assert_array_equal(ws["age_years"].numpy()[utk], 1.0)
    np.testing.assert_array_equal(ys["age_years"].numpy()[utk], table["age_years"][4:].to_numpy(np.float32))
    expected_race = [labels.RACES.index(r) for r in table["race"][:4]]
    np.testing.assert_array_equal(ys["race"].numpy()[ff], expected_race)


def test_unseen_label_names_value_and_file(data_root):
    table = _fairface_table(data_root, 4)
    table.loc[2, "race"] = "Martian"
    with pytest.raises(ValueError, match=r"Martian.*fairface/val/3\.jpg"):
        data.make_dataset(table, data_root, _cfg(), training=True)


# === Shuffling ===


def test_labels_stay_aligned_with_files_through_shuffling(data_root):
    table = _fairface_table(data_root, 16)
    ds = data.make_dataset(table, data_root, _cfg(size=48, batch=4), training=True)
    # Reference: each file decoded separately by PIL; match every output to its nearest file.
    refs = np.stack([preprocess.square_resize_np(Image.open(data_root / p), 48) for p in table["rel_path"]])
    refs = refs.astype(np.float32)
    seen = []
    for images, ys, _ in ds:
        for i, img in enumerate(images.numpy().astype(np.float32)):
            row = int(np.argmin(np.abs(refs - img).mean(axis=(1, 2, 3))))
            assert np.abs(refs[row] - img).mean() < 3.0
            for head, column in (("race", "race"), ("gender", "gender"), ("age", "age_bin")):
                assert labels.HEAD_CLASSES[head][int(ys[head][i])] == table[column][row]
            seen.append(row)
    assert sorted(seen) == list(range(16))  # every row exactly once per epoch
    assert seen != list(range(16))  # and actually shuffled


def _order(ds) -> list[int]:
    return [int(v) for _, ys, _ in ds for v in ys["age_years"].numpy()]


def test_shuffle_is_seeded_and_reshuffles_each_epoch(data_root):
    table = _utk_table(data_root, 12)
    table["age_years"] = np.arange(12, dtype=float)  # a row id that travels as a label
    cfg = _cfg(size=16, batch=4)
    first = data.make_dataset(table, data_root, cfg, training=True)
    epoch1, epoch2 = _order(first), _order(first)
    assert epoch1 == _order(data.make_dataset(table, data_root, cfg, training=True))
    assert epoch1 != epoch2 and sorted(epoch1) == sorted(epoch2) == list(range(12))
    other = data.make_dataset(table, data_root, _cfg(size=16, batch=4, **{"data.seed": 7}), training=True)
    assert _order(other) != epoch1


# === Ops: eager == tf.data.map, formats, geometry ===


@pytest.mark.parametrize("size", [224, 64])  # FairFace native size (no resize) and a resize
def test_load_image_same_eagerly_and_in_dataset_map(fairface_images, size):
    path = tf.constant(str(fairface_images[0]))
    eager, mapped = tfrun(lambda p: data.load_image(p, size), path)
    assert eager.shape == (size, size, 3) and eager.dtype == tf.uint8
    np.testing.assert_array_equal(eager.numpy(), mapped.numpy())


def test_square_resize_center_crops_non_square():
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 10:50] = np.arange(40, dtype=np.uint8)[:, None, None]  # the centred 40x40 square
    eager, mapped = tfrun(lambda x: preprocess.square_resize_tf(x, 40), tf.constant(image))
    np.testing.assert_array_equal(eager.numpy(), image[:, 10:50])
    np.testing.assert_array_equal(mapped.numpy(), image[:, 10:50])
    np.testing.assert_array_equal(preprocess.square_resize_np(image, 40), image[:, 10:50])
    for size in (20, 56):  # shrink and enlarge: the numpy twin does the same arithmetic
        resized = preprocess.square_resize_tf(tf.constant(image), size).numpy().astype(int)
        assert resized.shape == (size, size, 3)
        assert np.abs(resized - preprocess.square_resize_np(image, size)).max() <= 1


@pytest.mark.parametrize(
    "mode,fmt", [("L", "JPEG"), ("L", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("RGB", "PNG")]
)
def test_grayscale_png_and_cmyk_decode_to_rgb(fairface_images, tmp_path, mode, fmt):
    face = Image.open(fairface_images[1])
    path = tmp_path / f"face.{fmt.lower()}"
    face.convert(mode).save(path, fmt)
    eager, mapped = tfrun(data.decode_image, tf.constant(path.read_bytes()))
    assert eager.shape == (224, 224, 3) and eager.dtype == tf.uint8
    np.testing.assert_array_equal(eager.numpy(), mapped.numpy())
    expected = np.asarray(Image.open(path).convert("RGB"), np.float32)
    assert np.abs(eager.numpy().astype(np.float32) - expected).mean() < 3.0


# === Bad files: validator names them, training skips and counts, eval raises ===


def _root_with_bad_files(data_root, tmp_path) -> pd.DataFrame:
    table = _fairface_table(data_root, 6)
    for rel in table["rel_path"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data_root / rel, tmp_path / rel)
    good = (data_root / table["rel_path"][0]).read_bytes()
    (tmp_path / "fairface/val/truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "fairface/val/garbage.jpg").write_bytes(b"not an image at all")
    bad = table.iloc[:2].copy()
    bad["rel_path"] = ["fairface/val/truncated.jpg", "fairface/val/garbage.jpg"]
    return pd.concat([table.iloc[:3], bad, table.iloc[3:]], ignore_index=True)


def test_validator_names_every_unreadable_file(data_root, tmp_path):
    table = _root_with_bad_files(data_root, tmp_path)
    bad = validate.find_unreadable(tmp_path / p for p in table["rel_path"])
    assert [p for p, _ in bad] == [
        str(tmp_path / "fairface/val/truncated.jpg"),
        str(tmp_path / "fairface/val/garbage.jpg"),
    ]
    assert "truncated" in bad[0][1]
    clean, dropped = validate.drop_unreadable(table, tmp_path)
    assert len(clean) == 6 and [rel for rel, _ in dropped] == [
        "fairface/val/truncated.jpg",
        "fairface/val/garbage.jpg",
    ]
    with pytest.raises(ValueError, match="garbage.jpg"):
        validate.assert_readable(tmp_path / p for p in table["rel_path"])


def test_training_skips_and_counts_bad_files(data_root, tmp_path):
    table = _root_with_bad_files(data_root, tmp_path)
    counter = data.BadFileCounter()
    ds = data.make_dataset(table, tmp_path, _cfg(size=16, batch=2), training=True, counter=counter)
    assert sum(int(x.shape[0]) for x, _, _ in ds) == 6  # the 6 good images, no crash
    logs: dict = {}
    counter.on_epoch_end(0, logs)
    assert counter.skipped == 2 and logs["bad_files"] == 2.0
    with pytest.raises(tf.errors.InvalidArgumentError):  # eval never drops rows silently
        list(data.make_dataset(table, tmp_path, _cfg(size=16, batch=2), training=False))


# === Normalisation and precision ===


def test_normalisation_numpy_tf_and_keras_layer_agree():
    spec = preprocess.imagenet_spec()
    x = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    ref = (x / 255.0 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(preprocess.normalize_np(x, spec), ref, atol=1e-5)
    np.testing.assert_allclose(preprocess.normalize_tf(tf.constant(x), spec).numpy(), ref, atol=1e-5)
    layer = preprocess.normalization_layer(spec)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x.astype(np.float32))), ref, atol=1e-4)


def test_precision_policy_from_config():
    if tf.config.list_physical_devices("GPU"):
        assert precision.resolve_policy("auto") == "mixed_float16"
    else:
        assert precision.resolve_policy("auto", flags={"avx2", "amx_bf16"}) == "mixed_bfloat16"
        assert precision.resolve_policy("auto", flags={"avx2", "avx512f", "avx512_bf16"}) == "mixed_bfloat16"
        assert precision.resolve_policy("auto", flags={"avx2", "avx512f"}) == "float32"
    assert precision.resolve_policy("bfloat16") == "mixed_bfloat16"
    with pytest.raises(ValueError, match="float8"):
        precision.resolve_policy("float8")
    try:
        assert precision.set_policy("mixed_bfloat16") == keras.mixed_precision.global_policy().name
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_keras_fit_consumes_dataset_and_reports_bad_files(data_root, tmp_path):
    """The dataset's (x, y, sample_weight) dicts drive a real Keras fit; skips reach the logs."""
    table = _root_with_bad_files(data_root, tmp_path)
    cfg = _cfg(size=16, batch=2, **{"model.heads": "[age,gender,race]", "model.age_years_head": "false"})
    counter = data.BadFileCounter()
    ds = data.make_dataset(table, tmp_path, cfg, training=True, counter=counter)
    inputs = keras.Input((16, 16, 3), name="image")
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    outputs = {h: keras.layers.Dense(len(labels.HEAD_CLASSES[h]), name=h)(pooled) for h in cfg.model.heads}
    model = keras.Model(inputs, outputs)
    loss = {h: keras.losses.SparseCategoricalCrossentropy(from_logits=True) for h in cfg.model.heads}
    model.compile(optimizer="sgd", loss=loss)
    history = model.fit(ds, epochs=2, callbacks=[counter], verbose=0)
    assert history.history["bad_files"] == [2.0, 2.0]  # counted again in every epoch
    assert all(np.isfinite(history.history["loss"]))
