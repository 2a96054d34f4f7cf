"""Identity-disjoint, stratified train/val/test manifests + the leakage report.

    python scripts/make_splits.py            # regenerates splits/*.csv and reports/leakage.*
    FF_DATA_ROOT=~/ff_data/root python scripts/make_splits.py --extend splits --out splits/extended \
        --cache ~/ff_data/cache/identity_v1.npz --report-name leakage_extended --keras-descriptors

``--extend BASE`` keeps every row of the manifests in BASE where it is and adds the extra
images of a bigger data root (e.g. FairFace's full training set) to train, except images
grouped with a val/test image, which are excluded and counted.

Identity descriptors come from the cache (``.cache/identity_v1.npz``); missing ones are
computed (~0.1 s per image). Seeded, so a re-run reproduces the manifests byte for byte.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path


import pandas as pd

from ff_keras.config import load_config
from ff_keras.data import readers as datasets
from ff_keras.splits import identity, leakage, report as split_report, build as splits
from ff_keras.splits.grouping import GroupingParams

REPO = Path(__file__).resolve().parents[1]
PARTIAL = "INTERIM: not yet in identity cache"


def parse_args() -> argparse.Namespace:
    d = GroupingParams()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None, help="default: $FF_DATA_ROOT or ../shared/data")
    ap.add_argument("--cache", default=str(REPO / ".cache" / "identity_v1.npz"))
    ap.add_argument("--out", default="splits", help="manifest folder (relative to the repo root)")
    ap.add_argument("--reports", default=str(REPO / "reports"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fractions", type=float, nargs=3, default=list(splits.DEFAULT_FRACTIONS))
    ap.add_argument("--identity-threshold", type=float, default=d.identity_threshold,
                    help="default: chosen as the largest keeping groups within --max-group")
    ap.add_argument("--max-group", type=int, default=d.max_group)
    ap.add_argument("--mutual-threshold", type=float, default=d.mutual_threshold)
    ap.add_argument("--mutual-k", type=int, default=d.mutual_k)
    ap.add_argument("--dhash-bits", type=int, default=d.dhash_bits)
    ap.add_argument("--extend", default=None, metavar="BASE",
                    help="manifest folder to extend: its rows keep their splits, new images join train")
    ap.add_argument("--report-name", default="leakage", help="stem of the report files in --reports")
    ap.add_argument("--keras-descriptors", default=None, nargs="?",
                    const=load_config(REPO / "configs" / "default.yaml").model.weights,
                    metavar="NPZ", help="compute missing descriptors with the Keras dlib network (converted weights)")
    ap.add_argument("--partial", action="store_true",
                    help="interim run: leave out images not yet in the cache (listed as dropped; tests fail)")
    return ap.parse_args()


def step(msg: str, t0: float) -> None:
    print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.time()
    params = GroupingParams(args.identity_threshold, args.mutual_threshold, args.mutual_k, args.dhash_bits,
                            args.max_group)
    root = datasets.resolve_data_root(args.data_root)
    frames, read_reports = [], []
    for reader in datasets.READERS.values():
        df, rep = reader(root)
        frames.append(df)
        read_reports.append(rep)
        step(rep.summary(), t0)
    table = pd.concat(frames).sort_values("rel_path", ignore_index=True)
    not_cached = []
    if args.partial:
        keys = identity.repair_keys(identity.load_cache(Path(args.cache))["key"], table["rel_path"].tolist())
        cached = table["rel_path"].isin(set(keys.tolist()))
        not_cached = [{"rel_path": p, "reason": PARTIAL, "duplicate_of": ""} for p in table.loc[~cached, "rel_path"]]
        table = table.loc[cached].reset_index(drop=True)
        step(f"⚠️ --partial: {len(not_cached)} images not yet in the identity cache are left out", t0)
    describe = None
    if args.keras_descriptors:
        from ff_keras.convert.dlib_reference import BatchedDescriptor

        describe = BatchedDescriptor(REPO / args.keras_descriptors)
    emb = identity.compute_embeddings(root, table["rel_path"].tolist(), Path(args.cache).expanduser(),
                                      describe_chips=describe)
    step(f"identity cache: {len(table)} images ({emb['detected'].mean():.1%} with a HOG detection)", t0)

    if args.extend:
        base = pd.concat([pd.read_csv(p, keep_default_na=True, dtype={"rel_path": str, "race": str})
                          for p in sorted((REPO / args.extend).glob("*.csv"))], ignore_index=True)
        base_params = json.loads((Path(args.reports) / "leakage.json").read_text())["params"]
        params = GroupingParams(**base_params)
        manifest, dropped, info = splits.extend_manifest(base, table, emb, params)
        problems = splits.check_extension(base, manifest)
        if problems:
            raise SystemExit("extended manifest inconsistent with its base: " + "; ".join(problems))
        info["largest_by_threshold"] = {f"{params.identity_threshold:.2f}": info["largest"]}
    else:
        manifest, dropped, info = splits.build_manifest(table, emb, params, args.fractions, args.seed)
    params = dataclasses.replace(params, identity_threshold=info["identity_threshold"])
    dropped_by_reason = dropped["reason"].value_counts().to_dict()
    step(f"grouped at t = {params.identity_threshold}: {info}; dropped {dropped_by_reason}", t0)
    for path in splits.write_manifests(manifest, args.out):
        step(f"✅ wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}", t0)

    keep = table["rel_path"].isin(set(manifest["rel_path"])).to_numpy()
    kept_emb = {k: v[keep] for k, v in emb.items()}
    study = split_report.threshold_study(manifest, kept_emb["descriptor"], kept_emb["dhash"], params)
    step("threshold study done", t0)
    leak = leakage.verify_leakage(manifest, kept_emb, params, fractions=args.fractions)
    step(f"leakage verified: ok={leak['ok']}", t0)

    dropped_counts = {f"{r.source}: {reason}": len(items) for r in read_reports for reason, items in r.skipped.items()}
    dropped_counts.update({f"{reason}": int(n) for reason, n in dropped["reason"].value_counts().sort_index().items()})
    if not_cached:
        dropped_counts[PARTIAL] = len(not_cached)
    reader_dropped = [{"rel_path": f"{r.source}/{item}", "reason": reason, "duplicate_of": ""}
                      for r in read_reports for reason, items in r.skipped.items() for item in items]
    result = {
        "seed": args.seed, "fractions": list(args.fractions), "params": params.to_dict(), "edges": info["edges"],
        "threshold_selection": info["largest_by_threshold"],
        "n_usable": len(manifest), "dropped_counts": dropped_counts,
        "dropped": reader_dropped + dropped.to_dict(orient="records") + not_cached,
        "study": study, "leakage": leak,
    }
    if args.extend:
        counts = {k: info[k] for k in ("new_rows", "new_rows_added", "grouping_rounds")}
        result["extension"] = {"base": args.extend, **counts, "excluded": info["dropped"]}
    result["rationale"] = split_report.rationale(study, params, info["largest_by_threshold"])
    out = Path(args.reports)
    split_report.plot_study(study, params, out / f"{args.report_name}_distances.png")
    split_report.write_json(result, out / f"{args.report_name}.json")
    (out / f"{args.report_name}.md").write_text(split_report.render_markdown(result, args.report_name))
    g = leak["groups"]
    step(f"✅ reports in {out}: threshold {params.identity_threshold}, largest group {g['largest']}, "
         f"{g['groups_size_gt1']} groups >1, cross-split {leak['cross_split']}", t0)
    for s, n in leak["split_sizes"].items():
        print(f"  {s:5s} {n}")
    return 0 if leak["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
