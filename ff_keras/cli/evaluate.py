"""Held-out evaluation report: metrics.json, report.md / report.html and PNG plots.

    python scripts/evaluate.py --model runs/x/model.keras --split test --out reports/eval_x \
        [--config configs/x.yaml] [--tta flip] [--fit-temperature] [--wandb-run-id ID] [--limit N] \
        [key.sub=value ...]

--model takes a .keras file, a SavedModel directory or an .onnx file (ff_keras.inference.predictor);
UTKFace's age MAE is reported whenever the model has the ``age_years`` output.
--fit-temperature fits per-head temperatures on the val split and writes them into the
model's model_info.json before the test split is scored.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


from ff_keras.evaluation import run as eval_pipeline, report
from ff_keras.config import load_config
from ff_keras.paths import add_model_argument


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(ap)
    ap.add_argument("--split", default="test", choices=("train", "val", "test"))
    ap.add_argument("--out", required=True, help="output folder for the report")
    ap.add_argument("--config", default=None, help="YAML config (data sources, manifests, evaluation.*)")
    ap.add_argument("--tta", choices=eval_pipeline.TTA_MODES, default=None, help="test-time augmentation")
    ap.add_argument(
        "--fit-temperature", action="store_true", help="fit per-head temperature on val and store it"
    )
    ap.add_argument(
        "--wandb-run-id", default=None, help="log tables and plots to this W&B run (offline by default)"
    )
    ap.add_argument("--limit", type=int, default=0, help="evaluate a seeded sample of N rows (0 = all)")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. evaluation.n_boot=200")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    overrides = list(args.overrides) + ([f"evaluation.tta={args.tta}"] if args.tta else [])
    cfg = load_config(args.config, overrides)
    metrics = eval_pipeline.run_evaluation(
        args.model, args.split, cfg, limit=args.limit, fit_temperature=args.fit_temperature
    )
    print(f"✅ scored {metrics['n_rows']} {args.split} rows with {args.model}")
    paths = report.write_report(metrics, args.out)
    print(f"✅ wrote {', '.join(str(p) for p in paths.values())} and {args.out}/plots/")
    for name, res in metrics["tables"].items():
        accs = ", ".join(f"{h} {m['accuracy']:.3f}" for h, m in res["heads"].items())
        if "age_years" in res:
            accs += f", age MAE {res['age_years']['mae']:.2f} years (n={res['age_years']['n']})"
        print(f"   {name} (n={res['n']}): {accs}")
    print(f"   leakage: {metrics['leakage']['summary']}")
    if args.wandb_run_id:
        run_id = eval_pipeline.log_to_wandb(args.wandb_run_id, metrics, Path(args.out), cfg)
        print(f"✅ logged to W&B run {run_id} ({cfg.wandb.mode})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
