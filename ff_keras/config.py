"""Typed run configuration: YAML -> dataclasses, strict, with dotted command-line overrides.

OmegaConf validates against the dataclass schema, so an unknown key or a value of the
wrong type raises instead of being ignored. ``load_config(path, ["train.epochs=3"])``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


@dataclass
class DataConfig:
    root: str = "../shared/data"  # overridden by $FF_DATA_ROOT; relative to the repo root
    manifests_dir: str = "splits"  # committed split manifests (CSV), relative to the repo root
    sources: list[str] = field(default_factory=lambda: ["fairface", "utkface"])
    image_size: int = 160
    batch_size: int = 64
    shuffle_buffer: int = 4096
    cache: bool = False  # cache decoded uint8 images in memory after the first epoch
    limit_train: int = 0  # 0 = all rows; >0 takes a seeded stratified subset (smoke runs)
    limit_eval: int = 0
    validate_files: bool = True  # pre-flight check that every image decodes
    seed: int = 0
    # Parallel map may emit elements out of order: faster, but batch order then varies run to run.
    deterministic: bool = True
    jpeg_dct_method: str = ""  # "" (libjpeg default) | "INTEGER_FAST" | "INTEGER_ACCURATE"
    # Decode threads; 0 = one per host CPU, -1 = tf.data AUTOTUNE.
    parallel_calls: int = 0
    # tf.data's autotuner; off by default: on the 2-core dev host it flipped between two
    # steady states, halving throughput in about half of the passes (reports/benchmarks).
    autotune: bool = False
    prefetch_batches: int = 2  # host-side prefetch depth (AUTOTUNE when autotune is on)
    # Stage batches on the GPU (custom loops, one GPU, train.distribute == "none"); off by
    # default: untested here (no GPU) and known to be fragile under Keras/tf.distribute.
    prefetch_to_device: bool = False


@dataclass
class AugmentConfig:
    flip: bool = True
    # ColorJitter strengths of the original PyTorch recipe.
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.15
    hue: float = 0.05
    random_resized_crop: bool = False
    crop_scale_min: float = 0.8  # crop area fraction in [crop_scale_min, crop_scale_max]
    crop_scale_max: float = 1.0  # > 1 zooms out: the crop box extends past the image (black border)
    # How the area is drawn in that range: "uniform" (torchvision's RandomResizedCrop) or
    # "log_uniform", which gives tight crops (area < 0.6) about twice the share over 0.25 .. 1.45.
    crop_area_sampling: str = "uniform"
    crop_ratio_min: float = 0.75  # aspect-ratio range of the crop (torchvision's 3/4 .. 4/3)
    crop_ratio_max: float = 1.3333333
    lowres_prob: float = 0.0  # share of images shrunk and re-enlarged (one size per batch)
    lowres_min_size: int = 40  # smallest side they shrink to, in pixels (drawn up to the input size)
    jpeg_prob: float = 0.0  # share of images re-encoded as JPEG
    jpeg_quality_min: int = 25  # quality drawn uniformly in [jpeg_quality_min, 95]
    jit_compile: bool = True  # run augmentation as one XLA-compiled function


@dataclass
class ModelConfig:
    backbone: str = "mobilenet_v2"  # key of ff_keras.models.backbones.BACKBONES
    weights: Optional[str] = None  # converted backbone weights (.npz / .weights.h5), or None
    # A trained model of the same architecture (a run's best/model.keras) to start from:
    # every layer's weights, after model.weights (continue or re-schedule a finished run).
    init_from: Optional[str] = None
    embedding: str = "pooled"  # dlib_resnet: "pooled" (256-d) | "descriptor" (128-d)
    embed_dim: int = 512
    dropout: float = 0.3
    heads: list[str] = field(default_factory=lambda: ["age", "gender", "race", "race_utk"])
    age_years_head: bool = True
    freeze_backbone: bool = False
    freeze_up_to: int = 0  # freeze the stem and stages < N (0 = nothing)
    weight_decay: float = 1e-4
    width: float = 1.0  # backbone width multiplier (tiny test models use < 1)


@dataclass
class StageConfig:
    """One phase of staged fine-tuning."""

    epochs: int = 1
    lr: float = 1e-3
    freeze_backbone: bool = False
    freeze_up_to: int = 0
    steps_per_epoch: int = 0  # 0 = train.steps_per_epoch (a short fine-tune after a full head phase)


@dataclass
class TrainConfig:
    epochs: int = 10
    steps_per_epoch: int = 0  # 0 = a full pass over the training split
    validation_steps: int = 0
    optimizer: str = "adamw"
    lr: float = 1e-3
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    # Class-balanced loss per head: {head: power}, class weight ~ n_c ** -power over the
    # training rows (0.5 = inverse square root, 1 = balanced), mean 1 (losses.class_balance_weights).
    class_balance: dict[str, float] = field(default_factory=dict)
    age_years_loss: str = "huber"  # "l1" | "huber"
    loss_weights: dict[str, float] = field(
        default_factory=lambda: {"age": 1.0, "gender": 1.0, "race": 1.0, "race_utk": 1.0, "age_years": 0.05}
    )
    loss_weighting: str = "fixed"  # "fixed" | "uncertainty" | "dwa"
    dwa_temperature: float = 2.0
    stages: list[StageConfig] = field(default_factory=list)  # empty = one stage with the fields above
    cache_frozen_embeddings: bool = True
    # Layer-wise LR decay when the backbone trains: stage s of T gets lr * decay**(T + 1 - s),
    # the embedding and heads the full rate (1.0 = off).
    layer_lr_decay: float = 1.0
    mixed_precision: str = "auto"  # "auto" | "float32" | "mixed_float16" | "mixed_bfloat16"
    distribute: str = "none"  # "none" | "mirrored" | "multi_worker"
    # mirrored without GPUs: split the CPU into this many logical devices (tests/smoke; 0 = off)
    logical_devices: int = 0
    monitor: str = "val_race_accuracy"
    early_stopping_patience: int = 5
    seed: int = 0
    # The run folder is <output_dir>/<name>-<run_id>; "" = a new timestamp. Giving the id of an
    # existing folder resumes that run (finished stages are skipped, the current one restored).
    run_id: str = ""
    cache_flip: bool = True  # embedding cache also holds left-right flipped training images
    jit_compile: bool = False  # XLA; worth it on GPU, slow to compile on CPU
    verbose: int = 1  # Keras progress: 1 = bar per step, 2 = one line per epoch


@dataclass
class WandbConfig:
    mode: str = "offline"  # "online" | "offline" | "disabled"
    project: str = "ff_keras"
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    dir: str = ""  # "" = inside the run folder (<run>/wandb/offline-run-*); `wandb sync` it later


@dataclass
class EvalConfig:
    """scripts/evaluate.py: bootstrap, slices, calibration bins, TTA."""

    n_boot: int = 1000  # bootstrap resamples for every CI
    level: float = 0.95  # CI level
    seed: int = 0
    min_group_n: int = 20  # groups smaller than this are listed but excluded from worst/gap/ratio
    ece_bins: int = 15
    batch_size: int = 64
    tta: str = "none"  # "none" | "flip" (horizontal-flip averaging)
    identity_cache: Optional[str] = ".cache/identity_v1.npz"  # for a full leakage re-check (repo-relative)
    leakage_report: str = "reports/leakage.json"  # fallback: figures of the split-time check


@dataclass
class Config:
    name: str = "default"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Loads ``path`` over the defaults, then applies ``key.sub=value`` overrides.

    Raises:
        ValueError: on unknown keys, wrong types or a malformed override, naming it.
    """
    try:
        merged = OmegaConf.structured(Config)
        if path is not None:
            merged = OmegaConf.merge(merged, OmegaConf.load(str(path)))
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not of the form key.sub=value")
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ValueError(f"invalid config ({path or 'defaults'}): {err}") from err


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
