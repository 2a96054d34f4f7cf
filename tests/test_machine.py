"""Machine facts recorded beside benchmark figures: parsing and presence in every benchmark script."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from ff_keras import machine

REPO = Path(__file__).resolve().parents[1]

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 sse4_2 avx avx2 fma f16c avx512f avx512bw avx512_vnni
processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2
"""
ARM = """processor\t: 0
Features\t: fp asimd evtstrm aes asimddp sve i8mm bf16
CPU implementer\t: 0x41
"""


def test_cpuinfo_x86_first_cpu(tmp_path):
    (tmp_path / "cpuinfo").write_text(X86)
    model, flags = machine._cpuinfo(tmp_path / "cpuinfo")
    assert model == "AMD EPYC 7B13"
    assert {"avx2", "avx512f", "avx512_vnni"} <= flags and "fpu" in flags


def test_cpuinfo_arm_features(tmp_path):
    (tmp_path / "cpuinfo").write_text(ARM)
    _, flags = machine._cpuinfo(tmp_path / "cpuinfo")
    assert [f for f in machine.VECTOR_FLAGS if f in flags] == ["asimd", "asimddp", "sve", "bf16", "i8mm"]


def test_machine_facts_of_this_host():
    facts = machine.machine_facts()
    assert facts["cpu_model"] and facts["usable_cpus"] >= 1 and facts["tensorflow"]
    assert set(facts["vector_extensions"]) <= set(machine.VECTOR_FLAGS)
    assert facts["cpu_model"] in machine.describe(facts)


def test_write_result_records_the_machine(tmp_path, capsys):
    """One writer for every result file: folders made, machine facts added, a caller's own kept."""
    path = machine.write_result(tmp_path / "a" / "b" / "r.json", {"img_s": 1.5})
    saved = json.loads(path.read_text())
    assert saved["img_s"] == 1.5 and saved["machine"]["cpu_model"] == machine.machine_facts()["cpu_model"]
    assert f"wrote {path}" in capsys.readouterr().out
    mine = {"cpu_model": "given", "vector_extensions": [], "usable_cpus": 1}
    saved = json.loads(machine.write_result(tmp_path / "c.json", {"machine": mine}, quiet=True).read_text())
    assert saved["machine"] == mine and capsys.readouterr().out == ""
    assert json.loads(machine.write_result(tmp_path / "l.json", [{"x": 1}]).read_text()) == [{"x": 1}]
    assert "machine" not in json.loads(machine.write_result(tmp_path / "n.json", {"x": 1}, machine=False).read_text())


# Every script that writes a result JSON: the benchmarks, the studies and the data tools.
RESULT_WRITERS = sorted(
    str(p.relative_to(REPO)) for folder in ("benchmarks", "studies") for p in (REPO / folder).glob("*.py")
    if "--json" in p.read_text() or "json.dump" in p.read_text()
) + ["scripts/prepare_fairface.py", "scripts/validate_images.py", "studies/weighting.py"]


def test_result_writers_are_found():
    assert {"benchmarks/benchmark_model.py", "benchmarks/benchmark_faces.py", "studies/multiworker_smoke.py"} <= set(
        RESULT_WRITERS)
    assert all((REPO / s).is_file() for s in RESULT_WRITERS)


@pytest.mark.parametrize("script", RESULT_WRITERS)
def test_every_result_json_goes_through_write_result(script):
    """Each script writes its JSON with ``machine.write_result`` (so it records the machine), never by hand."""
    calls = [n for n in ast.walk(ast.parse((REPO / script).read_text())) if isinstance(n, ast.Call)]
    names = {getattr(n.func, "id", None) or getattr(n.func, "attr", None) for n in calls}
    assert "write_result" in names, f"{script} does not write its JSON with ff_keras.machine.write_result"
    by_hand = [n.lineno for n in calls if getattr(n.func, "attr", None) == "write_text"
               and any(getattr(getattr(a, "func", None), "attr", None) == "dumps" for a in n.args)]
    assert not by_hand, f"{script} writes JSON by hand (write_text(json.dumps(...))) at line {by_hand[0]}"
