"""Tiny training as 1 device, 2 mirrored logical CPUs and 2 local workers; compares the losses.

    python studies/multiworker_smoke.py [--out runs/scaling_smoke] [--layouts none mirrored multi_worker]
        [--config configs/smoke.yaml] [--json out.json] [key.sub=value ...]

Every layout runs ``scripts/train.py`` in fresh processes on the same 8 rows with the
randomness that depends on the layout switched off (``studies.multiworker.COMPARE``;
extra overrides go after it). Multi-worker runs two processes with TF_CONFIG on free
127.0.0.1 ports (worker 0 = chief). Exit status 1 if a loss differs from the single-device
run by more than --atol.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: studies/ is not installed

from studies.multiworker import COMPARE, LAYOUTS, SMOKE, compare
from ff_keras.machine import write_result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/scaling_smoke", help="folder for the runs and worker logs")
    ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    ap.add_argument("--config", default=str(SMOKE))
    ap.add_argument("--atol", type=float, default=1e-5, help="allowed |loss - single-device loss|")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per layout")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("overrides", nargs="*", help="extra dotted overrides after the comparison ones")
    args = ap.parse_args(argv)
    layouts = list(dict.fromkeys(["none", *args.layouts]))  # the reference always runs
    results = compare(Path(args.out).resolve(), layouts, [*COMPARE, *args.overrides], args.timeout, Path(args.config))
    ok = True
    print(f"{'layout':<13} {'replicas':>8} {'per-replica':>11} {'step-1 loss':>12} {'step-2 loss':>12} "
          f"{'max |diff|':>10}")
    for name, r in results.items():
        d = r["distribute"]
        diff = max(r["abs_diff_vs_none"])
        good = all(math.isfinite(v) for v in r["step_losses"]) and diff <= args.atol and len(r["saved_models"]) == 1
        ok &= good
        print(f"{name:<13} {d['replicas']:>8} {d['per_replica_batch']:>11} {r['step_losses'][0]:>12.6f} "
              f"{r['step_losses'][1]:>12.6f} {diff:>10.2e} {'✅' if good else '❌'}")
    if args.json:
        write_result(args.json, results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
