"""How well the service's framing check (``ff_keras.faces.framing``) tells FairFace-like crops
from tighter and looser ones: the crop variants of ``benchmark_robustness.py``, checked one by one.

    python benchmarks/benchmark_framing.py --split val --limit 200 --json reports/benchmarks/framing_val.json

Prints, per variant, the estimated crop scale (median and 5th-95th percentile; 1.0 = FairFace's
chip) and the share of crops given each status. Select thresholds on ``val``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from PIL import Image

from ff_keras.data.readers import resolve_data_root
from ff_keras.evaluation import robustness
from ff_keras.faces.detect import DETECTORS, DEFAULT_DETECTOR
from ff_keras.faces.framing import OK_SCALE, STATUSES, check_framing
from ff_keras.machine import describe, machine_facts, write_result
from ff_keras.splits import build as splits

GEOMETRIC = ["standard", "central_90", "central_75", "central_60", "padding_0.4", "aspect_0.8", "aspect_1.25"]


def summarise(scales: list[float | None], statuses: list[str]) -> dict:
    found = np.array([s for s in scales if s is not None])
    pct = np.percentile(found, [5, 50, 95]).round(3).tolist() if len(found) else [None] * 3
    return {"n": len(statuses), "scale_p5": pct[0], "scale_median": pct[1], "scale_p95": pct[2],
            **{f"share_{s}": round(statuses.count(s) / len(statuses), 3) for s in STATUSES}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="val", choices=splits.SPLITS)
    ap.add_argument("--manifests", default="splits", help="manifest folder (relative to the repo root)")
    ap.add_argument("--limit", type=int, default=200, help="first N FairFace rows of the split (0 = all)")
    ap.add_argument("--variants", nargs="+", default=GEOMETRIC, choices=list(robustness.CROP_VARIANTS))
    ap.add_argument("--detector", default=DEFAULT_DETECTOR, choices=DETECTORS)
    ap.add_argument("--data-root", default=None, help="default: $FF_DATA_ROOT or ../shared/data")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    table = splits.load_split(args.manifests, ["fairface"], args.split)
    if args.limit:
        table = table.head(args.limit)
    root = resolve_data_root(args.data_root)
    scales: dict[str, list] = {v: [] for v in args.variants}
    statuses: dict[str, list] = {v: [] for v in args.variants}
    t0 = time.time()
    for i, rel in enumerate(table["rel_path"], 1):
        with Image.open(root / rel) as im:
            chip = im.convert("RGB")
        for name in args.variants:
            framing = check_framing(np.asarray(robustness.apply_variant(chip, robustness.CROP_VARIANTS[name])),
                                    args.detector)
            scales[name].append(framing.scale)
            statuses[name].append(framing.status)
        if i % 50 == 0 or i == len(table):
            print(f"[{time.time() - t0:.0f}s] {i}/{len(table)} rows", flush=True)
    seconds = time.time() - t0
    result = {
        "split": args.split, "limit": args.limit, "detector": args.detector, "measured_scale": OK_SCALE,
        "seconds": round(seconds, 1), "ms_per_check": round(1000 * seconds / (len(table) * len(args.variants)), 1),
        "variants": {v: summarise(scales[v], statuses[v]) for v in args.variants},
    }
    result["machine"] = machine_facts()
    print(f"framing check ({args.detector}) on {len(table)} FairFace {args.split} rows, "
          f"{result['ms_per_check']} ms per crop ({describe(result['machine'])}); ok = scale in {OK_SCALE}:")
    print("| crop | scale median [p5, p95] | " + " | ".join(STATUSES) + " |")
    print("|---|---|" + "---|" * len(STATUSES))
    for v, r in result["variants"].items():
        shares = " | ".join(f"{r['share_' + s]:.2f}" for s in STATUSES)
        print(f"| {v} | {r['scale_median']} [{r['scale_p5']}, {r['scale_p95']}] | {shares} |")
    if args.json:
        write_result(args.json, result, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
