"""``python scripts/export.py ...`` = ``ff-keras export ...``: the command lives in ff_keras/cli/export.py."""

import sys

from ff_keras.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
