"""Writes tests/fixtures/parity_<arch>_tiny.npz: torch-made golden tensors for the converter.

torchvision's own ResNet-18 at 1/8 width (8-64 channels) and MobileNetV2 at width 0.1, each
with an 18-way FairFace-layout classifier and randomised BatchNorm statistics, run in eval
mode on real FairFace crops resized to 64 px. Weights are rounded to float16 precision
*before* torch runs, so the files stay small (< 0.4 MB each) and the expected outputs are
exact for the stored weights. ``tests/test_convert.py`` checks them without torch (CI).

    python studies/make_parity_fixture.py [--arch resnet18 mobilenet_v2] [--out-dir tests/fixtures]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# triton (CUDA-only torch dependency) segfaults when loaded after TensorFlow; CPU torch
# never needs it, so block it before torch loads.
sys.modules.setdefault("triton", None)

import numpy as np
import torch
import torchvision
from torchvision.models.resnet import BasicBlock, ResNet

from ff_keras import labels
from ff_keras.data.crops import fairface_val_crops, read_crops
from ff_keras.data.preprocess import imagenet_spec, normalize_np
from ff_keras.data.readers import resolve_data_root

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
BLOCKS, SIZE = (2, 2, 2, 2), 64
# arch -> (width, torch prefix of the classifier Linear)
ARCHS = {"resnet18": (0.125, "fc"), "mobilenet_v2": (0.1, "classifier.1")}
N_FC = sum(len(labels.HEAD_CLASSES[h]) for h in labels.SOURCE_HEAD_ORDER)


def tiny_torchvision_resnet(width: float, blocks: tuple[int, ...], num_classes: int) -> ResNet:
    """torchvision's own ResNet code with stage widths scaled by ``width`` (same key layout)."""
    m = ResNet(BasicBlock, list(blocks), num_classes=num_classes)
    if width == 1.0:
        return m
    widths = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
    m.inplanes = widths[0]
    m.conv1 = torch.nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
    m.bn1 = torch.nn.BatchNorm2d(widths[0])
    for i, (c, n) in enumerate(zip(widths, blocks), start=1):
        setattr(m, f"layer{i}", m._make_layer(BasicBlock, c, n, stride=1 if i == 1 else 2))
    m.fc = torch.nn.Linear(widths[-1], num_classes)
    return m


def randomize_batchnorm(model: torch.nn.Module, images: torch.Tensor, seed: int) -> None:
    """Random BN affine params and running stats at a realistic scale.

    Purely random stats make a deep ResNet's activations explode (|x| ~ 1e3), so an absolute
    1e-4 tolerance would test float32 round-off, not the conversion. So: random gamma/beta,
    then running stats measured on ``images`` (one train-mode pass, cumulative average),
    then perturbed randomly so no statistic equals its measured value.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            n = bn.num_features
            bn.weight.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=g))
            bn.bias.copy_(0.1 * torch.randn(n, generator=g))
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration pass
        model.train()
        model(images)
        model.eval()
        for bn in bns:
            n = bn.num_features
            bn.running_mean.add_(0.1 * torch.randn(n, generator=g) * bn.running_var.sqrt())
            # Floor: a near-constant calibration channel (var ~ 0) would make BN amplify
            # float32 round-off ~300x, and the comparison would measure conditioning.
            bn.running_var.clamp_(min=1e-2).mul_(torch.empty(n).uniform_(0.5, 1.5, generator=g))
            bn.momentum = 0.1


def normalize(images_uint8: np.ndarray) -> torch.Tensor:
    """Raw RGB NHWC 0-255 -> torch's ImageNet-normalised NCHW float32 (the torchvision recipe)."""
    x = normalize_np(images_uint8, imagenet_spec())
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def face_images(n: int, size: int) -> np.ndarray:
    """The first ``n`` FairFace val crops, resized with PIL bilinear, uint8 NHWC."""
    return np.stack(read_crops(fairface_val_crops(resolve_data_root(), n), size))


def torch_net(arch: str, width: float, num_classes: int) -> torch.nn.Module:
    if arch == "resnet18":
        return tiny_torchvision_resnet(width, BLOCKS, num_classes)
    return torchvision.models.mobilenet_v2(width_mult=width, num_classes=num_classes)


@torch.no_grad()
def torch_outputs(model: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(pooled features, classifier logits) of a torchvision ResNet / MobileNetV2 in eval mode."""
    attr = "fc" if hasattr(model, "fc") else "classifier"
    head = getattr(model, attr)
    setattr(model, attr, torch.nn.Identity())
    features = model(x)
    setattr(model, attr, head)
    return features.numpy(), head(features).numpy()


def make_fixture(arch: str, out_dir: Path, seed: int = 0, n_images: int = 2) -> Path:
    width, fc = ARCHS[arch]
    torch.manual_seed(seed)
    model = torch_net(arch, width, N_FC)
    images = face_images(n_images, SIZE)
    randomize_batchnorm(model, normalize(face_images(8, SIZE)), seed)
    # float16-representable weights: small file, and torch runs on exactly what is stored.
    state = {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    features, logits = torch_outputs(model, normalize(images))
    arrays = {f"state/{k}": (v.numpy().astype(np.float16) if v.is_floating_point() else v.numpy())
              for k, v in state.items()}
    arrays.update(images=images, features=features, logits=logits, arch=np.str_(arch), fc=np.str_(fc),
                  width=np.float32(width), image_size=np.int32(SIZE))
    out = out_dir / f"parity_{arch}_tiny.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=sorted(ARCHS), choices=sorted(ARCHS))
    parser.add_argument("--out-dir", type=Path, default=FIXTURES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for arch in args.arch:
        path = make_fixture(arch, args.out_dir, args.seed)
        print(f"✅ wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
