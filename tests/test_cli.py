"""The ``ff-keras`` command (run as ``python -m ff_keras``, the same ``ff_keras.cli.main`` the console
script calls): subcommands listed, dispatch to the same code as ``python scripts/<x>.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ff_keras.cli import COMMANDS
from test_faces import multi_person_photo

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=300)


def test_help_lists_every_subcommand():
    out = _run("-m", "ff_keras", "--help")
    assert out.returncode == 0, out.stderr
    for name in ("predict", "serve", "train", "evaluate", "export", "annotate", "audit"):
        assert name in COMMANDS and f"    {name} " in out.stdout, out.stdout
    bad = _run("-m", "ff_keras", "frobnicate")
    assert bad.returncode == 2 and "invalid choice: 'frobnicate'" in bad.stderr


def test_predict_same_output_as_the_script(tmp_path):
    photo = str(multi_person_photo())
    via_cli = _run("-m", "ff_keras", "predict", photo, "--json", cwd=tmp_path)
    via_script = _run(str(REPO / "scripts" / "predict.py"), photo, "--json", cwd=tmp_path)
    assert via_cli.returncode == 0 and via_script.returncode == 0, via_cli.stderr + via_script.stderr
    doc = json.loads(via_cli.stdout)
    assert len(doc["faces"]) == 6 and doc == json.loads(via_script.stdout)
    usage = _run("-m", "ff_keras", "predict", "--batch-size", "0", photo)
    assert usage.returncode == 2 and "ff-keras predict: error: --batch-size must be >= 1" in usage.stderr


def test_every_command_parses_its_own_help():
    """Each subcommand's module imports and prints its own usage (train/evaluate/export need [train])."""
    for name in COMMANDS:
        out = _run("-m", "ff_keras", name, "--help")
        assert out.returncode == 0 and out.stdout.startswith(f"usage: ff-keras {name}"), (name, out.stderr[-500:])
