"""Group-aware selection: per-group recalls, the release rule, and post-network steps fitted in numpy.

The release rule of ``reports/release5_rule.md`` looks at the worst race, the worst race × gender
cell, every age bin, balanced age accuracy and the gender gap across races next to overall
accuracy. Everything fitted on val (logit biases, ambiguity thresholds) is fitted on one half of
the val rows and confirmed on the other (``fit_confirm_halves``), so the figures used for the
decision are not tuned to the rows they are measured on.

The post-network steps act on the log-probabilities the model returns: ``log p + b`` renormalised
(for a race bias conditioned on the predicted gender, ``b`` is picked per row by that prediction).
``export.add_logit_bias`` writes the same step into the ONNX graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ff_keras import labels
from ff_keras.inference.predictor import apply_logit_bias

EPS = 1e-12
MIN_AGE_BIN_N = 50  # age bins with fewer val rows are reported, not held to the rule


@dataclass(frozen=True)
class Target:
    key: str
    text: str
    bound: float
    at_least: bool = True

    def holds(self, value: float) -> bool:
        return value >= self.bound if self.at_least else value <= self.bound


RULE = (  # reports/release5_rule.md
    Target("worst_race_recall", "worst race recall", 0.45),
    Target("worst_race_gender_recall", "worst race × gender race recall", 0.35),
    Target("worst_age_bin_recall", f"worst age-bin recall (bins with n ≥ {MIN_AGE_BIN_N} in val)", 0.30),
    Target("age_balanced_accuracy", "balanced age accuracy", 0.52),
    Target("gender_gap_across_races", "gender accuracy gap across races", 0.06, at_least=False),
    Target("race_accuracy", "race accuracy", 0.625),
    Target("gender_accuracy", "gender accuracy", 0.90),
    Target("age_accuracy", "age accuracy", 0.55),
)

RULE_4_1 = (  # reports/release4_1_rule.md (FairFace test); plus outputs of the other heads unchanged
    Target("worst_race_recall", "worst race recall", 0.45),
    Target("worst_race_gender_recall", "worst race × gender race recall", 0.35),
    Target("race_accuracy", "race accuracy", 0.625),
    Target("race_balanced_accuracy", "balanced race accuracy", 0.625),
)
UNCHANGED_ATOL = 1e-6  # release 4.1: age, gender and age_years outputs identical to release 4's


def fit_confirm_halves(table: pd.DataFrame, seed: int = 29) -> np.ndarray:
    """True for the fit half: rows shuffled inside each race × gender × age stratum and dealt
    alternately, the starting half alternating across strata (halves differ by ≤ 1 per stratum)."""
    rng = np.random.default_rng(seed)
    fit = np.zeros(len(table), bool)
    strata = table.groupby(["race", "gender", "age_bin"], sort=True).indices
    for k, (_, rows) in enumerate(sorted(strata.items())):
        rows = rng.permutation(rows)
        fit[rows[(k % 2)::2]] = True
    return fit


def truths(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Class ids in schema order of age, gender and race (FairFace rows: all three labelled)."""
    out = {}
    for head in ("age", "gender", "race"):
        names = labels.HEAD_CLASSES[head]
        index = {n: i for i, n in enumerate(names)}
        col = table[labels.label_column(head)].astype(str)
        bad = sorted(set(col) - set(index))
        if bad:
            raise ValueError(f"{head}: labels {bad} are not classes of the model ({names})")
        out[head] = col.map(index).to_numpy(int)
    return out


def recalls(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Recall of each of ``k`` classes (nan for a class without rows)."""
    hit = np.bincount(y, weights=(pred == y).astype(float), minlength=k)
    n = np.bincount(y, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hit / n


def group_summary(y: Mapping[str, np.ndarray], pred: Mapping[str, np.ndarray],
                  age_bins_held: Sequence[int] | None = None) -> dict:
    """The rule's quantities plus the per-group recalls behind them."""
    races, genders, ages = labels.HEAD_CLASSES["race"], labels.HEAD_CLASSES["gender"], labels.HEAD_CLASSES["age"]
    race_rec = recalls(y["race"], pred["race"], len(races))
    cell = y["race"] * len(genders) + y["gender"]
    cell_hit = np.bincount(cell, weights=(pred["race"] == y["race"]).astype(float), minlength=14)
    cell_rec = cell_hit / np.maximum(np.bincount(cell, minlength=len(races) * len(genders)), 1)
    age_rec = recalls(y["age"], pred["age"], len(ages))
    held = list(range(len(ages))) if age_bins_held is None else list(age_bins_held)
    gender_by_race = np.array([np.mean(pred["gender"][y["race"] == r] == y["gender"][y["race"] == r])
                               for r in range(len(races))])
    return {
        "race_accuracy": float(np.mean(pred["race"] == y["race"])),
        "race_balanced_accuracy": float(np.nanmean(race_rec)),
        "gender_accuracy": float(np.mean(pred["gender"] == y["gender"])),
        "age_accuracy": float(np.mean(pred["age"] == y["age"])),
        "age_balanced_accuracy": float(np.nanmean(age_rec)),
        "worst_race_recall": float(np.nanmin(race_rec)),
        "worst_race_gender_recall": float(cell_rec.min()),
        "worst_age_bin_recall": float(np.nanmin(age_rec[held])),
        "gender_gap_across_races": float(gender_by_race.max() - gender_by_race.min()),
        "race_recall": dict(zip(races, race_rec.round(4).tolist())),
        "race_gender_recall": {f"{races[i // 2]} × {genders[i % 2]}": round(float(v), 4)
                               for i, v in enumerate(cell_rec)},
        "age_recall": dict(zip(ages, age_rec.round(4).tolist())),
        "gender_accuracy_by_race": dict(zip(races, gender_by_race.round(4).tolist())),
    }


def check_rule(summary: Mapping[str, float], rule: Sequence[Target] = RULE) -> dict[str, dict]:
    """Each target of ``rule`` (release 5's by default): its value, bound and whether it holds."""
    return {t.key: {"text": t.text, "value": round(float(summary[t.key]), 4),
                    "bound": t.bound, "at_least": t.at_least, "ok": t.holds(summary[t.key])} for t in rule}


def unchanged_heads(before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray], heads: Sequence[str],
                    atol: float = UNCHANGED_ATOL) -> dict[str, dict]:
    """Max abs difference per head between two models' outputs on the same rows, and whether it is
    within ``atol`` (a step meant to change one head must leave the others as they were)."""
    out = {}
    for h in heads:
        diff = float(np.max(np.abs(np.asarray(after[h], np.float64) - np.asarray(before[h], np.float64))))
        out[h] = {"max_abs": diff, "bound": atol, "ok": diff <= atol}
    return out


