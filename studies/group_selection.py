"""Group-aware post-network steps and ambiguity thresholds for the shipped model.

    python studies/group_selection.py cache --model models/ff_dlib_resnet150.onnx \
        --split val --out ~/ff_runs/i29/val.npz
    python studies/group_selection.py study --cache ~/ff_runs/i29/val.npz --out ~/ff_runs/i29/study

``cache`` runs the ONNX model once on the FairFace rows of a split and stores its outputs;
``study`` fits the candidates of ``reports/release5_rule.md`` on the fit half of val in numpy and
scores them on the confirm half (see ``ff_keras.evaluation.groups``).
"""

from __future__ import annotations

import argparse
import functools
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
from ff_keras.machine import write_result
from ff_keras.splits.build import load_split


def cache(model: str, split: str, manifests: str, out: Path, threads: int) -> None:
    """Probabilities of every head (and age_years) of ``model`` on the FairFace rows of ``split``."""
    table = load_split(manifests, ["fairface"], split).reset_index(drop=True)
    predictor = load_predictor(model, threads=threads)
    probs, _ = predict_rows(predictor, table, resolve_data_root(None))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, rel_path=table["rel_path"].to_numpy(str), model=np.array(str(model)), **probs)
    logging.info("%s: %d rows of %s -> %s", model, len(table), split, out)


