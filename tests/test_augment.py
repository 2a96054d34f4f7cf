"""On-device batch augmentation: range, eval identity, seeding, per-image draws."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from ff_keras.data import pipeline as data
from ff_keras.data.augment import augment_batch
from ff_keras.config import AugmentConfig

SEED = tf.constant([3, 4], tf.int64)
NO_JITTER = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}


@pytest.fixture(scope="module")
def faces(fairface_images) -> tf.Tensor:
    """8 real faces at 48 px, uint8, as the pipeline yields them."""
    return tf.stack([data.load_image(tf.constant(str(p)), 48) for p in fairface_images[:8]])


@pytest.mark.parametrize("crop", [False, True])
def test_training_output_is_float_in_range_and_changed(faces, crop):
    cfg = AugmentConfig(random_resized_crop=crop)
    out = augment_batch(faces, cfg, SEED, training=True)
    assert out.dtype == tf.float32 and out.shape == faces.shape
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 255.0
    assert float(tf.reduce_mean(tf.abs(out - tf.cast(faces, tf.float32)))) > 1.0


def test_identity_at_eval(faces):
    out = augment_batch(faces, AugmentConfig(random_resized_crop=True), SEED, training=False)
    np.testing.assert_array_equal(out.numpy(), faces.numpy().astype(np.float32))


def test_seeded_determinism_and_generator(faces):
    cfg = AugmentConfig(random_resized_crop=True)
    a = augment_batch(faces, cfg, SEED, training=True)
    np.testing.assert_array_equal(a.numpy(), augment_batch(faces, cfg, SEED, training=True).numpy())
    assert not np.array_equal(
        a.numpy(), augment_batch(faces, cfg, tf.constant([5, 6]), training=True).numpy()
    )
    g1, g2 = tf.random.Generator.from_seed(1), tf.random.Generator.from_seed(1)
    b1, b2 = augment_batch(faces, cfg, g1, True), augment_batch(faces, cfg, g2, True)
    np.testing.assert_array_equal(b1.numpy(), b2.numpy())
    assert not np.array_equal(b1.numpy(), augment_batch(faces, cfg, g1, True).numpy())  # fresh seed per call


def test_same_eagerly_in_tf_function_and_in_dataset_map(faces):
    cfg = AugmentConfig(random_resized_crop=True)

    def fn(x, s):
        return augment_batch(x, cfg, s, training=True)

    eager = fn(faces, SEED)
    graph = tf.function(fn)(faces, SEED)
    mapped = next(iter(tf.data.Dataset.from_tensors((faces, SEED)).map(fn)))
    np.testing.assert_allclose(graph.numpy(), eager.numpy(), atol=1e-3)
    np.testing.assert_allclose(mapped.numpy(), eager.numpy(), atol=1e-3)
    # XLA-compiled and op-by-op runs draw the same parameters and agree to float rounding.
    other = augment_batch(faces, dataclasses.replace(cfg, jit_compile=False), SEED, training=True)
    np.testing.assert_allclose(other.numpy(), eager.numpy(), atol=1e-3)


def test_flip_is_per_image_and_only_mirrors(faces):
    out = augment_batch(faces, AugmentConfig(**NO_JITTER), SEED, training=True).numpy()
    x = faces.numpy().astype(np.float32)
    flipped = [np.array_equal(o, xi[:, ::-1]) for o, xi in zip(out, x)]
    kept = [np.array_equal(o, xi) for o, xi in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)  # independent draw per image


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation", "hue"])
def test_each_jitter_changes_images_independently(faces, name):
    cfg = AugmentConfig(flip=False, **{**NO_JITTER, name: dataclasses.asdict(AugmentConfig())[name]})
    same = tf.repeat(faces[:1], 8, axis=0)  # 8 copies of one face
    out = augment_batch(same, cfg, SEED, training=True).numpy()
    assert np.abs(out - same.numpy().astype(np.float32)).mean() > 0.2
    assert len({o.tobytes() for o in out}) == 8  # each copy got its own factor


def test_brightness_matches_colorjitter_range(faces):
    cfg = AugmentConfig(flip=False, **{**NO_JITTER, "brightness": 0.15})
    x = faces.numpy().astype(np.float32)
    out = augment_batch(faces, cfg, SEED, training=True).numpy()
    mask = (x > 20) & (out < 254)  # pixels not clipped
    ratios = out[mask] / x[mask]
    assert ratios.min() >= 0.85 - 1e-4 and ratios.max() <= 1.15 + 1e-4


STILL = {**NO_JITTER, "flip": False}


def test_zoom_out_crop_adds_a_black_border(faces):
    cfg = AugmentConfig(**STILL, random_resized_crop=True, crop_scale_min=2.0, crop_scale_max=2.0,
                        crop_ratio_min=1.0, crop_ratio_max=1.0)
    out = augment_batch(faces, cfg, SEED, training=True).numpy()
    # The box is sqrt(2) x the image side, so at least one full border row or column is black.
    for img in out:
        rows, cols = np.all(img < 1.0, axis=(1, 2)), np.all(img < 1.0, axis=(0, 2))
        assert rows.any() or cols.any()
    shrink = augment_batch(faces, dataclasses.replace(cfg, crop_scale_min=1.0, crop_scale_max=1.0), SEED, True)
    assert not np.all(shrink.numpy() < 1.0, axis=(2, 3)).any()


def test_low_resolution_and_jpeg_only_touch_drawn_images(faces):
    x = faces.numpy().astype(np.float32)
    lowres = augment_batch(faces, AugmentConfig(**STILL, lowres_prob=1.0, lowres_min_size=12), SEED, True).numpy()
    assert 1.0 < np.abs(lowres - x).mean() and np.abs(lowres.mean() - x.mean()) < 3.0  # blurred, same content
    none = augment_batch(faces, AugmentConfig(**STILL, lowres_prob=1e-9, jpeg_prob=1e-9), SEED, True).numpy()
    np.testing.assert_array_equal(none, x)
    jpeg = augment_batch(faces, AugmentConfig(**STILL, jpeg_prob=1.0, jpeg_quality_min=10), SEED, True).numpy()
    assert 0.5 < np.abs(jpeg - x).mean() < 20.0
    again = augment_batch(faces, AugmentConfig(**STILL, jpeg_prob=1.0, jpeg_quality_min=10), SEED, True).numpy()
    np.testing.assert_array_equal(jpeg, again)


def test_log_uniform_crop_areas_favour_tight_crops_and_bad_settings_are_named():
    from ff_keras.data.augment import draw_params

    n, seed = tf.constant(20000), tf.constant([1, 2], tf.int64)
    share = {}
    for mode in ("uniform", "log_uniform"):
        cfg = AugmentConfig(random_resized_crop=True, crop_scale_min=0.25, crop_scale_max=1.45,
                            crop_ratio_min=1.0, crop_ratio_max=1.0, crop_area_sampling=mode)
        crop = draw_params(n, cfg, seed)["crop"].numpy()
        area = crop[:, 2] * crop[:, 3]
        assert area.min() >= 0.25 - 1e-5 and area.max() <= 1.45 + 1e-5
        share[mode] = float((area < 0.6).mean())
    # Uniform: (0.6 - 0.25) / 1.2 = 0.29; log-uniform: ln(2.4) / ln(5.8) = 0.50.
    assert abs(share["uniform"] - 0.292) < 0.02 and abs(share["log_uniform"] - 0.497) < 0.02, share
    for bad, message in [({"crop_area_sampling": "gaussian"}, "crop_area_sampling='gaussian'"),
                         ({"crop_scale_min": 0.0}, "0 < min <= max")]:
        cfg = AugmentConfig(random_resized_crop=True, **bad)
        with pytest.raises(ValueError, match=message):
            draw_params(n, cfg, seed)
