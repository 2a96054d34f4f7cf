"""Shared fixtures: the real data root and a `large` marker skipped unless --run-large."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# torch (optional, parity tests only) pulls in CUDA-only triton, whose library clashes
# with TensorFlow's and segfaults when both load; nothing here needs triton.
sys.modules.setdefault("triton", None)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--run-large", action="store_true", help="run tests marked large")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-large"):
        return
    skip = pytest.mark.skip(reason="large test: pass --run-large")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_root() -> Path:
    from ff_keras.data.readers import resolve_data_root

    root = resolve_data_root()
    if not (root / "fairface").is_dir():
        pytest.fail(f"data root {root} has no fairface/ folder; set FF_DATA_ROOT")
    return root


@pytest.fixture(scope="session")
def fairface_images(data_root) -> list[Path]:
    """A fixed handful of real FairFace validation crops."""
    from ff_keras.data.crops import fairface_val_crops

    return fairface_val_crops(data_root, 16)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, data_root) -> Path:
    """One tiny exported ONNX model (32 px ResNet-18) that the service tests serve; read-only: a test
    that changes a model file copies it first."""
    from export_helpers import tiny_export

    return tiny_export(tmp_path_factory.mktemp("tiny_onnx"), data_root, formats=("onnx",), n_images=16) / "model.onnx"


@pytest.fixture(scope="session")
def face(data_root) -> bytes:
    """The bytes of one real FairFace crop (val 1.jpg), the face the service tests send."""
    return (data_root / "fairface" / "val" / "1.jpg").read_bytes()

