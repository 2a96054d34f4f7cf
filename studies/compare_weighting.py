"""Compare loss weightings (fixed equal / fixed tuned / uncertainty / DWA) on cached embeddings.

    python studies/compare_weighting.py [--config configs/default.yaml] [--epochs 10]
        [--methods fixed_equal fixed_tuned uncertainty dwa] [--out reports/weighting] [key=value ...]

Writes ``<out>/results.md`` + ``results.json``; each method is a W&B run in one group.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: studies/ is not installed

from studies.weighting import METHODS, compare
from ff_keras.config import load_config

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", default=str(REPO / "reports" / "weighting"))
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.limit_train=2000")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    table = compare(cfg, args.out, args.methods, args.epochs)
    print((Path(args.out) / "results.md").read_text())
    print(f"✅ {len(table)} methods compared; results in {args.out}")


if __name__ == "__main__":
    main()
