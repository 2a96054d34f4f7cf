"""Annotate a photo collection into resumable Parquet (see ff_keras/cli/annotate.py).

    python scripts/annotate.py INPUT... --out DIR [--engine local|ray] [--detector none] [--summary]
    python scripts/annotate.py audit DIR          # the same as scripts/audit.py DIR
"""

from __future__ import annotations

import sys

from ff_keras.cli.annotate import main

if __name__ == "__main__":
    sys.exit(main())
