"""ff_keras: age, gender and race for every face in a photo.

    import ff_keras
    faces = ff_keras.analyze("group.jpg")          # one record per face
    print([(f["box"], f["heads"]["age"]["label"]) for f in faces])

``analyze`` and ``FaceAnalyzer`` (``ff_keras.api``) are imported on first use, so ``import ff_keras``
stays light (no ONNX Runtime, no TensorFlow) for the training stack and the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ff_keras.version import __version__

__all__ = ["FaceAnalyzer", "analyze", "__version__"]

if TYPE_CHECKING:
    from ff_keras.api import FaceAnalyzer, analyze


def __getattr__(name: str):
    if name in ("FaceAnalyzer", "analyze"):
        from ff_keras import api

        return getattr(api, name)
    raise AttributeError(f"module 'ff_keras' has no attribute {name!r}")
