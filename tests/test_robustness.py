"""Crop variants of the robustness benchmark, and the benchmark on the shipped ONNX model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ff_keras.evaluation import robustness
from ff_keras.splits import build as splits
from ff_keras.inference.predictor import load_predictor, load_images

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chip(fairface_images) -> Image.Image:
    return Image.open(fairface_images[0]).convert("RGB")


def test_variants_cut_the_chip_as_described(chip):
    a = np.asarray(chip)
    tight = robustness.apply_variant(chip, {"central": 0.6})
    assert tight.size == (134, 134)
    np.testing.assert_array_equal(np.asarray(tight), a[45:179, 45:179])
    loose = np.asarray(robustness.apply_variant(chip, {"padding": 0.4}))
    assert loose.shape == (269, 269, 3)  # 224 * 1.8 / 1.5
    assert loose[:20].max() == 0 and loose[-20:].max() == 0
    np.testing.assert_array_equal(loose[22:246, 22:246], a)
    narrow = robustness.apply_variant(chip, {"aspect": 0.8})
    assert narrow.size == (224, 224)
    ref = np.asarray(chip.crop((22, 0, 201, 224)).resize((224, 224), Image.BILINEAR))
    np.testing.assert_array_equal(np.asarray(narrow), ref)
    low = np.asarray(robustness.apply_variant(chip, {"lowres": 48}), np.float32)
    assert low.shape == a.shape and 2 < np.abs(low - a).mean() < 30
    jpeg = np.asarray(robustness.apply_variant(chip, {"jpeg_quality": 30}), np.float32)
    assert 0.5 < np.abs(jpeg - a).mean() < 15
    assert np.asarray(robustness.apply_variant(chip, {})).tobytes() == a.tobytes()


def test_unknown_or_invalid_variant_parameters_are_rejected(chip):
    with pytest.raises(ValueError, match="unknown crop variant parameter"):
        robustness.apply_variant(chip, {"zoom": 2})
    with pytest.raises(ValueError, match="central fraction"):
        robustness.apply_variant(chip, {"central": 1.5})


def test_benchmark_scores_the_shipped_model_per_variant(data_root):
    predictor = load_predictor(REPO / "models" / "ff_dlib_resnet150.onnx")
    table = splits.load_split(REPO / "splits", ["fairface"], "val").head(24)
    variants = {k: robustness.CROP_VARIANTS[k] for k in ("standard", "central_60", "jpeg_30")}
    res = robustness.evaluate_variants(predictor, table, data_root, variants, batch_size=16)
    assert res["n"] == 24 and set(res["accuracy"]) == set(variants)
    # The standard variant is exactly the plain evaluation path.
    probs = predictor.predict(load_images([data_root / p for p in table["rel_path"]], predictor.info.image_size))
    want = (probs["gender"].argmax(1) == (table["gender"] == "Female").to_numpy()).mean()
    assert res["accuracy"]["standard"]["gender"] == pytest.approx(want)
    assert res["drop"]["standard"] == {h: 0.0 for h in ("age", "gender", "race")}
    assert res["within_tolerance"]["standard"]
    table_md = robustness.markdown_table(res)
    assert "| central_60 |" in table_md and table_md.count("\n") == 4