def embed(keras_model: str, manifests: str, out: Path, batch: int = 64) -> None:
    """The 256-d input of the linear heads (``embed_relu``) of a Keras model for the FairFace rows of
    train (plain) and of val and test (plain and mirrored, for flip TTA), plus the heads' weights."""
    import keras  # noqa: PLC0415

    from ff_keras.inference.predictor import load_images  # noqa: PLC0415

    model = keras.saving.load_model(keras_model, compile=False)
    feats = keras.Model(model.input, model.get_layer("embed_relu").output)
    root = resolve_data_root(None)
    arrays = {}
    for split in ("train", "val", "test"):
        table = load_split(manifests, ["fairface"], split).reset_index(drop=True)
        plain, mirror = [], []
        for start in range(0, len(table), batch):
            x = load_images([root / p for p in table["rel_path"].iloc[start:start + batch]], 150)
            plain.append(np.asarray(feats(x, training=False)))
            if split != "train":
                mirror.append(np.asarray(feats(x[:, :, ::-1].copy(), training=False)))
        arrays[f"{split}_plain"] = np.concatenate(plain)
        if mirror:
            arrays[f"{split}_mirror"] = np.concatenate(mirror)
        arrays[f"{split}_rel_path"] = table["rel_path"].to_numpy(str)
        logging.info("%s: %d rows embedded", split, len(table))
    for head in ("age", "gender", "race"):
        kernel, bias = model.get_layer(head).get_weights()
        arrays[f"W_{head}"], arrays[f"b_{head}"] = kernel, bias
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _fit_linear(x: np.ndarray, y: np.ndarray, k: int, weight: np.ndarray | None = None,
                soft: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (L2, C=1) -> (W [d, k], b [k]); ``soft`` [n, k] label
    distributions are fitted by weighting one copy of each row per class with non-zero mass."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    w = np.ones(len(y)) if weight is None else weight
    if soft is not None:
        rows, cls = np.nonzero(soft > 1e-3)
        x, y, w = x[rows], cls, w[rows] * soft[rows, cls]
    lr = LogisticRegression(C=1.0, max_iter=300).fit(x, y, sample_weight=w * len(w) / w.sum())
    W, b = np.zeros((x.shape[1], k)), np.zeros(k)
    W[:, lr.classes_], b[lr.classes_] = lr.coef_.T, lr.intercept_
    if k == 2:  # sklearn's binary model has one column: logit of class 1
        W = np.stack([-lr.coef_[0] / 2, lr.coef_[0] / 2], 1)
        b = np.array([-lr.intercept_[0] / 2, lr.intercept_[0] / 2])
    return W, b


def _cell_weights(codes: np.ndarray, n: int) -> np.ndarray:
    counts = np.bincount(codes, minlength=n).astype(float)
    return (1.0 / np.maximum(counts, 1))[codes]


def _cumulative_age(x: np.ndarray, y: np.ndarray, k: int):
    """Cumulative logits: one binary model per threshold ``y > j``; returns a function embeddings ->
    bin probabilities (monotone survival clipped, then differenced)."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    models = [LogisticRegression(C=1.0, max_iter=300).fit(x, (y > j).astype(int)) for j in range(k - 1)]

    def predict(h: np.ndarray) -> np.ndarray:
        surv = np.stack([m.predict_proba(h)[:, 1] for m in models], 1)
        surv = np.minimum.accumulate(surv, axis=1)
        cum = np.concatenate([np.ones((len(h), 1)), surv, np.zeros((len(h), 1))], 1)
        return np.clip(cum[:, :-1] - cum[:, 1:], 1e-6, 1)

    return predict


def head_study(embed_path: Path, manifests: str, out: Path) -> dict:
    """Linear heads refitted on cached embeddings of the base train rows with several losses,
    scored on the val halves with flip TTA (and, for race, the gender-conditioned race biases
    fitted on the fit half) against release 4's own heads on the same embeddings."""
    d = np.load(embed_path)
    train = load_split("splits", ["fairface"], "train").reset_index(drop=True)
    val = load_split(manifests, ["fairface"], "val").reset_index(drop=True)
    if list(d["val_rel_path"]) != val["rel_path"].tolist() or list(d["train_rel_path"]) != train["rel_path"].tolist():
        raise ValueError(f"{embed_path}: cached rows differ from the split rows")
    yt, yv = groups.truths(train), groups.truths(val)
    fit = groups.fit_confirm_halves(val)
    xt = d["train_plain"]
    k = {h: len(labels.HEAD_CLASSES[h]) for h in ("age", "gender", "race")}

    def flip_probs(W: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (_softmax(d["val_plain"] @ W + b) + _softmax(d["val_mirror"] @ W + b)) / 2

    cell = yt["race"] * 2 + yt["gender"]
    soft = np.exp(-0.5 * (np.arange(k["age"])[None, :] - yt["age"][:, None]) ** 2)  # Gaussian, sigma 1 bin
    soft /= soft.sum(1, keepdims=True)
    variants = {
        "race": {"release 4 head": (d["W_race"], d["b_race"]),
                 "CE": _fit_linear(xt, yt["race"], k["race"]),
                 "class-balanced": _fit_linear(xt, yt["race"], k["race"], _cell_weights(yt["race"], 7)),
                 "race x gender balanced": _fit_linear(xt, yt["race"], k["race"], _cell_weights(cell, 14))},
        "gender": {"release 4 head": (d["W_gender"], d["b_gender"]),
                   "CE": _fit_linear(xt, yt["gender"], 2),
                   "race x gender balanced": _fit_linear(xt, yt["gender"], 2, _cell_weights(cell, 14))},
        "age": {"release 4 head": (d["W_age"], d["b_age"]),
                "CE": _fit_linear(xt, yt["age"], k["age"]),
                "class-balanced": _fit_linear(xt, yt["age"], k["age"], _cell_weights(yt["age"], 9)),
                "soft Gaussian labels": _fit_linear(xt, yt["age"], k["age"], soft=soft)},
    }
    # group DRO (race x gender cells): reweight cells by exp(eta * cell loss) on train, 4 rounds
    w = np.ones(len(cell))
    for _ in range(4):
        W, b = _fit_linear(xt, yt["race"], k["race"], w)
        loss = -np.log(np.clip(_softmax(xt @ W + b)[np.arange(len(cell)), yt["race"]], 1e-12, 1))
        cell_loss = np.bincount(cell, weights=loss, minlength=14) / np.bincount(cell, minlength=14)
        w = _cell_weights(cell, 14) * np.exp(2.0 * (cell_loss - cell_loss.mean()))[cell]
    variants["race"]["group DRO (race x gender)"] = (W, b)
    probs = {h: {n: flip_probs(*wb) for n, wb in vs.items()} for h, vs in variants.items()}
    cum = _cumulative_age(xt, yt["age"], k["age"])
    probs["age"]["cumulative logits"] = (cum(d["val_plain"]) + cum(d["val_mirror"])) / 2
    g_pred = probs["gender"]["release 4 head"].argmax(-1)
    held = [i for i, c in enumerate(np.bincount(yv["age"], minlength=9)) if c >= groups.MIN_AGE_BIN_N]
    rows = []
    for head, vs in probs.items():
        for name, p in vs.items():
            steps = {"none": p}
            if head == "race":
                bg = groups.fit_race_bias(p[fit], g_pred[fit], {h: v[fit] for h, v in yv.items()},
                                          accuracy(p[fit], yv["race"][fit]))
                steps["+ race bias | gender"] = groups.apply_bias(p, bg, g_pred)
            if head == "age":
                tau = groups.fit_age_tau(p[fit], yv["age"][fit], age_prior("splits"),
                                         accuracy(p[fit], yv["age"][fit]) - 0.01, held)
                steps[f"+ age prior tau {tau:.2f}"] = groups.apply_bias(p, -tau * np.log(age_prior("splits")))
            for step, q in steps.items():
                for half, mask in (("fit", fit), ("confirm", ~fit)):
                    pred = {h: probs[h]["release 4 head"][mask].argmax(-1) for h in probs}
                    pred[head] = q[mask].argmax(-1)
                    sm = groups.group_summary({h: v[mask] for h, v in yv.items()}, pred, held)
                    rows.append({"head": head, "variant": name, "post-hoc": step, "half": half,
                                 **{key: round(float(sm[key]), 4) for key in HEAD_KEYS[head]}})
    out.mkdir(parents=True, exist_ok=True)
    write_result(out / "heads.json", rows, indent=1)
    blocks = [("h1", "Linear heads refitted on cached embeddings (base train rows, 14,668 FairFace) vs. release 4's"),
              ("p", "Features: the 256-d input of the heads (embed_relu) of release 4's network recovered in Keras; "
                    "val with flip TTA; post-hoc steps fitted on the fit half. Only the listed head changes; the "
                    "others stay release 4's.")]
    for head in probs:
        keys = HEAD_KEYS[head]
        blocks.append(("h2", head))
        blocks.append(("table", (["variant", "post-hoc", "half", *keys],
                                 [[r["variant"], r["post-hoc"], r["half"], *[r[k_] for k_ in keys]]
                                  for r in rows if r["head"] == head])))
    (out / "heads.md").write_text(report.to_markdown(blocks))
    return {"rows": len(rows)}


HEAD_KEYS = {"race": ["race_accuracy", "worst_race_recall", "worst_race_gender_recall", "race_balanced_accuracy"],
             "gender": ["gender_accuracy", "gender_gap_across_races"],
             "age": ["age_accuracy", "age_balanced_accuracy", "worst_age_bin_recall"]}


def load_cache(path: Path, manifests: str, split: str = "val") -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The split's FairFace rows and the cached outputs, row order checked."""
    table = load_split(manifests, ["fairface"], split).reset_index(drop=True)
    data = np.load(path)
    if list(data["rel_path"]) != table["rel_path"].tolist():
        raise ValueError(f"{path}: cached rows differ from the {split} rows of {manifests}")
    return table, {k: data[k] for k in data.files if k not in ("rel_path", "model")}


@functools.lru_cache
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
    write_result(out / "selective.json", result, indent=1)
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
    write_result(out / "study.json", result, indent=1)
    bg = result["candidates"]["race bias | gender"]["params"]["race_by_gender"]
    write_result(out / "race_bias_by_gender.json", {"race": {"by": "gender", "bias": bg}}, machine=False, indent=1)
    write_ambiguity(result["ambiguity"], cache_path, result["fit_rows"], out / "ambiguity.json")
    (out / "study.md").write_text(report.to_markdown(study_blocks(result)))
    return result


def write_ambiguity(amb: dict, cache_path: Path, fit_rows: int, path: Path) -> None:
    """The thresholds as ``scripts/adjust_onnx.py --ambiguity-from`` reads them, with provenance
    (no ``machine`` key: every top-level key is a head)."""
    model = str(np.load(cache_path)["model"])
    provenance = f"outputs of {model} on the fit half of FairFace val ({fit_rows} rows, seed 29)"
    write_result(path, {h: {"threshold": a["threshold"], "target_accuracy_answered": a["target"],
                            "fitted_on": provenance, "confirm_half": a["confirm"]} for h, a in amb.items()},
                 machine=False, indent=1)


def ambiguity_study(cache_path: Path, manifests: str, out: Path) -> dict:
    """Ambiguity thresholds refitted on the fit half of val for the model cached in ``cache_path``
    (e.g. after a step that changes a head's probabilities), confirm-half tables beside them."""
    table, p = load_cache(cache_path, manifests)
    y = groups.truths(table)
    fit = groups.fit_confirm_halves(table)
    amb = ambiguity(p, y, fit)
    write_ambiguity(amb, cache_path, int(fit.sum()), out / "ambiguity.json")
    from ff_keras.evaluation.calibration import ece  # noqa: PLC0415

    model = str(np.load(cache_path)["model"])
    calib = {h: {half: round(ece(p[h][m], y[h][m]), 4) for half, m in (("fit", fit), ("confirm", ~fit))}
             for h in AMBIGUITY_TARGETS}
    blocks = [("h1", f"Ambiguity thresholds for {model} (fit half of FairFace val -> confirm half)"),
              ("table", (["head", "ECE fit half", "ECE confirm half"],
                         [[h, c["fit"], c["confirm"]] for h, c in calib.items()])),
              *ambiguity_blocks(amb)]
    (out / "ambiguity.md").write_text(report.to_markdown(blocks))
    return {h: {"threshold": a["threshold"], "confirm": a["confirm"], "ece": calib[h]} for h, a in amb.items()}


def compare_study(base_path: Path, cand_path: Path, names: list[str], split: str, manifests: str,
                  out: Path) -> dict:
    """Release 4.1's rule (``groups.RULE_4_1`` and the unchanged heads) on one split: the group
    quantities of a base model and of a candidate from their caches of the same rows."""
    table, base = load_cache(base_path, manifests, split)
    _, cand = load_cache(cand_path, manifests, split)
    y = groups.truths(table)
    held = [i for i, c in enumerate(np.bincount(y["age"], minlength=9)) if c >= groups.MIN_AGE_BIN_N]
    sums = [groups.group_summary(y, {h: q[h].argmax(-1) for h in ("age", "gender", "race")}, held)
            for q in (base, cand)]
    rule = groups.check_rule(sums[1], groups.RULE_4_1)
    unchanged = groups.unchanged_heads(base, cand, [h for h in base if h != "race"])
    holds = all(r["ok"] for r in rule.values()) and all(u["ok"] for u in unchanged.values())
    keys = ["worst_race_recall", "worst_race_gender_recall", "race_accuracy", "race_balanced_accuracy",
            "gender_accuracy", "gender_gap_across_races", "age_accuracy", "age_balanced_accuracy",
            "worst_age_bin_recall"]
    target = {k: f"{'≥' if r['at_least'] else '≤'} {r['bound']}" for k, r in rule.items()}
    blocks = [("h1", f"Release 4.1 rule on FairFace {split} ({len(table)} rows): {names[0]} vs {names[1]}"),
              ("p", f"Caches: {np.load(base_path)['model']} and {np.load(cand_path)['model']}. "
                    f"Rule: reports/release4_1_rule.md. Rule holds: **{'yes' if holds else 'no'}**."),
              ("table", (["quantity", *names, "target", "holds"],
                         [[k.replace("_", " "), *[f"{s_[k]:.3f}" for s_ in sums], target.get(k, ""),
                           ("yes" if rule[k]["ok"] else "**no**") if k in rule else ""] for k in keys])),
              ("table", (["outputs identical to " + names[0], "max abs diff", "bound", "holds"],
                         [[h, f"{u['max_abs']:.2e}", u["bound"], "yes" if u["ok"] else "**no**"]
                          for h, u in unchanged.items()]))]
    for what, key in (("race recall per true race", "race_recall"),
                      ("race recall per true race × gender", "race_gender_recall"),
                      ("gender accuracy per true race", "gender_accuracy_by_race"),
                      ("age recall per true age bin", "age_recall")):
        blocks.append(("table", ([what, *names], [[g, *[f"{s_[key][g]:.3f}" for s_ in sums]]
                                                  for g in sums[0][key]])))
    result = {"split": split, "rows": len(table), "models": names, "summaries": dict(zip(names, sums)),
              "rule": rule, "unchanged": unchanged, "holds": holds}
    write_result(out / "groups.json", result)
    (out / "groups.md").write_text(report.to_markdown(blocks))
    return {"rule": rule, "unchanged": unchanged, "holds": holds}


def study_blocks(result: dict) -> list:
    """The study as report blocks: rule table, frontier, ambiguity tables."""
    blocks = [
        ("h1", "Group-aware selection on FairFace val (fit half -> confirm half)"),
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
        *ambiguity_blocks(result["ambiguity"]),
    ]
    return blocks


def ambiguity_blocks(amb: dict) -> list:
    """Per head: threshold, confirm-half selective accuracy per race and age bin, coverage curve."""
    blocks = []
    for head, a in amb.items():
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
    e = sub.add_parser("embed", help="cache head inputs of a Keras model (train, val and test rows)")
    e.add_argument("--keras", required=True)
    e.add_argument("--manifests", default="splits", help="the base split: its train images are on this machine")
    e.add_argument("--out", type=Path, required=True)
    hd = sub.add_parser("heads", help="linear heads refitted on the embed cache, scored on the val halves")
    hd.add_argument("--embed", type=Path, required=True)
    hd.add_argument("--manifests", default="splits/extended")
    hd.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("selective", help="selective accuracy of a cache under the thresholds of a model sidecar")
    t.add_argument("--cache", type=Path, required=True)
    t.add_argument("--split", default="test")
    t.add_argument("--manifests", default="splits/extended")
    t.add_argument("--model", default="models/ff_dlib_resnet150.onnx", help="its model_info.json gives the thresholds")
    t.add_argument("--out", type=Path, required=True)
    a = sub.add_parser("ambiguity", help="refit the ambiguity thresholds on the val fit half for a cached model")
    a.add_argument("--cache", type=Path, required=True)
    a.add_argument("--manifests", default="splits/extended")
    a.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("compare", help="release 4.1's rule: group quantities of a base and a candidate cache")
    m.add_argument("--base", type=Path, required=True)
    m.add_argument("--candidate", type=Path, required=True)
    m.add_argument("--names", nargs=2, default=["release 4", "release 4.1"])
    m.add_argument("--split", default="test")
    m.add_argument("--manifests", default="splits/extended")
    m.add_argument("--out", type=Path, required=True)
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
    elif args.cmd == "embed":
        embed(args.keras, args.manifests, args.out)
    elif args.cmd == "heads":
        print(head_study(args.embed, args.manifests, args.out))
    elif args.cmd == "ambiguity":
        print(json.dumps(ambiguity_study(args.cache, args.manifests, args.out), indent=1))
    elif args.cmd == "compare":
        print(json.dumps(compare_study(args.base, args.candidate, args.names, args.split, args.manifests,
                                       args.out), indent=1))
    elif args.cmd == "selective":
        print(selective_report(args.cache, args.split, args.manifests, args.model, args.out))
    else:
        print(json.dumps(run_study(args.cache, args.manifests, args.out, args.costs), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
