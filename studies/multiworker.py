"""Same tiny training under none / mirrored (2 logical CPUs) / multi_worker (2 local processes).

Each run is ``scripts/train.py`` in fresh processes (logical devices and collectives must be
set up before TF starts), on the same batches: ``COMPARE`` switches off every source of
randomness that differs between layouts, so the losses must agree up to float32 summation
order:

* dropout 0 and no augmentation (per-replica RNG streams differ from the single-device one);
* the backbone frozen without the embedding cache: its BatchNorm layers then run in inference
  mode, since Keras BatchNorm is not synchronised across replicas (per-replica batch
  statistics over 4 rows would differ from those over 8);
* FairFace rows only with its three heads: every sample weight is 1, so the mean of the two
  replicas' masked means equals the global masked mean;
* SGD, not Adam: Adam's first step is ~``lr * sign(g)`` and would hide a wrong gradient scale;
  with SGD the second step's loss checks that replica gradients are summed / num_replicas.

One step per epoch for two epochs, so ``history.csv`` holds the first- and second-step losses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from ff_keras.config import load_config
from ff_keras.training.distribute import launch_local_workers
from ff_keras.paths import REPO

TRAIN = REPO / "scripts" / "train.py"
SMOKE = REPO / "configs" / "smoke.yaml"
COMPARE = [
    "data.sources=[fairface]", "data.limit_train=8", "data.limit_eval=16", "data.batch_size=8",
    "model.heads=[age,gender,race]", "model.age_years_head=false", "model.dropout=0.0",
    "augment.flip=false", "augment.brightness=0.0", "augment.contrast=0.0", "augment.saturation=0.0",
    "augment.hue=0.0", "augment.random_resized_crop=false", "augment.jit_compile=false",
    "train.stages=[{epochs: 2, lr: 0.05, freeze_backbone: true}]", "train.cache_frozen_embeddings=false",
    "train.optimizer=sgd", "train.steps_per_epoch=1", "train.mixed_precision=float32", "wandb.mode=disabled",
]
LAYOUTS = {
    "none": (1, ["train.distribute=none"]),
    "mirrored": (1, ["train.distribute=mirrored", "train.logical_devices=2"]),
    "multi_worker": (2, ["train.distribute=multi_worker"]),
}


def run_layout(layout: str, out_dir: Path, overrides: list[str], config: Path = SMOKE, timeout: float = 300) -> dict:
    """Trains one layout into ``out_dir/<name>-<layout>``; returns ``read_run`` of the chief's folder."""
    workers, extra = LAYOUTS[layout]
    argv = [sys.executable, str(TRAIN), "--config", str(config), *overrides, *extra,
            f"output_dir={out_dir}", f"train.run_id={layout}", "train.verbose=2"]
    logs = out_dir / "logs" / layout
    if workers > 1:
        launch_local_workers(argv, workers, timeout, logs)
    else:
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / "worker0.log", "w") as out:
            proc = subprocess.run(argv, check=False, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
        if proc.returncode:
            tail = (logs / "worker0.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{layout} run exited with {proc.returncode}:\n{tail}")
    name = load_config(config, overrides).name  # the run folder is <name>-<run_id>
    return read_run(out_dir / f"{name}-{layout}")


def read_run(run_dir: Path) -> dict:
    """Per-step losses (one step per epoch), the replica arithmetic and what was written."""
    history = pd.read_csv(run_dir / "history.csv")
    info = json.loads((run_dir / "best" / "model_info.json").read_text())
    return {
        "run_dir": str(run_dir),
        "step_losses": [float(v) for v in history["loss"]],
        "distribute": info["extra"]["distribute"],
        "saved_models": sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*.keras")),
        "worker_dirs": sorted(p.name for p in run_dir.glob("workertemp_*")),
    }


def compare(out_dir: Path, layouts=tuple(LAYOUTS), overrides: list[str] = COMPARE, timeout: float = 300,
            config: Path = SMOKE) -> dict:
    """Runs every layout on the same batches; adds each one's loss differences to ``none``."""
    results = {layout: run_layout(layout, out_dir, list(overrides), config, timeout) for layout in layouts}
    if "none" in results:
        base = results["none"]["step_losses"]
        for r in results.values():
            r["abs_diff_vs_none"] = [abs(a - b) for a, b in zip(r["step_losses"], base)]
    return results
