"""Writes a copy of an exported ONNX model with flip TTA and/or class-prior correction inside the graph.

    python scripts/adjust_onnx.py --onnx artifacts/model/model.onnx --out artifacts/model_adjusted \
        [--flip-tta] [--prior-correction race=1.0] [--calibrate] [--manifests splits/extended] \
        [--logit-bias BIAS.json] [--ambiguity-from AMBIGUITY.json]

--flip-tta: the copy runs the network on ``[image; mirrored image]`` in one batch and returns the
mean of the halves (twice the compute per face). --prior-correction HEAD=TAU: the head's
probabilities are multiplied by ``prior ** -TAU`` and renormalised, ``prior`` = the class
frequencies of that head in the training rows of ``--manifests`` (post-hoc logit adjustment;
TAU 1 targets balanced accuracy). --calibrate: each head's final probabilities (after the flip mean
and the correction) are re-tempered as ``softmax(log p / T)`` with T fitted on the val rows of
``--manifests`` (needs an export without temperatures of its own; no prediction changes).
--logit-bias FILE: after everything else, each listed head's probabilities become
``softmax(log p + b)``; FILE is ``{head: {"by": null | other head, "bias": [C] | [G, C]}}`` (with
``by``, the row of ``b`` is picked by that head's predicted class, e.g. race biases per predicted
gender; written by ``studies/group_selection.py``). --ambiguity-from FILE: per-head
thresholds on the top probability under which answers are flagged ``ambiguous``;
FILE is ``{head: {"threshold": t, ...provenance}}`` and must have been fitted on the outputs of the
copy being written. With only --ambiguity-from the graph is unchanged (metadata only).
The copy (same file name, ``model_info.json`` beside it) is
checked against the source model run in numpy on real faces; exits non-zero on disagreement.
"""

from __future__ import annotations

import argparse
import json
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
    check_logit_bias,
    check_untempered,
    prior_correction_weights,
    write_adjusted_onnx,
)
from ff_keras.inference.predictor import OnnxPredictor, load_images
from ff_keras.model_info import ModelInfo, check_ambiguity, load_info, save_info
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


def read_json(path: str | None, what: str) -> dict:
    """A JSON object file given on the command line; ``ValueError`` naming the file otherwise."""
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} {path}: cannot read a JSON object ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path}: expected a JSON object keyed by head")
    return data


def ambiguity_thresholds(spec: dict) -> dict[str, float]:
    """``{head: {"threshold": t}}`` -> ``{head: t}``; ``ValueError`` naming a head without one."""
    out = {}
    for head, item in spec.items():
        if not isinstance(item, dict) or "threshold" not in item:
            raise ValueError(f"--ambiguity-from: {head!r} has no 'threshold'")
        out[head] = item["threshold"]
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
    ap.add_argument("--logit-bias", metavar="FILE", help="JSON {head: {by, bias}} of post-network logit biases")
    ap.add_argument("--ambiguity-from", metavar="FILE", help="JSON {head: {threshold, ...}} of ambiguity thresholds")
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
    try:
        logit_bias = read_json(args.logit_bias, "--logit-bias")
        check_logit_bias(logit_bias, info)
        ambiguity_spec = read_json(args.ambiguity_from, "--ambiguity-from")
        ambiguity = ambiguity_thresholds(ambiguity_spec)
        check_ambiguity(ambiguity, info.heads, "--ambiguity-from")
    except ValueError as err:
        ap.error(str(err))
    if not (args.flip_tta or taus or args.calibrate or logit_bias or ambiguity):
        ap.error("nothing to do: give --flip-tta, --prior-correction HEAD=TAU, --calibrate, --logit-bias "
                 "and/or --ambiguity-from")
    if args.calibrate and logit_bias:
        ap.error("--calibrate with --logit-bias: calibrate first, then add the biases to the calibrated copy")
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
                                 temperatures=temps, logit_bias=logit_bias, ambiguity=ambiguity or None)
    provenance = {"parity": parity, "priors": priors, "tau": taus, "manifests": args.manifests,
                  "calibration": calibration, "logit_bias": args.logit_bias}
    if info.extra.get("adjusted"):  # the source's own steps (e.g. release 4's priors and calibration) stay on record
        provenance["source"] = {"onnx": str(src), "adjusted": info.extra["adjusted"]}
    adjusted = adjusted_info(info, args.flip_tta, weights, temps, logit_bias, ambiguity or None)
    graph_steps = args.flip_tta or taus or args.calibrate or logit_bias
    # a metadata-only copy (thresholds) keeps the provenance of the graph steps it already has
    extra = {**adjusted.extra, "adjusted": provenance} if graph_steps else dict(adjusted.extra)
    if ambiguity:
        extra["ambiguity"] = {"source": args.ambiguity_from, **ambiguity_spec}
    save_info(replace(adjusted, extra=extra), out)
    worst = max(r["max_abs"] for r in parity.values())
    print(f"✅ {out / src.name}, added: flip TTA {'on' if args.flip_tta else 'off'}, "
          f"prior correction {taus or 'none'}, output temperatures {temps or 'none'}, "
          f"logit biases {sorted(logit_bias) or 'none'}, "
          f"ambiguity thresholds {ambiguity or 'none'}; "
          f"max abs diff {worst:.2e} on {len(images)} faces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
