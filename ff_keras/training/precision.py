"""Mixed-precision policy from ``cfg.train.mixed_precision``.

``auto`` picks ``mixed_float16`` when a GPU is visible (tensor cores; Keras adds loss
scaling), ``mixed_bfloat16`` on a CPU with bfloat16 instructions — AMX tiles or AVX-512 BF16
(oneDNN runs the convolutions on them: a dlib-network training step ran at 221 vs 117 img/s in
float32 on a 2-core Xeon with AMX, ``reports/benchmarks/train_precision.json``, and at 160 vs 102
on a 2-core AMD EPYC with avx512_bf16, ``reports/benchmarks/train_precision_avx512_bf16.json``),
and ``float32`` on other CPUs, where 16-bit math is emulated and slower. Under a mixed policy
the model's output heads must still be built with ``dtype="float32"`` so logits, softmax and
losses stay in float32 (the model builder's job).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from ff_keras.machine import cpu_flags

POLICIES = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})  # CPU flags under which bfloat16 pays
_ALIASES = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16", "fp32": "float32"}


def resolve_policy(name: str, flags: set[str] | None = None) -> str:
    """Config value -> a Keras dtype-policy name; an unknown value raises, naming it.

    ``flags``: the CPU's feature flags for ``auto`` (default: this machine's).
    """
    name = _ALIASES.get(name, name)
    if name not in POLICIES:
        raise ValueError(
            f"unknown mixed_precision {name!r}; expected one of {POLICIES} (or {sorted(_ALIASES)})"
        )
    if name == "auto":
        if tf.config.list_physical_devices("GPU"):
            return "mixed_float16"
        has_bf16 = BF16_FLAGS & (cpu_flags() if flags is None else flags)
        return "mixed_bfloat16" if has_bf16 else "float32"
    return name


def set_policy(name: str) -> str:
    """Sets the global Keras policy (call before building the model); returns its name."""
    policy = resolve_policy(name)
    keras.mixed_precision.set_global_policy(policy)
    return policy
