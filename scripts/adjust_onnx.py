"""Writes a copy of an exported ONNX model with flip TTA and/or class-prior correction inside the graph.

    python scripts/adjust_onnx.py --onnx artifacts/model/model.onnx --out artifacts/model_adjusted \
        [--flip-tta] [--prior-correction race=1.0] [--manifests splits/extended]

--flip-tta: the copy runs the network on ``[image; mirrored image]`` in one batch and returns the
mean of the halves (twice the compute per face). --prior-correction HEAD=TAU: the head's
probabilities are multiplied by ``prior ** -TAU`` and renormalised, ``prior`` = the class
frequencies of that head in the training rows of ``--manifests`` (post-hoc logit adjustment;
TAU 1 targets balanced accuracy). The copy (same file name, ``model_info.json`` beside it) is
checked against the source model run in numpy on real faces; exits non-zero on disagreement.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from ff_keras import labels
from ff_keras.data.crops import fairface_val_crops
from ff_keras.data.readers import resolve_data_root
from ff_keras.inference.export import N_PARITY, adjusted_info, prior_correction_weights, write_adjusted_onnx
from ff_keras.inference.predictor import load_images
from ff_keras.model_info import ModelInfo, load_info, save_info
from ff_keras.splits.build import load_split


def training_priors(info: ModelInfo, manifests: str, head: str) -> list[float]:
    """Class frequencies of ``head`` over the labelled training rows, in the model's class order."""
    table = load_split(manifests, ["fairface", "utkface"], "train")
    values = table.loc[labels.labelled_mask(table, head), labels.label_column(head)]
    counts = values.value_counts()
    missing = [c for c in info.classes[head] if c not in counts]
    if missing:
        raise ValueError(f"{manifests}: no training rows of {head} classes {missing}")
    return [float(counts[c]) / len(values) for c in info.classes[head]]


def parse_prior_args(items: list[str], heads: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        head, sep, tau = item.partition("=")
        if not sep or head not in heads:
            raise ValueError(f"--prior-correction {item!r}: expected HEAD=TAU with HEAD one of {heads}")
        try:
            out[head] = float(tau)
        except ValueError:
            raise ValueError(f"--prior-correction {item!r}: TAU must be a number") from None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", required=True, help="exported .onnx with model_info.json beside it")
    ap.add_argument("--out", required=True, help="output folder (must differ from the source folder)")
    ap.add_argument("--flip-tta", action="store_true", help="average each output over the face and its mirror")
    ap.add_argument("--prior-correction", action="append", default=[], metavar="HEAD=TAU")
    ap.add_argument("--manifests", default="splits/extended", help="split manifests whose train rows give the priors")
    ap.add_argument("--data-root", default=None, help="default: $FF_DATA_ROOT or ../shared/data")
    ap.add_argument("--parity-images", type=int, default=N_PARITY)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    src, out = Path(args.onnx), Path(args.out)
    if src.suffix != ".onnx" or not src.is_file():
        ap.error(f"--onnx {src} is not an .onnx file")
    if out.resolve() == src.parent.resolve():
        ap.error("--out must be another folder: the source model and its model_info.json stay as they are")
    info = load_info(src)
    try:
        taus = parse_prior_args(args.prior_correction, info.heads)
    except ValueError as err:
        ap.error(str(err))
    if not args.flip_tta and not taus:
        ap.error("nothing to do: give --flip-tta and/or --prior-correction HEAD=TAU")
    priors = {h: training_priors(info, args.manifests, h) for h in taus}
    weights = {h: prior_correction_weights(priors[h], tau) for h, tau in taus.items()}
    images = load_images(fairface_val_crops(resolve_data_root(args.data_root), args.parity_images), info.image_size)
    out.mkdir(parents=True, exist_ok=True)
    parity = write_adjusted_onnx(src, out / src.name, info, images, flip=args.flip_tta, prior_weights=weights)
    provenance = {"parity": parity, "priors": priors, "tau": taus, "manifests": args.manifests}
    adjusted = adjusted_info(info, args.flip_tta, weights)
    save_info(replace(adjusted, extra={**adjusted.extra, "adjusted": provenance}), out)
    worst = max(r["max_abs"] for r in parity.values())
    print(f"✅ {out / src.name}: flip TTA {'on' if args.flip_tta else 'off'}, prior correction {taus or 'none'}; "
          f"max abs diff {worst:.2e} on {len(images)} faces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
