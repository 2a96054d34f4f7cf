"""``python scripts/evaluate.py ...`` = ``ff-keras evaluate ...``: the command lives in ff_keras/cli/evaluate.py."""

from ff_keras.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
