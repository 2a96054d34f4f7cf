import numpy as np
import pytest

from ff_keras import labels


def test_age_bins_natural_order_and_mapping():
    assert labels.AGE_BINS[0] == "0-2" and labels.AGE_BINS[1] == "3-9" and labels.AGE_BINS[-1] == "more than 70"
    cases = {0: "0-2", 2: "0-2", 3: "3-9", 9: "3-9", 10: "10-19", 29: "20-29", 69: "60-69",
             70: "more than 70", 116: "more than 70"}
    for years, name in cases.items():
        assert labels.age_to_bin(years) == name
    with pytest.raises(ValueError):
        labels.age_to_bin(-1)


def test_head_slices_follow_class_counts():
    s = labels.head_slices()
    assert s["race"] == slice(0, 7) and s["gender"] == slice(7, 9) and s["age"] == slice(9, 18)


def test_encoder_keeps_schema_order_and_names_unseen_row():
    enc = labels.LabelEncoder("age").fit(["20-29", "3-9", "more than 70"])
    assert enc.classes_ == labels.AGE_BINS  # not alphabetical
    np.testing.assert_array_equal(enc.transform(["0-2", "10-19"]), [0, 2])
    with pytest.raises(ValueError, match=r"'20-30'.*fairface/val/7\.jpg"):
        enc.transform(["0-2", "20-30"], rows=["fairface/val/6.jpg", "fairface/val/7.jpg"])
    with pytest.raises(ValueError, match="Unknown"):
        labels.LabelEncoder("race").fit(["White", "Unknown"])


def test_race_label_spaces_are_separate():
    assert "Asian" in labels.UTK_RACES and "Asian" not in labels.RACES
    assert labels.SOURCE_HEADS["utkface"].count("race") == 0
    with pytest.raises(ValueError):
        labels.check_label_spaces({"age": sorted(labels.AGE_BINS)})
