"""Backbone contract: torch numerics, torchvision-mirroring names, sizes, stages."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from ff_keras.models.backbones import get_backbone
from ff_keras.models.multihead import build_backbone

# Trainable parameters of torchvision's models without their ImageNet classifier.
TORCHVISION_PARAMS = {"resnet18": 11_176_512, "resnet34": 21_284_672, "mobilenet_v2": 2_223_872}


def n_trainable(model: keras.Model) -> int:
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_full_size_matches_torchvision_parameter_count(name):
    model = build_backbone(name, 64)
    assert n_trainable(model) == TORCHVISION_PARAMS[name]
    assert model.output.shape[-1] == get_backbone(name).SPEC.embedding_dim


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_torch_numerics_settings(name):
    model = build_backbone(name, 32, width=0.25)
    bns = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert bns and all(la.epsilon == 1e-5 and la.momentum == 0.9 for la in bns)
    convs = [la for la in model.layers if isinstance(la, keras.layers.Conv2D)]  # incl. depthwise
    assert convs and not any(la.use_bias for la in convs)
    # No strided conv relies on TF's asymmetric "same" padding.
    assert all(la.padding == "valid" for la in convs if la.strides != (1, 1))
    assert not any(isinstance(la, keras.Sequential) for la in model.layers)


@pytest.mark.parametrize("size, final", [(64, 2), (150, 5), (224, 7)])
def test_resnet_spatial_sizes_follow_torch_formula(size, final):
    # torch: out = floor((n + 2p - k) / s) + 1 at every strided conv / pool.
    model = build_backbone("resnet18", size, width=0.125)
    assert model.get_layer("layer4_1_out").output.shape[1:3] == (final, final)


@pytest.mark.parametrize("name, width, dim", [("resnet18", 0.125, 64), ("resnet34", 0.25, 128),
                                             ("mobilenet_v2", 0.25, 1280)])
def test_width_multiplier_builds_tiny_models(name, width, dim):
    model = build_backbone(name, 32, width=width)
    assert model(np.zeros((2, 32, 32, 3), "float32")).shape == (2, dim)


def test_layer_names_mirror_torchvision_keys():
    names = {la.name for la in build_backbone("resnet34", 32, width=0.125).layers if la.weights}
    assert {"conv1", "bn1", "layer2_0_downsample_0", "layer2_0_downsample_1", "layer4_2_bn2"} <= names
    assert "layer1_0_downsample_0" not in names  # torchvision has no downsample in layer1
    names = {la.name for la in build_backbone("mobilenet_v2", 32, width=0.25).layers if la.weights}
    assert {"features_0_0", "features_1_conv_0_0", "features_1_conv_1", "features_2_conv_1_0",
            "features_17_conv_3", "features_18_1"} <= names


def test_stage_of():
    resnet, mnv2 = get_backbone("resnet34"), get_backbone("mobilenet_v2")
    assert [resnet.stage_of(n) for n in ("conv1", "bn1", "layer1_0_conv1", "layer3_5_bn2", "layer4_0_downsample_1")] \
        == [0, 0, 1, 3, 4]
    got = [mnv2.stage_of(f"features_{i}_0") for i in range(19)]
    assert got == [0, 1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_unsupported_embedding_is_refused(name):
    with pytest.raises(ValueError, match="'descriptor'"):
        build_backbone(name, 32, embedding="descriptor")
