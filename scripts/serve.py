"""``python scripts/serve.py ...`` = ``ff-keras serve ...``: the command lives in ff_keras/cli/serve.py."""

import sys

from ff_keras.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
