"""Machine facts recorded beside benchmark figures: parsing and presence in every benchmark script."""

from __future__ import annotations

import ast
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


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "scripts").glob("benchmark_*.py")))
def test_every_benchmark_json_records_the_machine(script):
    """Each benchmark script stores ``machine_facts()`` under "machine" in the dict it writes."""
    tree = ast.parse((REPO / "scripts" / script).read_text())
    stores = [
        node for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
        and getattr(node.value.func, "id", None) == "machine_facts"
        and any(isinstance(t, ast.Subscript) and getattr(t.slice, "value", None) == "machine" for t in node.targets)
    ]
    assert stores, f"{script} does not record machine_facts() under 'machine' in its JSON"
