"""What more FairFace training rows buy: val accuracy of heads trained on frozen embeddings
with 25 / 50 / 100 % of the FairFace training rows (UTKFace rows unchanged), same protocol.

    python benchmarks/learning_curve.py --run ~/ff_runs/dlib_extended-v3 --json reports/learning_curve.json

Reads the embedding cache a training run wrote in its first (frozen-backbone) stage
(``<run>/embeddings/{train,val}.npz``: un-augmented images through the converted dlib
backbone) and fits StandardScaler + multinomial logistic regression per head on seeded
random subsets of the FairFace rows. Frozen features isolate the effect of data from the
fine-tuning schedule; accuracy is on the run's whole val split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from ff_keras.machine import write_result

HEADS = ("age", "gender", "race")


def load(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        sys.exit(f"embedding cache not found: {path} (a run with train.cache_frozen_embeddings=true writes it)")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="training run folder with embeddings/train.npz and val.npz")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-iter", type=int, default=300)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    run = Path(args.run).expanduser()
    train, val = load(run / "embeddings" / "train.npz"), load(run / "embeddings" / "val.npz")
    fairface = np.flatnonzero(train["w_race"] > 0)  # only FairFace rows carry race-7 labels
    order = np.random.default_rng(args.seed).permutation(fairface)
    rows = []
    for frac in args.fractions:
        t0 = time.time()
        chosen = np.sort(order[: round(frac * len(order))])
        row = {"fraction": frac, "fairface_rows": int(len(chosen))}
        for head in HEADS:
            tr = chosen if head == "race" else np.union1d(chosen, np.flatnonzero(
                (train[f"w_{head}"] > 0) & (train["w_race"] == 0)))  # + UTKFace rows for age/gender
            tr = tr[train[f"w_{head}"][tr] > 0]
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=args.max_iter))
            clf.fit(train["emb"][tr], train[f"y_{head}"][tr])
            ev = np.flatnonzero((val[f"w_{head}"] > 0) & (val["w_race"] > 0))  # FairFace val rows
            row[f"val_{head}_accuracy"] = float((clf.predict(val["emb"][ev]) == val[f"y_{head}"][ev]).mean())
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        write_result(args.json, {"run": str(run), "seed": args.seed, "rows": rows}, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
