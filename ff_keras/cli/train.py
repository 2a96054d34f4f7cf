"""Train the age/gender/race model: ``python scripts/train.py [--config FILE] [key.sub=value ...]``.

With no arguments it runs ``configs/default.yaml`` (its measured times are in the README, Set-up).
Resume a killed run by repeating the command with ``train.run_id=<id>`` (or pass the run's
saved ``--config runs/<name>-<id>/config.yaml``).
"""

from __future__ import annotations

import argparse
import json
import sys


from ff_keras.config import load_config
from ff_keras.paths import REPO
from ff_keras.training.run import train

DEFAULT = REPO / "configs" / "default.yaml"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT), help="YAML config (default: configs/default.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3 wandb.mode=disabled")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    result = train(cfg, argv=sys.argv if argv is None else ["scripts/train.py", *argv])
    print(f"✅ run folder: {result.run_dir}")
    print(f"✅ best model: {result.model_path}")
    print("✅ val metrics:", json.dumps({k: round(v, 4) for k, v in result.val_metrics.items()}, indent=1))


if __name__ == "__main__":
    main()
