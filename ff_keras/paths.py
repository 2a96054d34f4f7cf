"""Where the repository is, so configured relative paths work from any working directory."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def repo_path(path: str | Path) -> Path:
    """``path`` unchanged if absolute, else taken relative to the repository root."""
    p = Path(path)
    return p if p.is_absolute() else REPO / p
