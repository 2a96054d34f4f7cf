"""Issue 29 study: group-aware post-network steps and ambiguity thresholds for the shipped model.

    python scripts/studies/group_selection.py cache --model models/ff_dlib_resnet150.onnx \
        --split val --out ~/ff_runs/i29/val.npz
    python scripts/studies/group_selection.py study --cache ~/ff_runs/i29/val.npz --out ~/ff_runs/i29/study

``cache`` runs the ONNX model once on the FairFace rows of a split and stores its outputs;
``study`` fits the candidates of ``reports/release5_rule.md`` on the fit half of val in numpy and
scores them on the confirm half (see ``ff_keras.evaluation.groups``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ff_keras import labels
from ff_keras.evaluation import groups, report

from ff_keras.data.readers import resolve_data_root
from ff_keras.evaluation.run import predict_rows
from ff_keras.inference.predictor import load_predictor
from ff_keras.splits.build import load_split


def cache(model: str, split: str, manifests: str, out: Path, threads: int) -> None:
    """Probabilities of every head (and age_years) of ``model`` on the FairFace rows of ``split``."""
    table = load_split(manifests, ["fairface"], split).reset_index(drop=True)
    predictor = load_predictor(model, threads=threads)
    probs, _ = predict_rows(predictor, table, resolve_data_root(None))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, rel_path=table["rel_path"].to_numpy(str), model=np.array(str(model)), **probs)
    logging.info("%s: %d rows of %s -> %s", model, len(table), split, out)


def load_cache(path: Path, manifests: str, split: str = "val") -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The split's FairFace rows and the cached outputs, row order checked."""
    table = load_split(manifests, ["fairface"], split).reset_index(drop=True)
    data = np.load(path)
    if list(data["rel_path"]) != table["rel_path"].tolist():
        raise ValueError(f"{path}: cached rows differ from the {split} rows of {manifests}")
    return table, {k: data[k] for k in data.files if k not in ("rel_path", "model")}


def age_prior(manifests: str) -> np.ndarray:
    """Age-bin frequencies of the labelled training rows (FairFace and UTKFace), in class order."""
    table = load_split(manifests, ["fairface", "utkface"], "train")
    counts = table.loc[labels.labelled_mask(table, "age"), "age_bin"].value_counts()
    prior = np.array([counts[a] for a in labels.HEAD_CLASSES["age"]], float)
    return prior / prior.sum()


def accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(p.argmax(-1) == y))


def candidates(p: dict[str, np.ndarray], y: dict[str, np.ndarray], fit: np.ndarray, held: list[int],
               prior: np.ndarray) -> dict[str, dict]:
    """Post-network steps fitted on the ``fit`` rows; each candidate = its parameters and outputs.
    Accuracy floors are the fit half's own accuracy (race), minus 0.01 (age) and 0.002 (gender)."""
    yf = {h: v[fit] for h, v in y.items()}
    floor = accuracy(p["race"][fit], yf["race"])
    age_floor = accuracy(p["age"][fit], yf["age"]) - 0.01
    gender_floor = accuracy(p["gender"][fit], yf["gender"]) - 0.002
    g_pred = p["gender"].argmax(-1)
    out = {"release 4": {"params": {}, "probs": dict(p)}}
    b = groups.fit_race_bias(p["race"][fit], None, yf, floor)
    out["race bias"] = {"params": {"race": b.tolist()}, "probs": {**p, "race": groups.apply_bias(p["race"], b)}}
    bg = groups.fit_race_bias(p["race"][fit], g_pred[fit], yf, floor)
    race_g = groups.apply_bias(p["race"], bg, g_pred)
    out["race bias | gender"] = {"params": {"race_by_gender": bg.tolist()}, "probs": {**p, "race": race_g}}
    ba = groups.fit_age_bias(p["age"][fit], yf["age"], age_floor, held)
    age_b = groups.apply_bias(p["age"], ba)
    out["age bias (9 free)"] = {"params": {"age": ba.tolist()}, "probs": {**p, "age": age_b}}
    tau = groups.fit_age_tau(p["age"][fit], yf["age"], prior, age_floor, held)
    bt = -tau * np.log(prior)
    age_t = groups.apply_bias(p["age"], bt)
    out["age prior tau"] = {"params": {"age_tau": tau, "age": bt.tolist()}, "probs": {**p, "age": age_t}}
    med = np.eye(p["age"].shape[1])[groups.median_bin(p["age"])]
    out["age median decoding"] = {"params": {}, "probs": {**p, "age": med}}
    r_pred = p["race"].argmax(-1)  # bias steps condition on the outputs before any bias step
    bgr = groups.fit_gender_bias_by_race(p["gender"][fit], r_pred[fit], yf, gender_floor)
    gen_r = groups.apply_bias(p["gender"], bgr, r_pred)
    out["gender bias | race"] = {"params": {"gender_by_race": bgr.tolist()}, "probs": {**p, "gender": gen_r}}
    out["race | gender + age tau + gender | race"] = {
        "params": {"race_by_gender": bg.tolist(), "age": bt.tolist(), "age_tau": tau, "gender_by_race": bgr.tolist()},
        "probs": {"race": race_g, "age": age_t, "gender": gen_r}}
    return out


