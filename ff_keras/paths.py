"""Where things are: the repository (so configured relative paths work from any working
directory) and dlib's model files."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def repo_path(path: str | Path) -> Path:
    """``path`` with ``~`` expanded; unchanged if then absolute, else taken relative to the repository root.

    The expansion is here because bash leaves ``~`` alone in ``model.init_from=~/x`` (the dot makes
    it no assignment), so config overrides reach us unexpanded.
    """
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO / p


def face_models_dir() -> Path:
    """Folder of dlib's model files shipped by the ``face-recognition-models`` pip package."""
    import importlib.util

    # find_spec, not import: the package's __init__ needs pkg_resources, gone from new setuptools.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("pip package face-recognition-models is not installed")
    return Path(spec.origin).parent / "models"


# The model the repository ships; every CLI that takes a model uses it unless told otherwise.
SHIPPED_MODEL = REPO / "models" / "ff_dlib_resnet150.onnx"
MODEL_ENV = "FF_MODEL"


def default_model() -> str:
    """``$FF_MODEL`` if set, else the shipped ONNX model (absolute, so any working directory works)."""
    import os

    return os.environ.get(MODEL_ENV) or str(SHIPPED_MODEL)