# === Post-network logit biases ===


def log_probs(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(p.astype(np.float64), EPS, 1.0))


apply_bias = apply_logit_bias  # the step the ONNX graph runs (``export.add_logit_bias``)


def coordinate_ascent(score: Callable[[np.ndarray], float], shape: tuple[int, ...],
                      steps: Sequence[float] = (1.0, 0.5, 0.25, 0.1, 0.05), span: int = 4,
                      passes: int = 4) -> np.ndarray:
    """Maximises a piecewise-constant ``score(bias)`` one coordinate at a time on shrinking grids
    (the last coordinate of every row is fixed at 0: only differences between classes matter)."""
    b = np.zeros(shape)
    best = score(b)
    free = [i for i in np.ndindex(shape) if i[-1] != shape[-1] - 1]
    for step in steps:
        for _ in range(passes):
            moved = False
            for i in free:
                start = b[i]
                for d in np.arange(-span, span + 1) * step:
                    if d == 0:
                        continue
                    b[i] = start + d
                    s = score(b)
                    if s > best + 1e-12:
                        best, start, moved = s, b[i], True
                b[i] = start
            if not moved:
                break
    return b


def fit_race_bias(p_race: np.ndarray, by_gender: np.ndarray | None, y: Mapping[str, np.ndarray],
                  accuracy_floor: float, objective: str = "cell") -> np.ndarray:
    """Race biases (per predicted gender when ``by_gender`` is given) maximising the worst race ×
    gender recall (``objective="cell"``) or the worst race recall (``"race"``) while race accuracy
    stays ≥ ``accuracy_floor``; mean recall and accuracy break ties."""
    k = p_race.shape[1]
    z = log_probs(p_race)
    cell = y["race"] * 2 + y["gender"]
    groups = cell if objective == "cell" else y["race"]
    n_groups = 2 * k if objective == "cell" else k
    n = np.maximum(np.bincount(groups, minlength=n_groups), 1)

    def score(b: np.ndarray) -> float:
        pred = (z + (b if by_gender is None else b[by_gender])).argmax(-1)
        hit = pred == y["race"]
        rec = np.bincount(groups, weights=hit.astype(float), minlength=n_groups) / n
        acc = hit.mean()
        return rec.min() + 0.1 * rec.mean() + 0.01 * acc - 10.0 * max(0.0, accuracy_floor - acc)

    return coordinate_ascent(score, (2, k) if by_gender is not None else (k,))


def fit_age_bias(p_age: np.ndarray, y_age: np.ndarray, accuracy_floor: float,
                 held: Sequence[int]) -> np.ndarray:
    """Age biases maximising balanced accuracy plus the worst held bin's recall while age accuracy
    stays ≥ ``accuracy_floor``."""
    k = p_age.shape[1]
    z = log_probs(p_age)
    n = np.maximum(np.bincount(y_age, minlength=k), 1)
    held = list(held)

    def score(b: np.ndarray) -> float:
        pred = (z + b).argmax(-1)
        hit = pred == y_age
        rec = np.bincount(y_age, weights=hit.astype(float), minlength=k) / n
        acc = hit.mean()
        return rec.mean() + 0.5 * rec[held].min() + 0.01 * acc - 10.0 * max(0.0, accuracy_floor - acc)

    return coordinate_ascent(score, (k,))


