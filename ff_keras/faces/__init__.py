"""Multi-face photo analysis: detect, align to FairFace's crop convention, classify."""

from ff_keras.faces.detect import (
    DEFAULT_DETECTOR,
    DETECTORS,
    PADDING,
    Face,
    align,
    detect_and_align,
    detect_faces,
)

__all__ = ["DEFAULT_DETECTOR", "DETECTORS", "PADDING", "Face", "align", "detect_and_align", "detect_faces"]
