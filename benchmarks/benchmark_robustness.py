"""Accuracy on face crops cut differently from FairFace's chips (tighter, looser, stretched,
low-resolution, compressed), beside the standard crop.

    python benchmarks/benchmark_robustness.py --model models/ff_dlib_resnet150.onnx --split val \\
        --limit 800 --json reports/benchmarks/robustness_val.json

Scores the first ``--limit`` FairFace rows of the split in manifest order (0 = all). Select
models on ``--split val``; score ``test`` once per release. Prints a markdown table with
each variant's drop from the standard crop and whether it is within the tolerance
(gender 2 points, race 4 points).
"""

from __future__ import annotations

import argparse
import sys
import time


from ff_keras.evaluation import robustness
from ff_keras.splits import build as splits
from ff_keras.data.readers import resolve_data_root
from ff_keras.machine import describe, machine_facts, write_result
from ff_keras.paths import add_model_argument


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(ap)
    ap.add_argument("--split", default="val", choices=splits.SPLITS)
    ap.add_argument("--manifests", default="splits", help="manifest folder (relative to the repo root)")
    ap.add_argument("--limit", type=int, default=800, help="first N FairFace rows of the split (0 = all)")
    ap.add_argument("--variants", nargs="+", default=list(robustness.CROP_VARIANTS),
                    choices=list(robustness.CROP_VARIANTS))
    ap.add_argument("--data-root", default=None, help="default: $FF_DATA_ROOT or ../shared/data")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    from ff_keras.inference.predictor import load_predictor

    predictor = load_predictor(args.model, threads=args.threads)
    table = splits.load_split(args.manifests, ["fairface"], args.split)
    if args.limit:
        table = table.head(args.limit)
    variants = {v: robustness.CROP_VARIANTS[v] for v in dict.fromkeys(["standard", *args.variants])}
    t0 = time.time()
    result = robustness.evaluate_variants(predictor, table, resolve_data_root(args.data_root), variants)
    result["machine"] = machine_facts()
    result.update({"model": args.model, "split": args.split, "limit": args.limit, "variants": variants,
                   "seconds": round(time.time() - t0, 1)})
    print(f"{args.model} on {result['n']} FairFace {args.split} rows ({result['seconds']} s, "
          f"{describe(result['machine'])}):")
    print(robustness.markdown_table(result))
    if args.json:
        write_result(args.json, result, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
