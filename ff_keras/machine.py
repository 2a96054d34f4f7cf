"""Facts about the machine a measurement ran on, recorded beside every benchmark figure.

CPU throughput of the same code differs 2-3x between hosts that all report "2 cores"
(vector extensions such as AVX-512 vs AVX2 only, clock, contention), so a figure is only
comparable together with the CPU model, its vector extensions and the load at the time.
"""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path

# Flags that decide how fast TF / ONNX Runtime kernels run (x86 and ARM names, as in /proc/cpuinfo).
VECTOR_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
    "asimd", "asimddp", "sve", "sve2", "bf16", "i8mm",
)
LIBRARIES = ("tensorflow", "keras", "onnxruntime", "torch")


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    """(model name, flag set) of the first CPU listed in ``/proc/cpuinfo`` (Linux)."""
    model, flags = "", set()
    try:
        text = path.read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def cpu_flags() -> set[str]:
    """The CPU's feature flags as listed in ``/proc/cpuinfo`` (empty where that is unreadable)."""
    return _cpuinfo()[1]


def machine_facts() -> dict:
    """CPU model, its vector extensions, usable cores, load average and library versions."""
    model, flags = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "vector_extensions": [f for f in VECTOR_FLAGS if f in flags],
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        **versions,
    }


def describe(facts: dict) -> str:
    """One line for logs: ``AMD EPYC (avx, avx2, fma), 2 CPUs, load 1.2``."""
    ext = ", ".join(facts["vector_extensions"]) or "no vector extensions listed"
    load = facts.get("load_average_1_5_15")
    return (f"{facts['cpu_model']} ({ext}), {facts['usable_cpus']} CPUs"
            + (f", load {load[0]}" if load else ""))


def write_result(path: str | Path, result: dict | list, *, machine: bool = True, indent: int = 2,
                 quiet: bool = False) -> Path:
    """Writes a result as JSON (parent folders made) and prints ``wrote PATH``.

    Every benchmark, study and data tool writes its figures through this one function, so each
    result file records the host it was measured on under ``"machine"`` (kept if the caller
    already filled it in, e.g. to print it first) and all files share one format.

    Args:
        path: the JSON file to write; ``~`` is expanded.
        result: a JSON-serialisable dict (gets ``"machine"``) or list (written as is).
        machine: add ``machine_facts()`` to a dict result; off for files that must not change
            between hosts.
        indent: JSON indentation.
        quiet: do not print the ``wrote`` line.

    Returns:
        The path written.
    """
    path = Path(path).expanduser()
    if machine and isinstance(result, dict):
        result = {**result, "machine": result.get("machine") or machine_facts()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=indent) + "\n")
    if not quiet:
        facts = result.get("machine") if isinstance(result, dict) else None
        print(f"wrote {path}" + (f" (machine: {describe(facts)})" if facts else ""), flush=True)
    return path
