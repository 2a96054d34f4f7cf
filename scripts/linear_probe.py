"""Frozen linear probe of the dlib face backbone on FairFace validation images.

    python scripts/linear_probe.py [--n 0] [--weights weights/dlib_resnet_*.npz] [--json OUT]

Protocol (issue 6): crops resized to 150 px, frozen Keras dlib_resnet features (pooled 256-d and
the 128-d descriptor), StandardScaler + logistic regression per head, 70/15/15 seeded split of
FairFace val, accuracy on the 15 % test part.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ff_keras.models.backbones import dlib_resnet
from ff_keras.convert.dlib_weights import load_dlib_weights, normalise
from ff_keras.data.readers import read_fairface, resolve_data_root
from ff_keras.inference.predictor import load_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=0, help="images (0 = all 10,954 validation images)")
    ap.add_argument("--weights", default="weights/dlib_resnet_*.npz")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    matches = sorted(glob.glob(args.weights))
    if not matches:
        sys.exit(f"no weights match {args.weights}; run: python scripts/convert_weights.py dlib")
    root = resolve_data_root()
    table, _ = read_fairface(root)
    table = table[table.rel_path.str.startswith("fairface/val/")].sample(frac=1.0, random_state=0)
    table = (table.head(args.n) if args.n else table).reset_index(drop=True)
    model = dlib_resnet.build(150)
    load_dlib_weights(model, Path(matches[-1]))
    with np.load(matches[-1]) as w:
        to_descriptor = w["descriptor/kernel"]
    pooled = np.concatenate([
        model.predict(normalise(load_images([root / p for p in table.rel_path[i : i + 64]], 150)), verbose=0)
        for i in range(0, len(table), 64)
    ])
    features = {"pooled_256": pooled, "descriptor_128": pooled @ to_descriptor}
    train, rest = train_test_split(np.arange(len(table)), test_size=0.3, random_state=0)
    _, test = train_test_split(rest, test_size=0.5, random_state=0)
    results = {"n_images": len(table), "n_test": len(test)}
    for name, x in features.items():
        for head, column in (("gender", "gender"), ("race", "race"), ("age", "age_bin")):
            y = table[column].to_numpy()
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(x[train], y[train])
            results[f"{name}/{head}"] = round(float((clf.predict(x[test]) == y[test]).mean()), 4)
            print(f"{name:15s} {head:7s} {results[f'{name}/{head}']:.4f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
