"""Export a training checkpoint to .keras, SavedModel and ONNX, with parity checks on real faces.

    python scripts/export.py --checkpoint runs/x/best.keras --out artifacts/model \
        [--int8 --int8-mode static --int8-split test --int8-limit 2000]

The shipped release (an ONNX file) as .keras and SavedModel, next to a copy of its ONNX:

    python scripts/export.py --release [--onnx models/ff_dlib_resnet150.onnx] [--out artifacts/release] \
        [--config configs/dlib_extended.yaml]

Exits non-zero (ParityError) if any artifact disagrees with Keras beyond tolerance.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


from ff_keras.data.readers import resolve_data_root
from ff_keras.inference.export import N_PARITY, OPSET, export_checkpoint
from ff_keras.data.crops import fairface_val_crops
from ff_keras.paths import REPO, default_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="training .keras checkpoint with model_info.json beside it")
    ap.add_argument("--out", help="output folder (default with --release: artifacts/release)")
    ap.add_argument("--release", action="store_true",
                    help="write the released ONNX (--onnx) as .keras and SavedModel instead of a checkpoint")
    ap.add_argument("--onnx", default=default_model(), help="with --release: the ONNX file (default: the "
                    "shipped release, or $FF_MODEL)")
    ap.add_argument("--config", default=str(REPO / "configs" / "dlib_extended.yaml"),
                    help="with --release: the training config of the network in the file (graph only)")
    ap.add_argument("--data-root", default=None, help="default: $FF_DATA_ROOT or ../shared/data")
    ap.add_argument("--parity-images", type=int, default=N_PARITY)
    ap.add_argument("--opset", type=int, default=OPSET)
    ap.add_argument("--int8", action="store_true", help="also write model.int8.onnx")
    ap.add_argument("--int8-mode", choices=("static", "dynamic"), default="static")
    ap.add_argument("--int8-split", default="test", help="split whose accuracy change is reported")
    ap.add_argument("--int8-limit", type=int, default=2000, help="rows of that split to evaluate (0 = all)")
    ap.add_argument("--manifests", default="splits")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    root = resolve_data_root(args.data_root)
    if args.opset < 17:
        ap.error("--opset must be >= 17")
    if args.release:
        return _release(args, root)
    if not args.checkpoint or not args.out:
        ap.error("--checkpoint and --out are required (or --release)")
    report = export_checkpoint(args.checkpoint, args.out, root, n_images=args.parity_images, opset=args.opset)
    for fmt, path in report.artifacts.items():
        worst = max(r["max_abs"] for r in report.parity[fmt].values())
        print(f"✅ {fmt}: {path} (max abs diff {worst:.2e} on {report.n_parity_images} faces, argmax 100%)")
    if args.int8:
        from ff_keras.inference.predictor import load_images
        from ff_keras.inference.quantize import compare_int8, quantize_onnx
        from ff_keras.splits.build import load_split

        onnx_path = Path(args.out) / "model.onnx"
        size = json.loads((Path(args.out) / "model_info.json").read_text())["image_size"]
        calib = load_images(fairface_val_crops(root, max(args.parity_images, 128)), size)
        int8_path = quantize_onnx(onnx_path, Path(args.out) / "model.int8.onnx", args.int8_mode, calib)
        table = load_split(args.manifests, ["fairface", "utkface"], args.int8_split)
        if args.int8_limit:
            table = table.sample(min(args.int8_limit, len(table)), random_state=0)
        result = compare_int8(onnx_path, int8_path, table, root)
        (Path(args.out) / "int8_report.json").write_text(json.dumps(result, indent=2))
        print(f"✅ int8 ({args.int8_mode}): {int8_path}\n{json.dumps(result, indent=2)}")
    return 0


def _release(args: argparse.Namespace, root: Path) -> int:
    from ff_keras.inference.release import export_release

    report = export_release(args.onnx, args.config, args.out or "artifacts/release", root, args.parity_images)
    for name, parity in report.parity.items():
        worst = max(r["max_abs"] for r in parity.values())
        print(f"✅ {name}: max abs diff {worst:.2e} on {report.n_parity_images} real faces, argmax 100%")
    for fmt, path in report.artifacts.items():
        print(f"✅ {fmt}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
