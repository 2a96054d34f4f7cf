"""``python scripts/predict.py ...`` = ``ff-keras predict ...``: the command lives in ff_keras/cli/predict.py."""

import sys

from ff_keras.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
