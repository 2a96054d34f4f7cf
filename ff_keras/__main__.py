"""``python -m ff_keras ...`` = the ``ff-keras`` command."""

import sys

from ff_keras.cli import main

sys.exit(main())
