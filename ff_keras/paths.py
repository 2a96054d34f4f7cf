"""Where things are: the repository (so configured relative paths work from any working
directory), the files shipped inside the package (the released model, MTCNN's networks) and
dlib's model files."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the checkout; in an installed wheel, site-packages
PACKAGE = Path(__file__).resolve().parent


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


# The released model, shipped inside the package (package data; a checkout's models/ holds
# symlinks to it): every CLI and the Python API use it unless told otherwise.
SHIPPED_MODEL = PACKAGE / "release" / "ff_dlib_resnet150.onnx"
MODEL_ENV = "FF_MODEL"
# MTCNN's three networks as ONNX (scripts/convert_weights.py mtcnn), for faces.mtcnn_onnx.
MTCNN_WEIGHTS = PACKAGE / "faces" / "weights"


def default_model() -> str:
    """``$FF_MODEL`` if set, else the packaged release (absolute, so any working directory works).

    An explicit model argument, where a caller has one, wins over both."""
    import os

    return os.environ.get(MODEL_ENV) or str(SHIPPED_MODEL)


MODEL_HELP = (".onnx, .keras or SavedModel folder with model_info.json beside it "
              "(default: $FF_MODEL, else the shipped models/ff_dlib_resnet150.onnx)")


def add_model_argument(parser) -> None:  # noqa: ANN001 - an argparse.ArgumentParser
    """The ``--model`` option every command shares: one default (``default_model``), one help text."""
    parser.add_argument("--model", default=default_model(), help=MODEL_HELP)
