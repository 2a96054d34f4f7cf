"""CPU throughput: Keras vs torchvision ResNet-34 inference, and Keras training steps.

    python benchmarks/benchmark_model.py --json runs/benchmark_model.json        # full (minutes)
    python benchmarks/benchmark_model.py --json /tmp/b.json --steps 2 --warmup 1 --batch 4   # smoke
    python benchmarks/benchmark_model.py --json reports/benchmarks/train_precision.json --skip-torch \
        --batch 64 --train-backbones dlib_resnet --train-sizes 150 --train-precisions float32 mixed_bfloat16

Inference: batch 32, 224 px, ``--threads`` (2) intra-op threads for both frameworks.
Keras runs a ``tf.function`` with a fixed input signature (no retracing), ``jit_compile=False``
(XLA on CPU is slower than TF's oneDNN kernels here) and NHWC, the layout oneDNN's fused
CPU convolutions want. torchvision runs in its fastest CPU mode: ``channels_last`` memory
format under ``torch.inference_mode()``. Without torch, ``torch_img_s`` is read from the
previous JSON at ``--json`` (``torch_source`` says so). Training: one compiled
``train_on_batch`` step of the full multi-head model per iteration, in img/s, under each of
``--train-precisions`` (bfloat16 pays on CPUs with AMX tiles; see ``machine.vector_extensions``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.modules.setdefault("triton", None)  # triton segfaults when loaded after TensorFlow

from ff_keras.machine import write_result  # noqa: E402


def timed(fn: Callable[[], object], steps: int, warmup: int) -> float:
    """Seconds per call, median of ``steps`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def keras_inference(batch: int, size: int, steps: int, warmup: int) -> float:
    import numpy as np
    import tensorflow as tf

    from ff_keras.config import load_config
    from ff_keras.models.multihead import build_model

    model = build_model(load_config(None, ["model.backbone=resnet34", f"data.image_size={size}"]))
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32"))

    @tf.function(input_signature=[tf.TensorSpec((batch, size, size, 3), tf.float32)], jit_compile=False)
    def forward(images):
        return model(images, training=False)

    def step():
        return {k: v.numpy() for k, v in forward(x).items()}  # .numpy() waits for the result

    return batch / timed(step, steps, warmup)


def torch_inference(batch: int, size: int, steps: int, warmup: int, threads: int) -> float:
    import torch
    import torchvision

    torch.set_num_threads(threads)
    net = torchvision.models.resnet34(weights=None).eval().to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=torch.channels_last)

    def step():
        with torch.inference_mode():
            return net(x)

    return batch / timed(step, steps, warmup)


def keras_train_step(backbone: str, batch: int, size: int, steps: int, warmup: int,
                     policy: str = "float32") -> float:
    import keras

    from ff_keras.training import precision

    previous = keras.mixed_precision.global_policy().name
    precision.set_policy(policy)
    try:
        return _keras_train_step(backbone, batch, size, steps, warmup)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _keras_train_step(backbone: str, batch: int, size: int, steps: int, warmup: int) -> float:
    import keras
    import numpy as np

    from ff_keras import labels
    from ff_keras.config import load_config
    from ff_keras.models.multihead import build_model

    model = build_model(load_config(None, [f"model.backbone={backbone}", f"data.image_size={size}"]))
    sparse = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                  loss={h: (sparse if h in labels.HEAD_CLASSES else "huber") for h in model.output},
                  jit_compile=False)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = {h: rng.integers(0, len(c), batch) for h, c in labels.HEAD_CLASSES.items() if h in model.output}
    if "age_years" in model.output:
        y["age_years"] = rng.uniform(0, 80, (batch, 1)).astype("float32")
    return batch / timed(lambda: model.train_on_batch(x, y), steps, warmup)


def saved_torch_figure(path: Path) -> tuple[float | None, str, str | None]:
    """(img/s, source note, when measured) of torch from a previous JSON written by this script."""
    if path.is_file():
        prev = json.loads(path.read_text())
        if prev.get("torch_img_s"):
            when = prev.get("torch_measured_at", prev.get("timestamp"))
            return prev["torch_img_s"], f"read from saved run {path} (measured {when}); torch not used now", when
    return None, "torch not installed and no saved figure", None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, required=True, help="where to write the results")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=10, help="timed iterations per measurement")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--train-sizes", type=int, nargs="*", default=[160, 224])
    p.add_argument("--skip-torch", action="store_true", help="act as if torch were absent")
    p.add_argument("--train-backbones", nargs="*", default=["resnet34", "mobilenet_v2"])
    p.add_argument("--train-precisions", nargs="*", default=["float32"],
                   help="Keras dtype policies for the training steps, e.g. float32 mixed_bfloat16")
    args = p.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    # Must precede the first TF op; inter-op 1 keeps both frameworks on the same 2 cores.
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    result: dict = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), "threads": args.threads,
                    "batch": args.batch, "size": args.size, "steps": args.steps, "warmup": args.warmup,
                    "tensorflow": tf.__version__, "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default(on)")}
    # torch first: measured before TF's thread pools exist, so neither framework's idle
    # spinning threads compete with the other's timed loop.
    try:
        if args.skip_torch:
            raise ImportError("--skip-torch")
        import torch

        result["torch"] = torch.__version__
        result["torch_img_s"] = torch_inference(args.batch, args.size, args.steps, args.warmup, args.threads)
        result["torch_source"] = "measured in this run (channels_last, inference_mode)"
        result["torch_measured_at"] = result["timestamp"]
    except ImportError:
        result["torch_img_s"], result["torch_source"], result["torch_measured_at"] = saved_torch_figure(args.json)
    result["keras_img_s"] = keras_inference(args.batch, args.size, args.steps, args.warmup)
    print(f"✅ Keras ResNet-34 inference: {result['keras_img_s']:.1f} img/s")
    if result["torch_img_s"]:
        result["keras_over_torch"] = result["keras_img_s"] / result["torch_img_s"]
        print(f"✅ torchvision ResNet-34: {result['torch_img_s']:.1f} img/s ({result['torch_source']}); "
              f"Keras/torch = {result['keras_over_torch']:.2f}x")
    else:
        print(f"⚠️ no torch figure: {result['torch_source']}")
    for backbone in args.train_backbones:
        for size in args.train_sizes:
            for policy in args.train_precisions:
                suffix = "" if policy == "float32" else f"_{policy}"
                key = f"keras_train_{backbone}_{size}{suffix}_img_s"
                result[key] = keras_train_step(backbone, args.batch, size, args.steps, args.warmup, policy)
                print(f"✅ Keras train step {backbone} @ {size}px, {policy}: {result[key]:.1f} img/s")
    write_result(args.json, result)


if __name__ == "__main__":
    main()
