"""Every command the README and the docs pages show runs as written on a fresh clone.

The fenced ``bash`` blocks and the inline `` `python scripts/...` `` spans (also ``benchmarks/``
and ``studies/``) of README.md and docs/*.md are parsed into commands; for each one: the script
exists, ``python SCRIPT --help`` runs from the repository root, its arguments pass that script's
own argparse parser (the real parser, captured when the script's ``main`` calls ``parse_args``,
so no model is loaded), every ``key=value`` override is a valid config key (strict
``load_config``), and every input path exists in the repository or is produced by another command
the docs show (``PRODUCED`` below names that command, and the test checks that it is shown too).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import functools
import importlib.util
import io
import itertools
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ff_keras.config import load_config
from ff_keras.data.readers import resolve_data_root

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))  # not docs/_archive/: the frozen old README
# Folders whose scripts a documented command may run.
SCRIPT_DIRS = ("scripts/", "benchmarks/", "studies/")
DEFAULT_CONFIG = REPO / "configs" / "default.yaml"

# Paths the documented commands read that a fresh clone lacks, and the documented command that makes each.
PRODUCED = {
    "weights/dlib_resnet_*.npz": "python scripts/convert_weights.py dlib",
    "weights/mobilenet_v2_*.npz": "scripts/convert_weights.py torchvision --backbone mobilenet_v2",
    "runs/dlib_full-release2/best/model.keras":
        "python scripts/train.py --config configs/dlib_full.yaml train.run_id=release2",
    "artifacts/release2": "--out artifacts/release2",
    "artifacts/model/model.onnx": "--out artifacts/model",
    "artifacts/model": "--out artifacts/model",
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
    "~/ff_runs/i29/embed.npz": "group_selection.py embed",
    "~/ff_runs/r41/release4/*": "git show 782d8a3:ff_keras/release/",
}
DEFAULT_DATA_ROOT = "../shared/data"
# Data the user brings from outside the repository, and the source the docs must name for it.
EXTERNAL = {"~/ff_data/raw/": "sumanvithaeadala/EthnicityDetection"}
# Stand-ins for the user's own files and ids in synopsis lines (not files of the repository).
PLACEHOLDERS = {"PATH", "NAME", "ID", "FILE.pth", "photo.jpg", "photos/", "face.jpg", "file=@face.jpg"}
OUTPUT_FLAGS = {"--out", "--json", "--cache", "--work"}  # what these name is written (or resumed), not read
PATH_LIKE = re.compile(r"(/|\.(ya?ml|onnx|keras|npz|json|csv|pth|pt|jpg|png|txt)$)")
OVERRIDE = re.compile(r"^[a-z_]+(\.[a-z_]+)*=")
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def _readme_text() -> str:
    return README.read_text()


def _docs_text() -> str:
    """README.md and every docs page: where commands are shown."""
    return "\n".join(p.read_text() for p in [README, *DOCS])


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
    dirs = "(" + "|".join(d.rstrip("/") for d in SCRIPT_DIRS) + ")"
    return [c for c in cmds if re.match(rf"^(python3?|bash) {dirs}/\S+|^{dirs}/\S+\.(py|sh) \S", c)]


def readme_commands() -> list[str]:
    """Every command shown in README.md and docs/*.md."""
    text = _docs_text()
    return fenced_commands(text) + inline_commands(text)


def _tokens(command: str) -> list[str]:
    tokens = shlex.split(command)
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        tokens.pop(0)
    return tokens


def script_invocations() -> list[tuple[str, str, list[str]]]:
    """(command, script path, arguments) for every documented command that runs a repository script."""
    out = []
    for cmd in readme_commands():
        tokens = _tokens(cmd)
        if tokens[:1] in (["python"], ["python3"], ["bash"]):
            tokens = tokens[1:]
        if tokens and tokens[0].startswith(SCRIPT_DIRS):
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


@functools.lru_cache(maxsize=None)
def documented_outputs(commands: tuple[str, ...]) -> frozenset[str]:
    """What documented commands write: the values of their ``--out``, ``--out-dir`` and ``--json``."""
    out = set()
    for command in commands:
        try:
            tokens = _tokens(command)
        except ValueError:
            continue
        out |= {arg for prev, arg in zip(tokens, tokens[1:]) if prev in {"--out", "--out-dir", "--json"}}
    return frozenset(out)


def path_ok(path: str, commands: list[str]) -> str | None:
    """None if ``path`` exists, is a placeholder or is produced by a README command; else why not."""
    if path in PLACEHOLDERS or "<" in path or "://" in path:  # a URL (s3://...) is the user's, not a file here
        return None
    if path.startswith(DEFAULT_DATA_ROOT):  # the README's data root; a clone elsewhere sets FF_DATA_ROOT
        return None if (resolve_data_root() / path[len(DEFAULT_DATA_ROOT):].lstrip("/")).exists() else (
            f"{path} is not in the data root {resolve_data_root()}")
    for prefix, source in EXTERNAL.items():
        if path.startswith(prefix):
            return None if source in _docs_text() else f"{path}: the docs no longer say where it comes from"
    if any(Path(p).exists() for p in REPO.glob(path)) or (REPO / path).exists():
        return None
    for written in documented_outputs(tuple(commands)):  # a documented command writes it (or its folder)
        if path == written or path.startswith(written.rstrip("/") + "/"):
            return None
    for pattern, producer in PRODUCED.items():
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern.rstrip("/") + "/"):
            if any(producer in c for c in commands):
                return None
            return f"{path} would be produced by `{producer}`, which the docs no longer show"
    return f"{path} does not exist in the repository and no documented command produces it"


INVOCATIONS = script_invocations()


PY_SCRIPTS = sorted({s for _, s, _ in INVOCATIONS if s.endswith(".py")})


def test_readme_shows_script_commands():
    scripts = {s for _, s, _ in INVOCATIONS}
    assert len(INVOCATIONS) >= 20 and "scripts/train.py" in scripts and "scripts/setup.sh" in scripts, INVOCATIONS
    readme = {s for c in fenced_commands(_readme_text()) + inline_commands(_readme_text())
              for s in [_tokens(c)[1] if _tokens(c)[:1] == ["python"] else ""]}
    assert {"scripts/predict.py", "scripts/serve.py", "scripts/evaluate.py"} <= readme, readme
    assert {"benchmarks/benchmark_robustness.py", "studies/compare_weighting.py"} <= scripts, scripts


def test_docs_show_only_scripts_of_the_three_folders():
    """A command naming a script that moved away (e.g. the old ``scripts/benchmark_*.py``) is caught."""
    moved = [c for c in readme_commands() if re.search(r"scripts/(benchmark_|learning_curve|linear_probe|"
                                                       r"detector_agreement|compare_weighting|multiworker_smoke|"
                                                       r"make_\w+_fixture|studies/)", c)]
    assert not moved, moved


@pytest.mark.parametrize("script", sorted({s for _, s, _ in INVOCATIONS}))
def test_script_exists(script):
    assert (REPO / script).is_file(), f"the docs run {script}, which does not exist"


@pytest.fixture(scope="module")
def help_runs() -> dict[str, subprocess.CompletedProcess]:
    """``python SCRIPT --help`` from the repository root for every documented script, as a user
    runs it (a fresh process each, two at a time: several import TensorFlow before parsing)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    def run(script: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, script, "--help"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(PY_SCRIPTS, pool.map(run, PY_SCRIPTS)))


@pytest.mark.parametrize("script", PY_SCRIPTS)
def test_script_help_runs(script, help_runs):
    proc = help_runs[script]
    assert proc.returncode == 0 and "usage:" in proc.stdout, (
        f"`python {script} --help` failed ({proc.returncode}):\n{proc.stderr[-2000:]}")


@pytest.mark.parametrize("script", PY_SCRIPTS)
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
    """``python -m pytest`` options the docs show are pytest's own or registered in conftest."""
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