AMBIGUITY_TARGETS = {"age": 0.70, "gender": 0.97, "race": 0.80}  # reports/release5_rule.md


def ambiguity(p: dict[str, np.ndarray], y: dict[str, np.ndarray], fit: np.ndarray) -> dict:
    """Per head: the threshold for the target accuracy of answered faces (fit half), the confirm
    half's selective accuracy overall, per true race and per true age bin, and a coverage curve."""
    out = {}
    for head, target in AMBIGUITY_TARGETS.items():
        t = groups.ambiguity_threshold(p[head][fit], y[head][fit], target)
        conf = ~fit
        curve = [{"threshold": float(q), **groups.selective(p[head][conf], y[head][conf], float(q))}
                 for q in (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)]
        out[head] = {
            "target": target, "threshold": round(t, 4),
            "fit": groups.selective(p[head][fit], y[head][fit], t),
            "confirm": groups.selective(p[head][conf], y[head][conf], t),
            "confirm_by_race": groups.selective_by_group(p[head][conf], y[head][conf], t, y["race"][conf],
                                                         labels.HEAD_CLASSES["race"]),
            "confirm_by_age": groups.selective_by_group(p[head][conf], y[head][conf], t, y["age"][conf],
                                                        labels.HEAD_CLASSES["age"]),
            "confirm_curve": curve,
        }
    return out


def selective_report(cache_path: Path, split: str, manifests: str, model: str, out: Path) -> str:
    """Selective accuracy per head, per true race and per true age bin under the (fixed) thresholds
    in ``model``'s sidecar; nothing is fitted. Written as Markdown + JSON to ``out``."""
    from ff_keras.model_info import load_info  # noqa: PLC0415

    table, p = load_cache(cache_path, manifests, split)
    y = groups.truths(table)
    thresholds = load_info(model).ambiguity
    result, blocks = {}, [("h1", f"Selective accuracy on FairFace {split} ({len(table)} rows), thresholds of {model}")]
    for head, t in thresholds.items():
        result[head] = {"threshold": t, "all": groups.selective(p[head], y[head], t),
                        **{f"by_{g}": groups.selective_by_group(p[head], y[head], t, y[g], labels.HEAD_CLASSES[g])
                           for g in ("race", "age")}}
        a = result[head]["all"]
        blocks += [("h2", f"{head}: threshold {t}"),
                   ("p", f"{a['answered']:.3f} of faces answered at {a['accuracy_answered']:.3f} accuracy "
                         f"(all faces {a['accuracy_all']:.3f})."),
                   ("table", groups.selective_table(result[head]["by_race"], "true race")),
                   ("table", groups.selective_table(result[head]["by_age"], "true age bin"))]
    out.mkdir(parents=True, exist_ok=True)
    (out / "selective.json").write_text(json.dumps(result, indent=1))
    text = report.to_markdown(blocks)
    (out / "selective.md").write_text(text)
    return text


