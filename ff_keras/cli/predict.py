"""Predict age, gender and race for every face in photos.

    python scripts/predict.py photo.jpg folder/ --model runs/x/model.onnx [--detector mtcnn|dlib|none]
        [-b/--draw-boxes] [--out DIR] [--json] [--batch-size N]

Prints one row per face (image, face id, box, detector confidence, top label per head, age in
years when the model has it) or, with --json, the full records: the service's per-face fields
(box, confidence, ``heads`` with all probabilities, ``age_years``) plus image and landmarks.
Photos without a face and unreadable files (anything but JPEG, PNG or WebP, judged by the
bytes; damaged or smaller than 32 px; FIFOs, devices, dangling or looping links, never opened;
over 128 MB, 40 Mpixel, 16384 px a side or a 20:1 aspect ratio, as the service refuses them)
are reported on stderr with their names and reasons, and skipped; the exit status is 1 only if
no input could be read at all, 2 if the model cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from ff_keras.faces.analyze import DETECTOR_ALIASES, analyze, expand_inputs, format_table, write_annotated
from ff_keras.faces.detect import DEFAULT_DETECTOR, MIN_FACE
from ff_keras.paths import add_model_argument


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    add_model_argument(ap)
    ap.add_argument("--detector", default=DEFAULT_DETECTOR, choices=sorted(DETECTOR_ALIASES),
                    help="face detector; 'dlib' = dlib HOG; 'none' = inputs already are aligned faces "
                    f"(default {DEFAULT_DETECTOR})")
    ap.add_argument("--min-face", type=int, default=MIN_FACE, help="smallest face side to find, pixels")
    ap.add_argument("-b", "--draw-boxes", action="store_true", help="write annotated photos to --out")
    ap.add_argument("--out", default="predictions", help="folder for annotated photos and predictions.json")
    ap.add_argument("--json", action="store_true", help="print JSON records instead of the table")
    ap.add_argument("--batch-size", type=int, default=32, help="faces per model call")
    args = ap.parse_args(argv)
    if args.batch_size < 1:
        ap.error(f"--batch-size must be >= 1, got {args.batch_size}")

    from ff_keras.inference.predictor import load_predictor

    try:
        predictor = load_predictor(args.model, batch_size=args.batch_size)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    paths, any_dir = expand_inputs(args.inputs)
    report = analyze(paths, predictor, args.detector, args.batch_size, progress=any_dir, min_face=args.min_face)
    heads = predictor.heads

    for item in report.unreadable:
        print(f"unreadable, skipped: {item['error']}", file=sys.stderr)
    for path in report.no_faces:
        print(f"no face found: {path}", file=sys.stderr)
    doc = {"model": str(args.model), **report.to_json()}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(format_table(report.records, heads))
        print(f"{len(report.records)} faces in {report.read} photos "
              f"({len(report.no_faces)} without a face, {len(report.unreadable)} unreadable)")
    if args.draw_boxes:
        written = write_annotated(report, args.out, heads)
        (Path(args.out) / "predictions.json").write_text(json.dumps(doc, indent=2))
        print(f"wrote {len(written)} annotated photos and predictions.json to {args.out}", file=sys.stderr)
    return 0 if report.read else 1


if __name__ == "__main__":
    sys.exit(main())
