"""Annotate a photo collection into resumable Parquet, audit its composition (see ff_keras/cli/annotate.py).

    python scripts/annotate.py INPUT... --out DIR [--engine local|ray] [--detector none] [--summary]
    python scripts/annotate.py audit DIR
    python scripts/annotate.py confusion --model models/ff_dlib_resnet150.onnx
"""

from __future__ import annotations

import sys

from ff_keras.cli.annotate import main

if __name__ == "__main__":
    sys.exit(main())