def run_study(cache_path: Path, manifests: str, out: Path, costs: list[float]) -> dict:
    """The candidates table (fit half -> confirm half) and the race frontier; written to ``out``."""
    table, p = load_cache(cache_path, manifests)
    y = groups.truths(table)
    fit = groups.fit_confirm_halves(table)
    counts = np.bincount(y["age"], minlength=9)
    held = [i for i, c in enumerate(counts) if c >= groups.MIN_AGE_BIN_N]
    result = {"rows": len(table), "fit_rows": int(fit.sum()), "confirm_rows": int((~fit).sum()),
              "age_bins_held": [labels.HEAD_CLASSES["age"][i] for i in held], "candidates": {}, "frontier": []}
    prior = age_prior(manifests)
    for key, fit_rows in (("candidates", fit), ("swapped", ~fit)):  # swapped: a cross-fit check only
        result[key] = {}
        for name, c in candidates(p, y, fit_rows, held, prior).items():
            row = {"params": c["params"]}
            for half, mask in (("fit", fit_rows), ("confirm", ~fit_rows)):
                pred = {h: c["probs"][h][mask].argmax(-1) for h in ("age", "gender", "race")}
                s = groups.group_summary({h: v[mask] for h, v in y.items()}, pred, held)
                row[half] = {**s, "rule": groups.check_rule(s)}
            result[key][name] = row
    g_pred = p["gender"].argmax(-1)
    yf = {h: v[fit] for h, v in y.items()}
    base = accuracy(p["race"][fit], y["race"][fit])
    for cost in costs:
        floor = base - cost
        for objective in ("race", "cell"):
            bg = groups.fit_race_bias(p["race"][fit], g_pred[fit], yf, floor, objective)
            pred = groups.apply_bias(p["race"], bg, g_pred).argmax(-1)
            row = {"cost": cost, "floor": round(floor, 4), "objective": objective}
            for half, mask in (("fit", fit), ("confirm", ~fit)):
                hit = pred[mask] == y["race"][mask]
                rec = groups.recalls(y["race"][mask], pred[mask], 7)
                cell = y["race"][mask] * 2 + y["gender"][mask]
                crec = np.bincount(cell, weights=hit.astype(float), minlength=14) / np.bincount(cell, minlength=14)
                row[half] = {"race_accuracy": round(float(hit.mean()), 4), "worst_race": round(float(rec.min()), 4),
                             "worst_cell": round(float(crec.min()), 4)}
            result["frontier"].append(row)
    result["ambiguity"] = ambiguity(p, y, fit)
    passing = [n for n, c in result["candidates"].items() if all(r["ok"] for r in c["confirm"]["rule"].values())]
    best = max(passing, key=lambda n: (result["candidates"][n]["confirm"]["worst_race_gender_recall"],
                                       result["candidates"][n]["confirm"]["race_accuracy"]), default=None)
    result["decision"] = {"passing": passing, "selected": best}
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(result, indent=1))
    bg = result["candidates"]["race bias | gender"]["params"]["race_by_gender"]
    (out / "race_bias_by_gender.json").write_text(json.dumps({"race": {"by": "gender", "bias": bg}}, indent=1))
    model = str(np.load(cache_path)["model"])
    provenance = f"outputs of {model} on the fit half of FairFace val ({result['fit_rows']} rows, seed 29)"
    (out / "ambiguity.json").write_text(json.dumps({
        h: {"threshold": a["threshold"], "target_accuracy_answered": a["target"], "fitted_on": provenance,
            "confirm_half": a["confirm"]} for h, a in result["ambiguity"].items()}, indent=1))
    (out / "study.md").write_text(report.to_markdown(study_blocks(result)))
    return result


