"""The evaluation run behind ``scripts/evaluate.py``: rows -> predictions -> metrics -> report.

Every model format goes through ``predictor.load_predictor`` (one code path); images are
read with the predictor's own resize policy. Metrics come from ``evaluate`` (arrays only),
calibration from ``calibration``, documents from ``report``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from ff_keras.evaluation import calibration, metrics as evaluate
from ff_keras import labels
from ff_keras.splits import build as splits
from ff_keras.config import Config
from ff_keras.data.readers import resolve_data_root
from ff_keras.model_info import TTA_MODES
from ff_keras.paths import repo_path

log = logging.getLogger(__name__)


def load_rows(cfg: Config, split: str, limit: int = 0) -> pd.DataFrame:
    """Rows of ``split`` from the manifests; ``limit`` > 0 keeps a seeded sample per source."""
    table = splits.load_split(cfg.data.manifests_dir, cfg.data.sources, split)
    if limit and len(table) > limit:
        share = table["source"].map(table["source"].value_counts(normalize=True))
        keep = []
        for source, rows in table.groupby("source", sort=False):
            k = max(1, round(limit * share[rows.index[0]]))
            keep.append(rows.sample(n=min(k, len(rows)), random_state=cfg.evaluation.seed))
        table = pd.concat(keep).sort_index()
    if table.empty:
        raise ValueError(f"split {split!r} has no rows for sources {cfg.data.sources}")
    return table.reset_index(drop=True)


def predict_rows(
    predictor, table: pd.DataFrame, root: Path, tta: str = "none", batch_size: int = 64
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Probabilities per head for ``table`` (plain, and flip-averaged when ``tta == "flip"``)."""
    from ff_keras.inference.predictor import load_images  # PIL only; no TF on this import

    if tta not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {tta!r}; expected one of {TTA_MODES}")
    plain, flipped = [], []
    size = predictor.info.image_size
    for start in range(0, len(table), batch_size):
        x = load_images([root / p for p in table["rel_path"].iloc[start : start + batch_size]], size)
        plain.append(predictor.predict(x))
        if tta == "flip":
            flipped.append(predictor.predict(x[:, :, ::-1].copy()))
    def join(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {h: np.concatenate([p[h] for p in parts]) for h in parts[0]}

    base = join(plain)
    if tta == "none":
        return base, None
    flip = join(flipped)
    # Regression outputs are averaged too; probabilities stay normalised under averaging.
    return base, {h: (base[h] + flip[h]) / 2 for h in base}


def uncalibrated(probs: Mapping[str, np.ndarray], temperature: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Undo the temperature the predictor applied (``softmax(log p * T)`` = ``softmax(z)``)."""
    out = {}
    for h, p in probs.items():
        t = temperature.get(h, 1.0)
        out[h] = calibration.apply_temperature(p, 1.0 / t) if h in labels.HEAD_CLASSES and t != 1.0 else p
    return out


def _slice(probs: Mapping[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {h: p[mask] for h, p in probs.items()}


def table_views(table: pd.DataFrame) -> dict[str, tuple[str, np.ndarray]]:
    """Named row subsets: one per source plus FairFace's ``service_test`` subset."""
    views = {}
    for source in table["source"].unique():
        views[source] = (source, (table["source"] == source).to_numpy())
    service = (table["source"] == "fairface") & table["service_test"].astype(str).str.lower().eq("true")
    if service.any():
        views["fairface/service_test"] = ("fairface", service.to_numpy())
    return views


def calibrate(
    table: pd.DataFrame, raw: Mapping[str, np.ndarray], temperatures: Mapping[str, float], n_bins: int
) -> dict[str, dict]:
    """ECE / NLL before (T=1) and after the temperature, per head, on labelled rows."""
    out = {}
    for head in raw:
        if head not in labels.HEAD_CLASSES:
            continue
        rows = labels.labelled_mask(table, head)
        if not rows.any():
            continue
        y = evaluate.encode(table.loc[rows], head)
        out[head] = {
            "n": int(rows.sum()),
            **calibration.calibration_summary(raw[head][rows], y, temperatures.get(head, 1.0), n_bins),
        }
    return out


def fit_temperatures(table: pd.DataFrame, raw: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per-head temperature on (val) rows labelled for that head."""
    temps = {}
    for head in raw:
        rows = labels.labelled_mask(table, head) if head in labels.HEAD_CLASSES else np.zeros(0, bool)
        if rows.any():
            temps[head] = calibration.fit_temperature(raw[head][rows], evaluate.encode(table.loc[rows], head))
    return temps


def tta_effect(
    table: pd.DataFrame, plain: Mapping[str, np.ndarray], tta: Mapping[str, np.ndarray]
) -> list[dict]:
    """Accuracy, balanced accuracy and macro-F1 without and with TTA, per view and head."""
    rows = []
    for name, (source, mask) in table_views(table).items():
        for head in labels.SOURCE_HEADS[source]:
            if head not in labels.HEAD_CLASSES or head not in plain:
                continue
            y, k = evaluate.encode(table.loc[mask], head), len(labels.HEAD_CLASSES[head])
            scores = []
            for probs in (plain, tta):
                cm = np.bincount(y * k + probs[head][mask].argmax(1), minlength=k * k).reshape(k, k)
                scores.append(evaluate.scores_from_confusion(cm))
            for metric in scores[0]:
                a, b = float(scores[0][metric]), float(scores[1][metric])
                rows.append(
                    {"table": name, "head": head, "metric": metric, "without": a, "with": b, "delta": b - a}
                )
    return rows



def leakage_check(cfg: Config, split: str) -> dict:
    """Re-checks the split manifests for ``split`` against the other splits.

    With a complete identity cache (``evaluation.identity_cache``) the full
    ``leakage.verify_leakage`` runs again; otherwise the manifest-only checks (group ids
    and paths spanning splits) are recomputed and the split-time report's figures quoted.
    """
    frames = [pd.read_csv(splits.manifest_path(cfg.data.manifests_dir, s)) for s in cfg.data.sources]
    manifest = pd.concat(frames, ignore_index=True)
    spans = manifest.groupby("group_id")["split"].nunique()
    paths = manifest.groupby("rel_path")["split"].nunique()
    out = {
        "split": split,
        "rows": int((manifest["split"] == split).sum()),
        "groups_spanning_splits": int((spans > 1).sum()),
        "paths_in_two_splits": int((paths > 1).sum()),
    }
    cache = repo_path(cfg.evaluation.identity_cache) if cfg.evaluation.identity_cache else None
    report = repo_path(cfg.evaluation.leakage_report)
    # The identity threshold the splits were made with is recorded in the split-time report.
    if cache is not None and cache.exists() and report.exists():
        from ff_keras.splits import identity, leakage
        from ff_keras.splits.grouping import GroupingParams

        params = GroupingParams(**json.loads(report.read_text())["params"])

        emb = identity.load_cache(cache)
        index = {k: i for i, k in enumerate(emb["key"].tolist())}
        if all(p in index for p in manifest["rel_path"]):
            rows = np.array([index[p] for p in manifest["rel_path"]])
            full = leakage.verify_leakage(manifest, {k: v[rows] for k, v in emb.items()}, params)
            out.update(
                source="recomputed (leakage.verify_leakage)",
                ok=full["ok"],
                **{
                    f"{k}[{pair}]": v
                    for k, d in full["cross_split"].items()
                    if isinstance(d, dict)
                    for pair, v in d.items()
                    if split in pair.split("|")
                },
            )
            out["summary"] = f"Leakage re-verified from the identity cache: ok = {full['ok']}."
            return out
    if report.exists():
        saved = json.loads(report.read_text())
        out["source"] = f"quoted from {cfg.evaluation.leakage_report} (identity pairs not recomputed)"
        out["ok_at_split_time"] = saved.get("ok")
        for k, d in saved.get("cross_split", {}).items():
            for pair, v in d.items() if isinstance(d, dict) else [("all", d)]:
                if pair == "all" or split in pair.split("|"):
                    out[f"{k}[{pair}]"] = v
    else:
        out["source"] = "manifest-only (no identity cache, no leakage report found)"
    ok = out["groups_spanning_splits"] == 0 and out["paths_in_two_splits"] == 0
    out["summary"] = (
        f"Manifest re-check: {out['groups_spanning_splits']} groups and "
        f"{out['paths_in_two_splits']} paths span splits ({'ok' if ok else 'LEAK'}); {out['source']}."
    )
    return out


def run_evaluation(
    model_path: str | Path, split: str, cfg: Config, *, limit: int = 0, fit_temperature: bool = False
) -> dict:
    """Predicts ``split`` with the model and returns the full metrics dict (see ``report``)."""
    from ff_keras.inference.predictor import load_predictor

    ev, root = cfg.evaluation, resolve_data_root(cfg.data.root)
    predictor = load_predictor(model_path, batch_size=ev.batch_size)
    info = predictor.info
    if fit_temperature and info.outputs != "logits":
        # An export bakes its temperature into the graph; a new sidecar value would not match it.
        raise ValueError(
            f"{model_path} is an export (outputs={info.outputs!r}); fit the temperature on the "
            "training checkpoint (.keras with logits) and export again"
        )
    if ev.tta != "none" and info.tta != "none":
        raise ValueError(f"{model_path} already averages over flips inside its graph (tta={info.tta!r}); "
                         f"evaluate it with evaluation.tta=none")
    table = load_rows(cfg, split, limit)
    plain, tta = predict_rows(predictor, table, root, ev.tta, ev.batch_size)
    probs = tta if tta is not None else plain
    temps = dict(info.temperature)
    if fit_temperature:
        val = load_rows(cfg, "val", limit)
        val_raw = uncalibrated(predict_rows(predictor, val, root, "none", ev.batch_size)[0], info.temperature)
        temps.update(fit_temperatures(val, val_raw))
        calibration.store_temperature(model_path, temps)
    tables = {
        name: evaluate.evaluate_table(
            table.loc[mask],
            _slice(probs, mask),
            source,
            n_boot=ev.n_boot,
            seed=ev.seed,
            level=ev.level,
            min_group_n=ev.min_group_n,
        )
        for name, (source, mask) in table_views(table).items()
    }
    cal = calibrate(table, uncalibrated(probs, info.temperature), temps, ev.ece_bins)
    note = (
        "temperatures fitted on val now and stored in model_info.json"
        if fit_temperature
        else "temperatures from model_info.json"
        if info.temperature
        else "no temperature fitted (T = 1)"
    )
    return {
        "model": str(model_path),
        "split": split,
        "n_rows": len(table),
        "model_info": asdict(info),
        "settings": {**asdict(ev), "limit": limit, "data_root": str(root)},
        "tables": tables,
        "calibration": {"note": note, "heads": cal},
        "tta": {
            "mode": ev.tta if tta is not None else None,
            "effect": tta_effect(table, plain, tta) if tta is not None else [],
        },
        "leakage": leakage_check(cfg, split),
    }


def log_to_wandb(run_id: str, metrics: dict, out_dir: Path, cfg: Config) -> str:
    """Logs the tables and plots to an existing (or new) W&B run; offline unless configured.

    The local run files go to ``wandb.dir`` if set, else beside the report in ``out_dir``
    (W&B's own fallback for an empty dir is a temp folder, where offline logs get lost).
    """
    import wandb  # lazy: only when a run id is given

    mode = cfg.wandb.mode if cfg.wandb.mode in ("online", "offline") else "offline"
    run = wandb.init(
        id=run_id,
        resume="allow",
        mode=mode,
        project=cfg.wandb.project,
        dir=str(cfg.wandb.dir or out_dir),
        job_type="evaluate",
    )
    prefix = f"eval_{metrics['split']}"
    summary, rows, group_rows = {}, [], []
    for name, res in metrics["tables"].items():
        for head, m in res["heads"].items():
            for metric in ("accuracy", "balanced_accuracy", "macro_f1", "off_by_one"):
                if metric in m:
                    summary[f"{prefix}/{name}/{head}_{metric}"] = m[metric]
                    rows.append([name, head, metric, m[metric], *m["ci"][metric]])
        for grouping, per_head in res["groups"].items():
            for head, g in per_head.items():
                group_rows += [
                    [name, grouping, head, r["group"], r["n"], r["accuracy"], *r["ci"]] for r in g["groups"]
                ]
    run.log(
        {
            f"{prefix}/metrics": wandb.Table(["table", "head", "metric", "value", "ci_lo", "ci_hi"], rows),
            f"{prefix}/groups": wandb.Table(
                ["table", "grouping", "head", "group", "n", "accuracy", "ci_lo", "ci_hi"], group_rows
            ),
            **{
                f"{prefix}/plots/{p.stem}": wandb.Image(str(p))
                for p in sorted((out_dir / "plots").glob("*.png"))
            },
        }
    )
    run.summary.update(summary)
    run.finish()
    return run.id
