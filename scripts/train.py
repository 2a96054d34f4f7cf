"""``python scripts/train.py ...`` = ``ff-keras train ...``: the command lives in ff_keras/cli/train.py."""

from ff_keras.cli.train import main

if __name__ == "__main__":
    main()
