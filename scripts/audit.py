"""Composition audit of an annotate run, and the val confusion a model needs for it.

    python scripts/audit.py runs/annotate_photos [--n-boot 200]      # audit.md/.html/.json/.png in the folder
    python scripts/audit.py --store-val-confusion --model models/ff_dlib_resnet150.onnx

The body is ``ff_keras.cli.annotate.audit_main`` (``ff-keras annotate audit``).
"""

from __future__ import annotations

import sys

from ff_keras.cli.annotate import audit_main


def main(argv: list[str] | None = None) -> int:
    return audit_main(argv)


if __name__ == "__main__":
    sys.exit(main())