def study_blocks(result: dict) -> list:
    """The study as report blocks: rule table, frontier, ambiguity tables."""
    blocks = [
        ("h1", "Issue 29: group-aware selection on FairFace val (fit half -> confirm half)"),
        ("p", f"{result['rows']} val rows: fit half {result['fit_rows']}, confirm half {result['confirm_rows']} "
              "(stratified by race x gender x age bin, seed 29). Parameters are fitted on the fit half only. "
              "Bold: a target of reports/release5_rule.md that fails. Age bins held to the rule: "
              f"{', '.join(result['age_bins_held'])}."),
        ("table", groups.candidates_table(result["candidates"])),
        ("p", f"Candidates passing the rule on the confirm half: {result['decision']['passing'] or 'none'}; "
              f"selected: {result['decision']['selected']}."),
        ("h2", "Cross-fit check: the same candidates with the halves swapped (not used for the decision)"),
        ("table", groups.candidates_table(result["swapped"])),
        ("h2", "Parameters (fitted on the fit half)"),
        ("table", (["candidate", "parameters"], [[n, json.dumps({k: np.round(v, 3).tolist() if isinstance(v, list)
                                                                 else v for k, v in c["params"].items()})]
                                                 for n, c in result["candidates"].items() if c["params"]])),
        ("h2", "Race frontier: worst recall vs. race accuracy (race biases per predicted gender)"),
        ("p", "Each row maximises the worst race recall (objective race) or the worst race x gender recall "
              "(objective cell) on the fit half with race accuracy kept >= the fit half's own minus cost."),
        ("table", (["cost", "objective", "fit acc", "fit worst race", "fit worst cell", "confirm acc",
                    "confirm worst race", "confirm worst cell"],
                   [[f["cost"], f["objective"], f["fit"]["race_accuracy"], f["fit"]["worst_race"],
                     f["fit"]["worst_cell"], f["confirm"]["race_accuracy"], f["confirm"]["worst_race"],
                     f["confirm"]["worst_cell"]] for f in result["frontier"]])),
        ("h2", "Ambiguous answers (release 4 outputs; thresholds from the fit half)"),
    ]
    for head, a in result["ambiguity"].items():
        c = a["confirm"]
        blocks += [
            ("h3", f"{head}: threshold {a['threshold']:.3f} for {a['target']:.2f} accuracy of answered faces"),
            ("p", f"Confirm half: {c['answered']:.3f} of faces answered at {c['accuracy_answered']:.3f} accuracy "
                  f"(all faces: {c['accuracy_all']:.3f})."),
            ("table", groups.selective_table(a["confirm_by_race"], "true race")),
            ("table", groups.selective_table(a["confirm_by_age"], "true age bin")),
            ("table", (["threshold", "answered", "accuracy (answered)"],
                       [[q["threshold"], f"{q['answered']:.3f}", f"{q['accuracy_answered']:.3f}"]
                        for q in a["confirm_curve"]])),
        ]
    return blocks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache")
    c.add_argument("--model", default="models/ff_dlib_resnet150.onnx")
    c.add_argument("--split", default="val")
    c.add_argument("--manifests", default="splits/extended")
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("selective", help="selective accuracy of a cache under the thresholds of a model sidecar")
    t.add_argument("--cache", type=Path, required=True)
    t.add_argument("--split", default="test")
    t.add_argument("--manifests", default="splits/extended")
    t.add_argument("--model", default="models/ff_dlib_resnet150.onnx", help="its model_info.json gives the thresholds")
    t.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("study")
    s.add_argument("--cache", type=Path, required=True)
    s.add_argument("--manifests", default="splits/extended")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--costs", type=float, nargs="+", default=[-0.01, 0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08],
                   help="race accuracy the frontier may give up on the fit half (negative: must gain)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cmd == "cache":
        cache(args.model, args.split, args.manifests, args.out, args.threads)
    elif args.cmd == "selective":
        print(selective_report(args.cache, args.split, args.manifests, args.model, args.out))
    else:
        print(json.dumps(run_study(args.cache, args.manifests, args.out, args.costs), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