def fit_age_tau(p_age: np.ndarray, y_age: np.ndarray, prior: Sequence[float], accuracy_floor: float,
                held: Sequence[int], taus: Sequence[float] = tuple(np.arange(0, 1.51, 0.05))) -> float:
    """One-parameter age step ``b = -tau log prior`` (post-hoc prior correction): the tau maximising
    balanced accuracy plus the worst held bin's recall while age accuracy stays ≥ ``accuracy_floor``
    (9 free biases overfit a half of val; see the study table)."""
    k = p_age.shape[1]
    n = np.maximum(np.bincount(y_age, minlength=k), 1)
    held = list(held)
    best, best_tau = -np.inf, 0.0
    for tau in taus:
        hit = apply_bias(p_age, -tau * np.log(np.asarray(prior, np.float64))).argmax(-1) == y_age
        rec = np.bincount(y_age, weights=hit.astype(float), minlength=k) / n
        s = rec.mean() + 0.5 * rec[held].min() - 10.0 * max(0.0, accuracy_floor - hit.mean())
        if s > best + 1e-12:
            best, best_tau = s, float(tau)
    return best_tau


def fit_gender_bias_by_race(p_gender: np.ndarray, by_race: np.ndarray, y: Mapping[str, np.ndarray],
                            accuracy_floor: float) -> np.ndarray:
    """Gender biases per predicted race shrinking the gender accuracy gap across true races while
    gender accuracy stays ≥ ``accuracy_floor``."""
    z = log_probs(p_gender)
    k_race = int(by_race.max()) + 1 if len(by_race) else 7
    k_race = max(k_race, len(labels.HEAD_CLASSES["race"]))
    n = np.maximum(np.bincount(y["race"], minlength=k_race), 1)

    def score(b: np.ndarray) -> float:
        hit = (z + b[by_race]).argmax(-1) == y["gender"]
        by = np.bincount(y["race"], weights=hit.astype(float), minlength=k_race) / n
        acc = hit.mean()
        return -(by.max() - by.min()) + 0.2 * acc - 10.0 * max(0.0, accuracy_floor - acc)

    return coordinate_ascent(score, (k_race, 2))


def median_bin(p_age: np.ndarray) -> np.ndarray:
    """Ordinal decoding: the first bin where the cumulative probability reaches 1/2."""
    return (np.cumsum(p_age, -1) < 0.5).sum(-1).clip(0, p_age.shape[1] - 1)


# === Ambiguity ===


def ambiguity_threshold(p: np.ndarray, y: np.ndarray, target: float) -> float:
    """Smallest top-probability threshold whose answered rows (top p ≥ threshold) reach accuracy
    ``target``; 1.0 when no threshold does."""
    top = p.max(-1)
    order = np.argsort(-top, kind="stable")
    hit = (p.argmax(-1) == y)[order]
    acc = np.cumsum(hit) / np.arange(1, len(hit) + 1)  # accuracy of the m most confident rows
    ok = np.nonzero(acc >= target)[0]
    if not len(ok):
        return 1.0
    m = ok.max()  # the largest answered set that still reaches the target
    return float(top[order][m])


def selective(p: np.ndarray, y: np.ndarray, threshold: float) -> dict:
    """Share of rows answered (top p ≥ threshold), accuracy of the answered and of all rows."""
    answered = p.max(-1) >= threshold
    hit = p.argmax(-1) == y
    return {"n": int(len(y)), "answered": float(answered.mean()) if len(y) else float("nan"),
            "accuracy_answered": float(hit[answered].mean()) if answered.any() else float("nan"),
            "accuracy_all": float(hit.mean()) if len(y) else float("nan")}


def selective_by_group(p: np.ndarray, y: np.ndarray, threshold: float, groups: np.ndarray,
                       names: Sequence[str]) -> dict[str, dict]:
    """``selective`` per group id (e.g. true race or true age bin)."""
    return {name: selective(p[groups == g], y[groups == g], threshold) for g, name in enumerate(names)
            if (groups == g).any()}


# === Report blocks (rendered by ``report.to_markdown``) ===

_RULE_COLUMNS = [t.key for t in RULE]


def candidates_table(candidates: Mapping[str, Mapping]) -> tuple[list[str], list[list]]:
    """One row per candidate and half: the rule's quantities, failed targets in bold."""
    header = ["candidate", "half", *[t.text for t in RULE], "rule holds"]
    rows = []
    for name, c in candidates.items():
        for half in ("fit", "confirm"):
            rule = c[half]["rule"]
            cells = [f"{rule[k]['value']:.3f}" if rule[k]["ok"] else f"**{rule[k]['value']:.3f}**"
                     for k in _RULE_COLUMNS]
            rows.append([name, half, *cells, "yes" if all(r["ok"] for r in rule.values()) else "no"])
    return header, rows


def selective_table(by_group: Mapping[str, Mapping], what: str) -> tuple[list[str], list[list]]:
    """Accuracy of all faces vs. of the answered ones, and the share answered, per group."""
    header = [what, "n", "accuracy (all)", "answered", "accuracy (answered)"]
    rows = [[g, s["n"], f"{s['accuracy_all']:.3f}", f"{s['answered']:.3f}",
             "–" if np.isnan(s["accuracy_answered"]) else f"{s['accuracy_answered']:.3f}"]
            for g, s in by_group.items()]
    return header, rows
