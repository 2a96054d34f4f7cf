"""Composition audit of an annotate run, and the val confusion a model needs for it.

    python scripts/audit.py runs/annotate_photos [--n-boot 200]      # audit.md/.html/.json/.png in the folder
    python scripts/audit.py --store-val-confusion --model models/ff_dlib_resnet150.onnx

``python scripts/audit.py ...`` = ``ff-keras audit ...``: the command lives in ff_keras/cli/audit.py.
"""

import sys

from ff_keras.cli.audit import main

if __name__ == "__main__":
    sys.exit(main())
