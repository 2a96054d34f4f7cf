from pathlib import Path

import pytest

from ff_keras.config import Config, load_config, save_config

REPO = Path(__file__).resolve().parents[1]


def test_defaults_and_dotted_overrides():
    cfg = load_config(None, ["train.epochs=3", "data.image_size=96", "model.heads=[age,gender]"])
    assert isinstance(cfg, Config)
    assert cfg.train.epochs == 3 and cfg.data.image_size == 96 and cfg.model.heads == ["age", "gender"]


@pytest.mark.parametrize("override", ["train.epochz=3", "train.epochs=three", "nodot"])
def test_strict_overrides_raise(override):
    with pytest.raises(ValueError):
        load_config(None, [override])


def test_unknown_yaml_key_raises(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 2\n  learning_rat: 0.1\n")
    with pytest.raises(ValueError, match="learning_rat"):
        load_config(bad)


def test_committed_configs_load_and_round_trip(tmp_path):
    names = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
    assert {"default.yaml", "smoke.yaml"} <= set(names)
    for name in names:
        cfg = load_config(REPO / "configs" / name)
        save_config(cfg, tmp_path / name)
        assert load_config(tmp_path / name) == cfg
