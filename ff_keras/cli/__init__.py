"""``ff-keras``: one command for everything a user runs, ``ff-keras <command> [options]``.

Each command is a module here with ``main(argv) -> int``; ``python scripts/<command>.py`` runs the
same code. A command's module is imported only when it runs, so ``ff-keras predict`` never loads
the training stack. To add a command, write ``ff_keras/cli/<name>.py`` and add one line to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ff_keras.version import __version__

# name -> one-line help (shown by ``ff-keras --help`` without importing the command)
COMMANDS: dict[str, str] = {
    "predict": "age, gender and race for every face in photos (table or --json; -b draws boxes)",
    "serve": "HTTP service: /predict, /predict/batch, /health, /metadata, /docs, demo page at /",
    "train": "train the model from a YAML config ([train] extra)",
    "evaluate": "held-out evaluation report: metrics, calibration, fairness slices, plots ([train] extra)",
    "export": "checkpoint -> .keras, SavedModel and ONNX with parity checks; --release: the shipped "
              "model as .keras and SavedModel ([train] extra)",
    "annotate": "a photo collection -> resumable Parquet, one row per face (local or --engine ray)",
    "audit": "composition of an annotated collection: argmax, summed probabilities, confusion-adjusted",
}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ff-keras",
        description="Age, gender and race from faces: predict, serve, annotate, audit, train, evaluate, export.",
        epilog="Run 'ff-keras <command> --help' for a command's options.",
    )
    ap.add_argument("--version", action="version", version=f"ff_keras {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="<command>", title="commands")
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Runs ``ff-keras <command> ARGS``: the command's own parser reads ARGS."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        ap = parser()
        ap.parse_args(argv[:1])  # --help, --version, or an error naming the choices
        ap.print_help()
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(f"ff_keras.cli.{name}")
    sys.argv[0] = f"ff-keras {name}"  # the command's usage and error lines name it as typed
    return module.main(rest) or 0
