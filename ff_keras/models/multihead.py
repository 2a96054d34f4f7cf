"""The multi-head model: raw RGB image -> normalise -> backbone -> shared embedding -> logit heads.

One key names everything about a head: output name, label key, loss key, metric prefix,
ONNX output name and JSON field. Outputs are float32 logits (heads are pinned to float32 so
mixed precision never reaches the losses); softmax belongs to evaluation and export.
No Sequential submodels and no augmentation inside the graph: both break tf2onnx export.
"""

from __future__ import annotations

import keras
from keras import layers

from ff_keras import labels
from ff_keras.models.backbones import get_backbone
from ff_keras.config import Config
from ff_keras.data import preprocess

BACKBONE_NAME = "backbone"
NORM_NAME = "normalize"
EMBED_NAME = "embed"


def build_backbone(name: str, image_size: int, width: float = 1.0, embedding: str = "pooled") -> keras.Model:
    """Builds a registered backbone; modules serving several variants expose ``VARIANTS``."""
    module = get_backbone(name)
    variant = getattr(module, "VARIANTS", {}).get(name, {})
    return module.build(image_size, width=width, embedding=embedding, **variant)


def normalization_layer(name: str) -> layers.Rescaling:
    """The input normalisation of backbone ``name`` (its ``SPEC``) as the model's first layer."""
    return preprocess.normalization_layer(get_backbone(name).SPEC, NORM_NAME)


def head_units(cfg: Config) -> dict[str, int]:
    """Output width per head, from the label schema (never typed)."""
    units = {}
    for head in cfg.model.heads:
        if head not in labels.HEAD_CLASSES:
            raise ValueError(f"unknown head {head!r} in model.heads; known: {sorted(labels.HEAD_CLASSES)}")
        units[head] = len(labels.HEAD_CLASSES[head])
    if cfg.model.age_years_head:
        units["age_years"] = 1
    if not units:
        raise ValueError("model.heads is empty and model.age_years_head is false: no outputs")
    return units


def build_model(cfg: Config) -> keras.Model:
    """Builds the functional multi-head model described by ``cfg.model`` / ``cfg.data.image_size``.

    ``cfg.model.embed_dim == 0`` puts the heads directly on the pooled backbone features (the
    layout of the FairFace authors' released ResNet-34, whose single fc maps 512 -> 18).
    The weights are freshly initialised: ``cfg.model.weights`` is read by
    ``ff_keras.convert.pretrained.build_pretrained``, never here (model code reads no files).

    Returns:
        A ``keras.Model`` with input ``image`` (float32 RGB 0-255, (B, S, S, 3)) and a dict of
        float32 logits keyed by head name.
    """
    m, size = cfg.model, cfg.data.image_size
    reg = keras.regularizers.L2(m.weight_decay) if m.weight_decay > 0 else None
    image = keras.Input((size, size, 3), name="image", dtype="float32")
    x = normalization_layer(m.backbone)(image)
    backbone = build_backbone(m.backbone, size, width=m.width, embedding=m.embedding)
    x = backbone(x)
    if m.embed_dim > 0:
        x = layers.Dense(m.embed_dim, kernel_regularizer=reg, name=EMBED_NAME)(x)
        x = layers.ReLU(name=f"{EMBED_NAME}_relu")(x)
    if m.dropout > 0:
        x = layers.Dropout(m.dropout, name=f"{EMBED_NAME}_dropout")(x)
    outputs = {
        head: layers.Dense(n, kernel_regularizer=reg, dtype="float32", name=head)(x)
        for head, n in head_units(cfg).items()
    }
    model = keras.Model(image, outputs, name=f"ff_{m.backbone}")
    add_weight_decay(backbone, m.weight_decay)
    set_trainable(model, m.freeze_backbone, m.freeze_up_to)
    return model


def add_weight_decay(backbone: keras.Model, weight_decay: float) -> None:
    """L2 on every conv/dense kernel of the backbone (not BN, not biases).

    Set on the layer attribute too so that it survives ``.keras`` serialisation.
    """
    if weight_decay <= 0:
        return
    for layer in backbone.layers:
        for attr in ("kernel", "depthwise_kernel"):
            var = getattr(layer, attr, None)
            if var is not None:
                reg = keras.regularizers.L2(weight_decay)
                setattr(layer, f"{attr}_regularizer", reg)
                var.regularizer = reg


def get_backbone_model(model: keras.Model) -> keras.Model:
    """The nested backbone model of a ``build_model`` model."""
    try:
        return model.get_layer(BACKBONE_NAME)
    except ValueError as err:
        raise ValueError(f"model {model.name!r} has no nested {BACKBONE_NAME!r} model") from err


def set_trainable(model: keras.Model, freeze_backbone: bool, freeze_up_to: int = 0) -> None:
    """Freezes the whole backbone, or its stem and stages ``< freeze_up_to`` (staged fine-tuning).

    Frozen BatchNormalization layers run in inference mode (Keras 3 semantics of
    ``trainable=False``), so their running statistics stay those of the pretrained weights.
    Recompile the model after calling this.
    """
    backbone = get_backbone_model(model)
    stage_of = get_backbone(_backbone_key(model)).stage_of
    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = not (freeze_backbone or stage_of(layer.name) < freeze_up_to)


def layer_lr_scales(model: keras.Model, decay: float) -> dict[str, float]:
    """Learning-rate multiplier per backbone variable path for layer-wise LR decay.

    Pretrained layers nearer the input hold more general features and should move less:
    a backbone layer in stage ``s`` gets ``decay ** (top + 1 - s)``, where ``top`` is the
    backbone's deepest stage; the embedding and heads keep the full rate (absent = 1).
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer-wise LR decay must be in (0, 1], got {decay}")
    if decay == 1.0:
        return {}
    backbone = get_backbone_model(model)
    stage_of = get_backbone(_backbone_key(model)).stage_of
    stages = {layer.name: stage_of(layer.name) for layer in backbone.layers}
    top = max(stages.values())
    return {v.path: decay ** (top + 1 - stages[layer.name]) for layer in backbone.layers for v in layer.weights}


def _backbone_key(model: keras.Model) -> str:
    prefix = "ff_"
    if not model.name.startswith(prefix):
        raise ValueError(f"model {model.name!r} was not built by build_model (name must start with {prefix!r})")
    return model.name[len(prefix):]
