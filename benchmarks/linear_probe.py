"""Frozen linear probe of the dlib face backbone on FairFace validation images.

    python benchmarks/linear_probe.py [--n 0] [--weights FILE.npz] [--json OUT]

Measures how much of each attribute the frozen identity features already encode. Protocol:
crops resized to 150 px, frozen Keras dlib_resnet features (pooled 256-d and the 128-d
descriptor), StandardScaler + logistic regression per head, 70/15/15 seeded split of
FairFace val, accuracy on the 15 % test part.
"""

from __future__ import annotations

import argparse
from pathlib import Path


import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ff_keras.models.backbones import dlib_resnet
from ff_keras.config import load_config
from ff_keras.convert.pretrained import resolve_weights
from ff_keras.convert.weight_files import read_weights
from ff_keras.convert.dlib_weights import load_dlib_weights
from ff_keras.data.preprocess import normalize_np
from ff_keras.data.readers import read_fairface, resolve_data_root
from ff_keras.inference.predictor import load_images
from ff_keras.machine import write_result

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=0, help="images (0 = all 10,954 validation images)")
    ap.add_argument("--weights", default=None, help="converted dlib weights (default: configs/default.yaml's)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    weights = resolve_weights(args.weights or load_config(DEFAULT_CONFIG).model.weights, "dlib_resnet")
    root = resolve_data_root()
    table, _ = read_fairface(root)
    table = table[table.rel_path.str.startswith("fairface/val/")].sample(frac=1.0, random_state=0)
    table = (table.head(args.n) if args.n else table).reset_index(drop=True)
    model = dlib_resnet.build(150)
    load_dlib_weights(model, weights)
    to_descriptor = read_weights(weights)["descriptor/kernel"]
    pooled = np.concatenate([
        model.predict(normalize_np(load_images([root / p for p in table.rel_path[i : i + 64]], 150), dlib_resnet.SPEC),
                      verbose=0)
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
        write_result(args.json, results)


if __name__ == "__main__":
    main()
