"""End-to-end speed of photo analysis (detect + align + classify) for each detector.

    python benchmarks/benchmark_faces.py --model runs/x/model.onnx --json faces_bench.json [--photos 200]

Photos are composites of 2-5 FairFace validation crops (140-200 px) on a random background,
about 600-1100 x 250 px; they are built before timing. Prints photos/s, faces/s, the time
split between detection, alignment and classification, and recall against the pasted faces.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: studies/ is not installed

from ff_keras.data.readers import resolve_data_root
from ff_keras.faces.detect import DETECTORS, MIN_FACE
from ff_keras.data.crops import fairface_val_crops
from ff_keras.machine import write_result
from ff_keras.paths import add_model_argument
from studies.faces import benchmark, make_photos


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(ap)
    ap.add_argument("--photos", type=int, default=200)
    ap.add_argument("--faces", type=int, nargs=2, default=(2, 5), metavar=("MIN", "MAX"))
    ap.add_argument("--detectors", nargs="+", default=["dlib_hog", "mtcnn"], choices=DETECTORS)
    ap.add_argument("--min-face", type=int, default=MIN_FACE)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="model intra-op threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    from ff_keras.inference.predictor import load_predictor

    predictor = load_predictor(args.model, threads=args.threads, batch_size=args.batch_size)
    n_faces = args.photos * (args.faces[0] + args.faces[1]) // 2
    photos = make_photos(fairface_val_crops(resolve_data_root(), n_faces, args.seed), tuple(args.faces), args.seed)
    photos = photos[: args.photos]
    results = benchmark(photos, predictor, args.detectors, args.min_face, args.batch_size)
    doc = {"model": args.model, "backend": predictor.backend, "min_face": args.min_face,
           "image_size": predictor.info.image_size, "detectors": results}
    for det, r in results.items():
        s = r["share"]
        print(f"{det:9s} {r['photos_per_s']:6.2f} photos/s {r['faces_per_s']:7.2f} faces/s  recall {r['recall']:.3f} "
              f"fp {r['false_positives']}  time: detect {s['detection']:.0%} align {s['alignment']:.0%} "
              f"classify {s['classification']:.0%}")
    if args.json:
        write_result(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
