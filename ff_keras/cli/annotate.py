"""Annotate a photo collection into Parquet, audit its composition, measure a model's val confusion.

    ff-keras annotate INPUT... --out DIR [--engine local|ray] [--ray-address ADDR] [--detector mtcnn|dlib|none]
        [--framing DETECTOR] [--part-size N] [--batch-size N] [--summary]
    ff-keras annotate audit DIR [--model MODEL] [--n-boot N]              (also: scripts/audit.py)
    ff-keras annotate audit --store-val-confusion --model MODEL           (once per new model)

INPUT: image files, folders (walked recursively, in sorted order), text or CSV lists of paths
(.txt/.lst/.csv/.tsv; relative paths are taken relative to the list), or fsspec URLs (s3://...)
when fsspec is installed. DIR gets Parquet part files with one row per face (status "face") and
one per file without one (status "no_face" or "unreadable", with the reason in "error").
Running the same command again after a kill resumes: committed parts are kept, the rest redone.
``audit`` writes audit.md/.html/.json/.png into DIR: composition by race, gender, age and
race x gender from argmax counts, summed probabilities and val-confusion-adjusted counts.
Exit status: 0 done; 1 no input could be read; 2 bad model, settings or arguments.
"""

from __future__ import annotations

import argparse
import sys

from ff_keras.paths import add_model_argument, default_model



def annotate_main(argv: list[str] | None = None) -> int:
    from ff_keras.faces.analyze import DETECTOR_ALIASES, resolve_detector
    from ff_keras.faces.detect import DEFAULT_DETECTOR, DETECTORS, MIN_FACE

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, path lists or URLs")
    ap.add_argument("--out", required=True, help="output folder (Parquet parts + manifest); rerun to resume")
    add_model_argument(ap)
    ap.add_argument("--detector", default=DEFAULT_DETECTOR, choices=sorted(DETECTOR_ALIASES),
                    help="face detector; 'none' = every input already is an aligned face crop")
    ap.add_argument("--min-face", type=int, default=MIN_FACE, help="smallest face side to find, pixels")
    ap.add_argument("--framing", default=None, choices=sorted(DETECTORS),
                    help="with --detector none: check each crop's framing against FairFace's with this detector")
    ap.add_argument("--part-size", type=int, default=256, help="inputs per Parquet part (unit of commit/resume)")
    ap.add_argument("--batch-size", type=int, default=32, help="faces per model call")
    ap.add_argument("--engine", choices=("local", "ray"), default="local")
    ap.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    ap.add_argument("--ray-model-actors", type=int, default=1, help="model actors (ONNX Runtime sessions)")
    ap.add_argument("--model-threads", type=int, default=None, help="intra-op threads per Ray model actor")
    ap.add_argument("--summary", action="store_true", help="write the composition audit into --out afterwards")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    for name in ("part_size", "batch_size", "ray_model_actors", "min_face"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.framing and args.detector != "none":
        ap.error("--framing checks crops; it needs --detector none")

    from ff_keras.annotate.stages import Options

    opts = Options(model=str(args.model), detector=resolve_detector(args.detector), min_face=args.min_face,
                   framing=args.framing, part_size=args.part_size, batch_size=args.batch_size)
    try:
        if args.engine == "ray":
            from ff_keras.annotate.engine_ray import run_ray

            stats = run_ray(args.inputs, args.out, opts, args.ray_address, args.ray_model_actors,
                            args.model_threads, progress=not args.no_progress)
        else:
            from ff_keras.annotate.engine_local import run_local

            stats = run_local(args.inputs, args.out, opts, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{stats.faces} faces in {stats.inputs} files ({stats.no_face} without a face, {stats.unreadable} "
          f"unreadable: rows with status 'no_face'/'unreadable'); {stats.parts_written} parts written, "
          f"{stats.parts_skipped} kept from before; {stats.seconds:.1f} s -> {args.out}")
    if args.summary and stats.faces:
        code = audit_main([args.out, "--model", str(args.model)])
        if code:
            return code
    return 0 if stats.inputs > stats.unreadable else 1


def audit_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Composition audit of an annotate run (audit.md/.html/.json/.png in DIR); "
        "with --store-val-confusion, first measure the model's confusion matrix per head on FairFace val "
        "and store it in its model_info.json (every new model needs it for the adjusted estimate).")
    ap.add_argument("out", nargs="?", metavar="DIR", help="an annotate output folder")
    ap.add_argument("--model", default=None, help="model whose sidecar has the val confusion (default: the run's; "
                    "with --store-val-confusion: $FF_MODEL, else the shipped model)")
    ap.add_argument("--store-val-confusion", action="store_true", help="measure and store the model's val confusion")
    ap.add_argument("--manifests", default="splits", help="split manifests for --store-val-confusion (FairFace val)")
    ap.add_argument("--limit", type=int, default=0, help="--store-val-confusion on at most this many rows (0 = all)")
    ap.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples of faces")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--level", type=float, default=0.95, help="CI level")
    args = ap.parse_args(argv)
    if args.out is None and not args.store_val_confusion:
        ap.error("give a run folder DIR, --store-val-confusion, or both")
    from ff_keras.annotate.confusion import store_val_confusion
    from ff_keras.annotate.report import markdown, run_audit

    try:
        if args.store_val_confusion:
            model = args.model or default_model()
            path = store_val_confusion(model, manifests_dir=args.manifests, limit=args.limit)
            print(f"stored the val confusion per head of {model} in {path}", file=sys.stderr)
        if args.out is not None:
            doc = run_audit(args.out, args.model, args.n_boot, args.seed, args.level)
            print(markdown(doc))
            print(f"wrote audit.md, audit.html, audit.json and audit.png to {args.out}", file=sys.stderr)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


COMMANDS = {"audit": audit_main}


def main(argv: list[str] | None = None) -> int:
    """``annotate INPUT...`` or ``annotate audit [DIR] [--store-val-confusion]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return annotate_main(argv)


if __name__ == "__main__":
    sys.exit(main())
