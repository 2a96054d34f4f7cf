"""How often MTCNN's and dlib's crops of the same face give the same top label.

    python benchmarks/detector_agreement.py --model runs/x/model.onnx --faces 300 --json agreement.json

Places ``--faces`` FairFace validation crops, 3 per photo, on random backgrounds; on the faces
both detectors find it reports per-head top-label agreement between the two detectors' crops
and between each detector's crop and the original dataset crop, plus how much the crop
regions overlap (IoU). Target: >= 95 % agreement for gender and race.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: studies/ is not installed

from ff_keras.data.readers import resolve_data_root
from ff_keras.faces.detect import DETECTORS, MIN_FACE
from ff_keras.data.crops import fairface_val_crops
from ff_keras.paths import add_model_argument
from studies.faces import detector_agreement, make_photos
from ff_keras.machine import write_result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(ap)
    ap.add_argument("--faces", type=int, default=300)
    ap.add_argument("--detectors", nargs=2, default=["mtcnn", "dlib_hog"], choices=DETECTORS)
    ap.add_argument("--min-face", type=int, default=MIN_FACE)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    from ff_keras.inference.predictor import load_predictor

    predictor = load_predictor(args.model)
    photos = make_photos(fairface_val_crops(resolve_data_root(), args.faces, args.seed), (3, 3), args.seed)
    result = {"model": args.model, **detector_agreement(photos, predictor, tuple(args.detectors), args.min_face)}
    print(json.dumps(result, indent=2))
    if args.json:
        write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
