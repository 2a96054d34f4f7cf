"""Every command the README shows runs as written on a fresh clone.

The README's fenced ``bash`` blocks and its inline `` `python scripts/...` `` spans are parsed
into commands; for each one: the script exists, its arguments pass that script's own argparse
parser (the real parser, captured when the script's ``main`` calls ``parse_args``, so no model
is loaded), every ``key=value`` override is a valid config key (strict ``load_config``), and
every input path exists in the repository or is produced by another command the README shows
(``PRODUCED`` below names that command, and the test checks that it is in the README too).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib.util
import io
import itertools
import re
import shlex
import sys
from pathlib import Path

import pytest

from ff_keras.config import load_config
from ff_keras.data.readers import resolve_data_root

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DEFAULT_CONFIG = REPO / "configs" / "default.yaml"

# Paths the README's commands read that a fresh clone lacks, and the README command that makes each.
PRODUCED = {
    "weights/dlib_resnet_*.npz": "python scripts/convert_weights.py dlib",
    "weights/mobilenet_v2_*.npz": "scripts/convert_weights.py torchvision --backbone mobilenet_v2",
    "runs/dlib_full-release2/best/model.keras":
        "python scripts/train.py --config configs/dlib_full.yaml train.run_id=release2",
    "artifacts/release2": "--out artifacts/release2",
    "artifacts/model/model.onnx": "--out artifacts/model",
    "~/ff_data/root": "python scripts/prepare_fairface.py",
    "~/ff_runs/dlib_extended-v3": "train.run_id=v3 output_dir=~/ff_runs",
    "~/ff_runs/dlib_extended-v4": "train.run_id=v4 output_dir=~/ff_runs",
    "~/ff_runs/dlib_extended-v5": "train.run_id=v5 output_dir=~/ff_runs",
    "~/ff_runs/dlib_extended-v5h": "train.run_id=v5h output_dir=~/ff_runs",
    "~/ff_runs/dlib_extended-v7": "train.run_id=v7 output_dir=~/ff_runs",
    "~/ff_runs/dlib_extended-v7h": "train.run_id=v7h output_dir=~/ff_runs",
    "~/ff_runs/dlib_extended-v7h0": "train.run_id=v7h0 output_dir=~/ff_runs",
    "~/ff_runs/dlib_extended-v8": "train.run_id=v8 output_dir=~/ff_runs",
    "~/ff_runs/dlib_extended-v9": "train.run_id=v9 output_dir=~/ff_runs",
    "~/ff_runs/dlib_extended-v10": "train.run_id=v10 output_dir=~/ff_runs",
    "~/ff_runs/dlib_extended-v10h": "train.run_id=v10h output_dir=~/ff_runs",
    "~/ff_runs/v10h_export": "--out ~/ff_runs/v10h_export",
    "~/ff_runs/v10h_cal": "--out ~/ff_runs/v10h_cal --flip-tta",
    "~/ff_runs/recovered": "python scripts/convert_weights.py onnx --input models/ff_dlib_resnet150.onnx",
    "artifacts/release4/model.onnx": "dlib_extended-v7h0/best/model.keras --out artifacts/release4",
    "artifacts/release4_adjusted/model.onnx": "--out artifacts/release4_adjusted --flip-tta",
}
DEFAULT_DATA_ROOT = "../shared/data"
# Data the user brings from outside the repository, and the source the README must name for it.
EXTERNAL = {"~/ff_data/raw/": "sumanvithaeadala/EthnicityDetection"}
# Stand-ins for the user's own files and ids in synopsis lines (not files of the repository).
PLACEHOLDERS = {"PATH", "NAME", "ID", "FILE.pth", "photo.jpg", "photos/", "face.jpg", "file=@face.jpg"}
OUTPUT_FLAGS = {"--out", "--json", "--cache"}  # what these name is written (or resumed), not read
PATH_LIKE = re.compile(r"(/|\.(ya?ml|onnx|keras|npz|json|csv|pth|pt|jpg|png|txt)$)")
OVERRIDE = re.compile(r"^[a-z_]+(\.[a-z_]+)*=")
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def _readme_text() -> str:
    return README.read_text()


def fenced_commands(text: str) -> list[str]:
    """Commands of the ```bash blocks: comments dropped, continuations joined, ``&&`` split."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = _strip_comment(line).strip()
            out += [part.strip() for part in line.split("&&") if part.strip()]
    return out


def _strip_comment(line: str) -> str:
    """Drops a trailing ``# comment`` that is outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def inline_commands(text: str) -> list[str]:
    """Inline code spans that run a script (they may wrap across lines in the prose)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    spans = re.findall(r"`([^`]+)`", prose)
    cmds = [part.strip() for s in spans for part in " ".join(s.split()).split("&&")]
    # A bare `scripts/x.py` in prose names the script; with "python"/"bash" or arguments it is a command.
    return [c for c in cmds if re.match(r"^(python3?|bash) scripts/\S+|^scripts/\S+\.(py|sh) \S", c)]


def readme_commands() -> list[str]:
    text = _readme_text()
    return fenced_commands(text) + inline_commands(text)


def _tokens(command: str) -> list[str]:
    tokens = shlex.split(command)
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        tokens.pop(0)
    return tokens


def script_invocations() -> list[tuple[str, str, list[str]]]:
    """(command, script path, arguments) for every README command that runs a repository script."""
    out = []
    for cmd in readme_commands():
        tokens = _tokens(cmd)
        if tokens[:1] in (["python"], ["python3"], ["bash"]):
            tokens = tokens[1:]
        if tokens and tokens[0].startswith("scripts/"):
            out.append((cmd, tokens[0], tokens[1:]))
    return out


def synopsis_variants(args: list[str]) -> list[list[str]]:
    """Expands synopsis syntax: ``[--opt X]`` is included, ``a|b|c`` is tried one by one."""
    flat = [a if OVERRIDE.match(a) else a.strip("[]") for a in args]
    flat = [a for a in flat if a]
    choices = [a.split("|") if "|" in a and not OVERRIDE.match(a) and "{" not in a else [a] for a in flat]
    return [list(v) for v in itertools.product(*choices)]


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__("parser captured")
        self.parser = parser


_MODULES: dict[str, object] = {}


def script_parser(script: str, monkeypatch) -> argparse.ArgumentParser:
    """The script's real parser: its ``main`` runs until it calls ``parse_args``, which is
    intercepted (nothing after it, such as loading a model, runs)."""
    path = REPO / script
    if script not in _MODULES:
        spec = importlib.util.spec_from_file_location(f"readme_script_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[script] = module
    module = _MODULES[script]

    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(sys, "argv", [str(path)])
    try:
        module.main()
    except _Captured as captured:
        return captured.parser
    finally:
        monkeypatch.undo()
    raise AssertionError(f"{script}: main() never called ArgumentParser.parse_args")


def parse(parser: argparse.ArgumentParser, args: list[str]) -> argparse.Namespace:
    """Parses like the script would; an argparse error becomes an assertion naming it."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(args)
    except SystemExit as exit_:
        raise AssertionError(f"rejected by {parser.prog}: {err.getvalue().strip()}") from exit_


def input_paths(args: list[str]) -> list[str]:
    """Path-like arguments that the command reads (values of output flags excluded)."""
    out = []
    for prev, arg in zip([None, *args], args):
        if prev in OUTPUT_FLAGS or arg.startswith("-") or OVERRIDE.match(arg) or "=" in arg:
            continue
        if PATH_LIKE.search(arg):
            out.append(arg)
    return out


def path_ok(path: str, commands: list[str]) -> str | None:
    """None if ``path`` exists, is a placeholder or is produced by a README command; else why not."""
    if path in PLACEHOLDERS or "<" in path:
        return None
    if path.startswith(DEFAULT_DATA_ROOT):  # the README's data root; a clone elsewhere sets FF_DATA_ROOT
        return None if (resolve_data_root() / path[len(DEFAULT_DATA_ROOT):].lstrip("/")).exists() else (
            f"{path} is not in the data root {resolve_data_root()}")
    for prefix, source in EXTERNAL.items():
        if path.startswith(prefix):
            return None if source in _readme_text() else f"{path}: the README no longer says where it comes from"
    if any(Path(p).exists() for p in REPO.glob(path)) or (REPO / path).exists():
        return None
    for pattern, producer in PRODUCED.items():
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern.rstrip("/") + "/"):
            if any(producer in c for c in commands):
                return None
            return f"{path} would be produced by `{producer}`, which the README no longer shows"
    return f"{path} does not exist in the repository and no README command produces it"


INVOCATIONS = script_invocations()


def test_readme_shows_script_commands():
    scripts = {s for _, s, _ in INVOCATIONS}
    assert len(INVOCATIONS) >= 20 and "scripts/train.py" in scripts and "scripts/setup.sh" in scripts, INVOCATIONS


@pytest.mark.parametrize("script", sorted({s for _, s, _ in INVOCATIONS}))
def test_script_exists(script):
    assert (REPO / script).is_file(), f"README runs {script}, which does not exist"


@pytest.mark.parametrize("script", sorted({s for _, s, _ in INVOCATIONS if s.endswith(".py")}))
def test_flags_overrides_and_paths(script, monkeypatch):
    parser = script_parser(script, monkeypatch)
    commands = readme_commands()
    problems = []
    for cmd, s, args in INVOCATIONS:
        if s != script:
            continue
        for variant in synopsis_variants(args):
            try:
                ns = parse(parser, variant)
            except AssertionError as err:
                problems.append(f"`{cmd}`: {err}")
                continue
            # the positional dotted overrides the script parsed (a flag's KEY=VALUE value is not one)
            overrides = [a for a in getattr(ns, "overrides", None) or [] if OVERRIDE.match(a)]
            if overrides:
                config = getattr(ns, "config", None) or DEFAULT_CONFIG
                try:
                    load_config(REPO / config, overrides)
                except ValueError as err:
                    problems.append(f"`{cmd}`: {err}")
            problems += [f"`{cmd}`: {why}" for p in input_paths(variant) if (why := path_ok(p, commands))]
    assert not problems, "\n".join(problems)


def test_pytest_options_exist():
    """``python -m pytest`` options the README shows are pytest's own or registered in conftest."""
    conftest = (REPO / "tests" / "conftest.py").read_text()
    for cmd in readme_commands():
        tokens = _tokens(cmd)
        if tokens[:3] != ["python", "-m", "pytest"]:
            continue
        for flag in (t for t in tokens[3:] if t.startswith("--")):
            assert f'addoption("{flag}"' in conftest, f"`{cmd}`: {flag} is not a registered pytest option"


def test_ci_runs_the_readme_setup_and_test_commands():
    """.ci/run must run what a new user runs: the set-up script and the README's test command."""
    text = _readme_text()
    setup = re.search(r"## Set-up.*?```bash\n(.*?)```", text, flags=re.S).group(1)
    lines = [ln.strip() for ln in setup.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(lines) == 2, lines
    install, test = lines
    ci = (REPO / ".ci" / "run").read_text()
    assert install.split("&&")[0].strip() == "bash scripts/setup.sh", install
    assert "bash scripts/setup.sh" in ci
    assert re.search(rf"^{re.escape(test)}$", ci, flags=re.M), f".ci/run does not run the README's `{test}`"


def test_checker_rejects_broken_commands(monkeypatch):
    """The checks above fail on a missing flag, an unknown config key and a missing file."""
    parser = script_parser("scripts/train.py", monkeypatch)
    with pytest.raises(AssertionError, match="unrecognized arguments: --no-such-flag"):
        parse(parser, ["--no-such-flag"])
    with pytest.raises(ValueError, match="no_such_key"):
        load_config(DEFAULT_CONFIG, ["train.no_such_key=1"])
    assert "does not exist" in path_ok("configs/no_such.yaml", readme_commands())
    assert path_ok("configs/default.yaml", readme_commands()) is None
