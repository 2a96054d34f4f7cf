"""Pre-flight check: names every image under the data root that would not decode.

Checks the images of the split manifests (``--splits train val test``) or, without
manifests, every image the dataset readers list. Exit status 1 if any file is unreadable.

    python scripts/validate_images.py                      # all images of data.sources
    python scripts/validate_images.py --splits train val   # rows of committed manifests
    python scripts/validate_images.py --json runs/unreadable.json
"""

from __future__ import annotations

import argparse
import sys
import time


import pandas as pd

from ff_keras.data import readers as datasets, image_check as validate
from ff_keras.splits import build as splits
from ff_keras.config import load_config
from ff_keras.machine import write_result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=None)
    ap.add_argument(
        "--splits", nargs="*", default=None, help="check these manifest splits instead of every file"
    )
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--json", default=None, help="write [{rel_path, reason}] here")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. data.sources=[fairface]")
    args = ap.parse_args()

    cfg = load_config(args.config, args.overrides)
    root = datasets.resolve_data_root(cfg.data.root)
    if args.splits:
        table = pd.concat(
            [splits.load_split(cfg.data.manifests_dir, cfg.data.sources, s) for s in args.splits]
        )
    else:
        table = datasets.read_sources(root, tuple(cfg.data.sources))
    print(f"checking {len(table)} images under {root}")
    t0 = time.perf_counter()
    _, bad = validate.drop_unreadable(table, root, args.workers)
    print(f"checked in {time.perf_counter() - t0:.1f} s")
    for rel, reason in bad:
        print(f"❌ {rel}: {reason}")
    if args.json:
        write_result(args.json, [{"rel_path": r, "reason": why} for r, why in bad])
    if bad:
        print(f"{len(bad)} unreadable image(s)")
        return 1
    print("✅ every image decodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
