"""The one place pretrained weights enter a model: resolve the configured file, load it.

Model code never reads files: ``build_pretrained`` builds the graph
(``models.multihead.build_model``), then ``load_pretrained`` reads the configured converted
file (``convert.weight_files``) into its backbone with the converter that wrote it.
"""

from __future__ import annotations

from pathlib import Path

import keras

from ff_keras.config import Config
from ff_keras.convert.dlib_weights import load_dlib_weights
from ff_keras.convert.torchvision import load_backbone_weights
from ff_keras.models import multihead
from ff_keras.paths import repo_path

# How each backbone's weights are produced (named in the error when a file is missing).
CONVERT_COMMANDS: dict[str, str] = {
    "dlib_resnet": "python scripts/convert_weights.py dlib",
}
_TORCHVISION_COMMAND = "python scripts/convert_weights.py torchvision --backbone {name} --input FILE.pth"


def convert_command(backbone: str) -> str:
    """The command that produces converted weights for ``backbone``."""
    return CONVERT_COMMANDS.get(backbone, _TORCHVISION_COMMAND.format(name=backbone))


def resolve_weights(path: str | Path, backbone: str) -> Path:
    """``model.weights`` as an absolute path (relative = to the repository root).

    Raises:
        FileNotFoundError: naming the expected file and the command that writes it.
    """
    resolved = repo_path(path)
    if not resolved.is_file():
        raise FileNotFoundError(
            f"model.weights file not found: {resolved} (configured as {str(path)!r}); "
            f"produce it with: {convert_command(backbone)}"
        )
    return resolved


def load_pretrained(backbone: keras.Model, name: str, path: str | Path) -> None:
    """Loads the converted file ``path`` into a bare ``backbone`` of registered type ``name``, strictly."""
    if name == "dlib_resnet":
        load_dlib_weights(backbone, Path(path))
    else:
        load_backbone_weights(backbone, path)


def load_trained(model: keras.Model, path: str | Path) -> None:
    """Loads every weight of a saved model of the same architecture (``.keras`` / ``.weights.h5``).

    Raises:
        FileNotFoundError / ValueError: naming the file and, for a different architecture, what differs.
    """
    resolved = repo_path(path)
    if not resolved.is_file():
        raise FileNotFoundError(f"model.init_from file not found: {resolved} (configured as {str(path)!r})")
    try:
        model.load_weights(resolved)
    except ValueError as err:
        raise ValueError(f"model.init_from {resolved} does not fit the configured model "
                         f"(same backbone, heads and embed_dim needed): {err}") from err


def build_pretrained(cfg: Config) -> keras.Model:
    """``multihead.build_model(cfg)`` with the backbone weights of ``cfg.model.weights`` loaded,
    then (``cfg.model.init_from``) every weight of a trained model."""
    model = multihead.build_model(cfg)
    if cfg.model.weights:
        path = resolve_weights(cfg.model.weights, cfg.model.backbone)
        load_pretrained(multihead.get_backbone_model(model), cfg.model.backbone, path)
    if cfg.model.init_from:
        load_trained(model, cfg.model.init_from)
    return model
