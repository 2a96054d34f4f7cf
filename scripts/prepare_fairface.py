"""Builds a data root in FairFace's official layout from an image folder and the official labels.

    python scripts/prepare_fairface.py --images ~/ff_data/raw/fair_face/train \\
        --labels ~/ff_data/raw/fairface_label_train.csv --out ~/ff_data/root \\
        --reference ../shared/data/fairface --utkface ../shared/data/utkface

Checks every label row, decodes every image, requires a label row for every image and, with
``--reference``, that the reference root's training rows carry the same labels and bytes.
Anything wrong is printed by file name and the exit status is 1 (nothing is written).
Images are symlinked (``--link copy`` to copy). Train with the result via
``FF_DATA_ROOT=~/ff_data/root`` or ``data.root=...``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


from ff_keras.data import fairface_layout
from ff_keras.machine import write_result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True, help="folder of FairFace training images <n>.jpg")
    ap.add_argument("--labels", required=True, help="FairFace's official fairface_label_train.csv")
    ap.add_argument("--out", required=True, help="data root to create")
    ap.add_argument("--reference", default=None,
                    help="existing fairface/ folder (e.g. ../shared/data/fairface): its val/ and val CSV are "
                         "linked in and its training rows must agree with the official labels")
    ap.add_argument("--utkface", default=None, help="UTKFace folder to link in as utkface/")
    ap.add_argument("--link", default="symlink", choices=["symlink", "hardlink", "copy"])
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the full report here (default: <out>/prepare_report.json)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    t0 = time.time()
    ref = Path(args.reference).expanduser() if args.reference else None
    try:
        report = fairface_layout.prepare_fairface_root(
            Path(args.images).expanduser(), Path(args.labels).expanduser(), Path(args.out).expanduser(),
            val_dir=ref / "val" if ref else None,
            val_csv=ref / fairface_layout.VAL_CSV if ref else None,
            reference_fairface=ref,
            utkface_dir=Path(args.utkface).expanduser() if args.utkface else None,
            link=args.link, workers=args.workers,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out_json = Path(args.json or Path(args.out).expanduser() / "prepare_report.json")
    write_result(out_json, report.to_dict(), indent=1, quiet=True)
    print(f"[{time.time() - t0:.0f}s] {report.summary()}")
    for line in report.errors[:50]:
        print(f"  {line}", file=sys.stderr)
    if len(report.errors) > 50:
        print(f"  ... {len(report.errors) - 50} more in {out_json}", file=sys.stderr)
    if report.errors:
        print(f"not written: {len(report.errors)} problem(s); report in {out_json}", file=sys.stderr)
        return 1
    print(f"wrote {Path(args.out).expanduser() / 'fairface'} (report {out_json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
