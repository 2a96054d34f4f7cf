"""build_model: schema-driven heads, in-graph normalisation, freezing, gradients, save/load."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from ff_keras import labels
from ff_keras.models.backbones import get_backbone
from ff_keras.config import load_config
from ff_keras.models.multihead import build_model, get_backbone_model, set_trainable

SIZE = 32
TINY = {
    "resnet18": ["model.backbone=resnet18", "model.width=0.125"],
    "resnet34": ["model.backbone=resnet34", "model.width=0.125"],
    "mobilenet_v2": ["model.backbone=mobilenet_v2", "model.width=0.25"],
}


def tiny_cfg(backbone: str = "resnet18", *extra: str):
    return load_config(None, [*TINY[backbone], f"data.image_size={SIZE}", "model.embed_dim=16", *extra])


def images(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


def targets(n: int = 2) -> dict[str, np.ndarray]:
    y = {h: np.arange(n) % len(c) for h, c in labels.HEAD_CLASSES.items()}
    y["age_years"] = np.full((n, 1), 30.0, "float32")
    return y


def compile_for_test(model) -> None:
    sparse = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    losses = {h: (sparse if h in labels.HEAD_CLASSES else "mse") for h in model.output}
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=losses, jit_compile=False)


@pytest.mark.parametrize("backbone", sorted(TINY))
def test_heads_names_and_class_counts_come_from_schema(backbone):
    model = build_model(tiny_cfg(backbone))
    out = model(images())
    expected = {h: len(c) for h, c in labels.HEAD_CLASSES.items()} | {"age_years": 1}
    assert {h: v.shape[-1] for h, v in out.items()} == expected
    assert all(v.dtype == tf.float32 for v in out.values())
    assert [t.name for t in model.inputs] == ["image"]


def test_head_subset_and_no_shared_dense():
    cfg = tiny_cfg("resnet18", "model.heads=[race,gender,age]", "model.age_years_head=false",
                   "model.embed_dim=0")
    model = build_model(cfg)
    assert set(model(images()).keys()) == {"race", "gender", "age"}
    with pytest.raises(ValueError, match="embed"):
        model.get_layer("embed")
    # Heads sit directly on the pooled features (FairFace's released layout).
    assert model.get_layer("race").kernel.shape[0] == get_backbone_model(model).output.shape[-1]


def test_unknown_head_is_named():
    with pytest.raises(ValueError, match="'ethnicity'"):
        build_model(tiny_cfg("resnet18", "model.heads=[age,ethnicity]"))


@pytest.mark.parametrize("backbone", ["resnet34", "mobilenet_v2"])
def test_normalisation_in_graph_follows_spec(backbone):
    model = build_model(tiny_cfg(backbone))
    spec = get_backbone(backbone).SPEC
    x = images()
    got = model.get_layer("normalize")(x).numpy()
    want = (x / spec.scale - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("size", [64, pytest.param(224, marks=pytest.mark.large)])
def test_resnet34_embedding_shape(size):
    model = build_model(load_config(None, ["model.backbone=resnet34", f"data.image_size={size}"]))
    backbone = get_backbone_model(model)
    assert backbone.output.shape[-1] == 512
    assert backbone(np.zeros((2, size, size, 3), "float32")).shape == (2, 512)


@pytest.mark.parametrize("freeze", [False, True])
def test_training_step_changes_backbone_only_when_unfrozen(freeze):
    model = build_model(tiny_cfg("resnet18", f"model.freeze_backbone={str(freeze).lower()}",
                                 "model.dropout=0.0"))
    compile_for_test(model)
    backbone = get_backbone_model(model)
    before = [w.copy() for w in backbone.get_weights()]  # includes BN moving stats
    head_before = model.get_layer("race").kernel.numpy().copy()
    model.train_on_batch(images(4), targets(4))
    changed = [not np.array_equal(a, b) for a, b in zip(before, backbone.get_weights())]
    assert not np.array_equal(head_before, model.get_layer("race").kernel.numpy())
    if freeze:
        assert not any(changed), "frozen backbone (incl. BN statistics) must not change"
        assert not backbone.trainable_weights
    else:
        assert all(changed), "every backbone weight and BN statistic must move in one step"


def test_freeze_up_to_freezes_stem_and_early_stages():
    model = build_model(tiny_cfg("resnet18", "model.freeze_up_to=2"))
    backbone = get_backbone_model(model)
    assert not backbone.get_layer("conv1").trainable and not backbone.get_layer("bn1").trainable
    assert not backbone.get_layer("layer1_1_conv2").trainable
    assert backbone.get_layer("layer2_0_conv1").trainable and backbone.get_layer("layer4_1_bn2").trainable
    set_trainable(model, freeze_backbone=False, freeze_up_to=0)
    assert all(layer.trainable for layer in backbone.layers)


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2"])
def test_every_trainable_variable_gets_a_gradient(backbone):
    model = build_model(tiny_cfg(backbone, "model.weight_decay=0.0"))
    sparse = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    y = targets()
    with tf.GradientTape() as tape:
        out = model(images(), training=True)
        loss = sum(sparse(y[h], out[h]) for h in labels.HEAD_CLASSES) + tf.reduce_mean(out["age_years"])
    grads = tape.gradient(loss, model.trainable_variables)
    missing = [v.path for v, g in zip(model.trainable_variables, grads) if g is None]
    # Kernels must get a non-zero gradient. (A BN beta that only feeds 1x1 conv -> train-mode
    # BN, e.g. MobileNetV2's last block, has an exactly-zero gradient: BN is shift invariant.)
    missing += [v.path for v, g in zip(model.trainable_variables, grads)
                if g is not None and "kernel" in v.path and not np.any(g.numpy())]
    assert not missing, f"no gradient for {missing}"


def test_weight_decay_adds_l2_on_kernels_only():
    with_wd = build_model(tiny_cfg("resnet18", "model.weight_decay=0.01"))
    without = build_model(tiny_cfg("resnet18", "model.weight_decay=0.0"))
    assert not without.losses
    kernels = [v for v in with_wd.trainable_variables if "kernel" in v.path]
    assert len(with_wd.losses) == len(kernels)
    assert float(sum(with_wd.losses)) > 0


def test_keras_round_trip(tmp_path):
    model = build_model(tiny_cfg("resnet18", "model.freeze_up_to=2"))
    compile_for_test(model)
    model.train_on_batch(images(4), targets(4))  # move BN statistics away from their init
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = images(3, seed=1)
    want, got = model.predict_on_batch(x), loaded.predict_on_batch(x)
    assert set(got) == set(want)
    for head in want:
        np.testing.assert_allclose(got[head], want[head], atol=1e-6)
    assert not get_backbone_model(loaded).get_layer("conv1").trainable
    assert len(loaded.losses) == len(model.losses)


def test_heads_stay_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model(tiny_cfg("resnet18"))
        assert get_backbone_model(model).get_layer("conv1").compute_dtype == "bfloat16"
        out = model(images())
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all(v.dtype == tf.float32 for v in out.values())


def test_layer_lr_scales_decay_from_the_top_stage_down():
    from ff_keras.models.multihead import layer_lr_scales

    model = build_model(tiny_cfg("resnet18"))
    scales = layer_lr_scales(model, 0.5)
    backbone = get_backbone_model(model)
    of = {layer.name: scales[layer.weights[0].path] for layer in backbone.layers if layer.weights}
    assert of["layer4_1_conv2"] == 0.5 and of["layer3_0_conv1"] == 0.25 and of["layer1_0_conv1"] == 0.5 ** 4
    assert of["conv1"] == 0.5 ** 5  # the stem moves least
    head_paths = {v.path for h in ("race", "embed") for v in model.get_layer(h).weights}
    assert not head_paths & set(scales)  # embedding and heads keep the full rate
    assert layer_lr_scales(model, 1.0) == {}
    with pytest.raises(ValueError, match="decay"):
        layer_lr_scales(model, 0.0)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimizer_scales_each_variables_step(name):
    from ff_keras.training.trainer import make_optimizer

    scaled, full = keras.Variable(np.ones(3, "float32"), name="scaled"), keras.Variable(np.ones(3, "float32"))
    opt = make_optimizer(name, 0.1, weight_decay=0.0, lr_scales={scaled.path: 0.25})
    grad = tf.constant([0.5, -1.0, 2.0])
    for _ in range(3):
        opt.apply([grad, grad], [scaled, full])
    step_scaled, step_full = 1.0 - scaled.numpy(), 1.0 - full.numpy()
    assert np.all(np.abs(step_full) > 0)
    np.testing.assert_allclose(step_scaled, 0.25 * step_full, rtol=1e-5)


def test_adamw_weight_decay_takes_the_learning_rate_scale():
    from ff_keras.training.trainer import make_optimizer

    scaled, full = keras.Variable(np.ones(3, "float32"), name="scaled"), keras.Variable(np.ones(3, "float32"))
    opt = make_optimizer("adamw", 0.1, weight_decay=0.5, lr_scales={scaled.path: 0.25})
    zero = tf.zeros(3)  # no gradient: the only change is the decay
    opt.apply([zero, zero], [scaled, full])
    np.testing.assert_allclose(1.0 - full.numpy(), 0.1 * 0.5, rtol=1e-5)
    np.testing.assert_allclose(1.0 - scaled.numpy(), 0.25 * 0.1 * 0.5, rtol=1e-5)
    assert opt.weight_decay == 0.5


def test_init_from_loads_a_trained_model_and_names_a_mismatch(tmp_path, monkeypatch):
    from ff_keras.convert.pretrained import build_pretrained

    trained = build_model(tiny_cfg("resnet18"))
    for layer in trained.layers:  # make the weights distinguishable from a fresh init
        layer.set_weights([w + 1.0 for w in layer.get_weights()])
    trained.save(tmp_path / "model.keras")
    loaded = build_pretrained(tiny_cfg("resnet18", f"model.init_from={tmp_path / 'model.keras'}"))
    for a, b in zip(trained.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    monkeypatch.setenv("HOME", str(tmp_path))  # bash leaves "~" unexpanded in model.init_from=~/...
    from_home = build_pretrained(tiny_cfg("resnet18", "model.init_from=~/model.keras"))
    np.testing.assert_array_equal(trained.get_weights()[0], from_home.get_weights()[0])
    with pytest.raises(ValueError, match="model.init_from .*model.keras"):
        build_pretrained(tiny_cfg("resnet18", "model.embed_dim=8", f"model.init_from={tmp_path / 'model.keras'}"))
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        build_pretrained(tiny_cfg("resnet18", f"model.init_from={tmp_path / 'missing.keras'}"))
