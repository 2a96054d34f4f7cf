"""Writes a copy of an exported ONNX model with flip TTA and/or class-prior correction inside the graph.

    python scripts/adjust_onnx.py --onnx artifacts/model/model.onnx --out artifacts/model_adjusted \
        [--flip-tta] [--prior-correction race=1.0] [--calibrate] [--manifests splits/extended]

--flip-tta: the copy runs the network on ``[image; mirrored image]`` in one batch and returns the
mean of the halves (twice the compute per face). --prior-correction HEAD=TAU: the head's
probabilities are multiplied by ``prior ** -TAU`` and renormalised, ``prior`` = the class
frequencies of that head in the training rows of ``--manifests`` (post-hoc logit adjustment;
TAU 1 targets balanced accuracy). --calibrate: each head's final probabilities (after the flip mean
and the correction) are re-tempered as ``softmax(log p / T)`` with T fitted on the val rows of
``--manifests`` (needs an export without temperatures of its own; no prediction changes).
The copy (same file name, ``model_info.json`` beside it) is
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
from ff_keras.evaluation.run import fit_temperatures, predict_rows
from ff_keras.inference.export import (
    N_PARITY,
    adjusted_info,
    check_untempered,
    prior_correction_weights,
    write_adjusted_onnx,
)
from ff_keras.inference.predictor import OnnxPredictor, load_images
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


def output_temperatures(model: Path, info: ModelInfo, manifests: str, root: Path, limit: int) -> tuple[dict, int]:
    """Per-head temperatures for ``model``'s own outputs, fitted on (a seeded sample of) the val rows."""
    table = load_split(manifests, ["fairface", "utkface"], "val")
    if limit and len(table) > limit:
        table = table.sample(n=limit, random_state=0).reset_index(drop=True)
    probs, _ = predict_rows(OnnxPredictor(model, info), table, root)
    return fit_temperatures(table, {h: probs[h] for h in info.heads}), len(table)


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
    ap.add_argument("--calibrate", action="store_true", help="fit output temperatures on the val rows of --manifests")
    ap.add_argument("--calibration-limit", type=int, default=0, metavar="N",
                    help="fit on a seeded N-row sample of val (0 = all rows)")
    ap.add_argument("--manifests", default="splits/extended",
                    help="split manifests: train rows give the priors, val rows the temperatures")
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
    if not args.flip_tta and not taus and not args.calibrate:
        ap.error("nothing to do: give --flip-tta, --prior-correction HEAD=TAU and/or --calibrate")
    if args.calibrate:  # before minutes of val predictions, not after
        try:
            check_untempered(src, info)
        except ValueError as err:
            ap.error(f"--calibrate: {err}")
    priors = {h: training_priors(info, args.manifests, h) for h in taus}
    weights = {h: prior_correction_weights(priors[h], tau) for h, tau in taus.items()}
    root = resolve_data_root(args.data_root)
    images = load_images(fairface_val_crops(root, args.parity_images), info.image_size)
    out.mkdir(parents=True, exist_ok=True)
    temps, calibration = {}, None
    if args.calibrate:  # fit on the flipped and corrected outputs, then write again with the temperatures
        write_adjusted_onnx(src, out / src.name, info, images, flip=args.flip_tta, prior_weights=weights)
        untempered = adjusted_info(info, args.flip_tta, weights)
        temps, n_rows = output_temperatures(out / src.name, untempered, args.manifests, root, args.calibration_limit)
        calibration = {"split": "val", "rows": n_rows, "temperature": temps}
        print(f"fitted output temperatures on {n_rows} val rows: {temps}")
    parity = write_adjusted_onnx(src, out / src.name, info, images, flip=args.flip_tta, prior_weights=weights,
                                 temperatures=temps)
    provenance = {"parity": parity, "priors": priors, "tau": taus, "manifests": args.manifests,
                  "calibration": calibration}
    adjusted = adjusted_info(info, args.flip_tta, weights, temps)
    save_info(replace(adjusted, extra={**adjusted.extra, "adjusted": provenance}), out)
    worst = max(r["max_abs"] for r in parity.values())
    print(f"✅ {out / src.name}: flip TTA {'on' if args.flip_tta else 'off'}, prior correction {taus or 'none'}, "
          f"output temperatures {temps or 'none'}; "
          f"max abs diff {worst:.2e} on {len(images)} faces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
