"""Loss-weighting comparison on cached embeddings: same data, same budget, same initial heads.

The backbone runs once (frozen, ``embed_cache``); each method then trains a fresh copy of the
same initial heads for the same number of steps, and is scored on val. Cheap enough for a
CPU, and the only thing that differs between rows is how the per-head losses are combined.
Each method is one W&B run in a shared group, so the curves overlay in the UI.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import keras
import pandas as pd

from ff_keras.config import Config, to_dict
from ff_keras.convert.pretrained import build_pretrained, resolve_weights
from ff_keras.data import pipeline as data
from ff_keras.data.readers import resolve_data_root
from ff_keras.training.loss_weighting import LossWeighting
from ff_keras.training.losses import build_losses
from ff_keras.training.run import cached_embeddings, compile_trainer, embedding_fit_inputs, load_tables, stage_callbacks
from ff_keras.training.tracking import Tracker
from ff_keras.machine import write_result

# method -> (strategy, use the config's loss_weights? else all 1.0)
METHODS: dict[str, tuple[str, bool]] = {
    "fixed_equal": ("fixed", False),
    "fixed_tuned": ("fixed", True),
    "uncertainty": ("uncertainty", False),
    "dwa": ("dwa", False),
}
REPORT_METRICS = (
    "age_accuracy", "age_balanced_accuracy", "age_off_by_one", "gender_accuracy", "gender_balanced_accuracy",
    "race_accuracy", "race_balanced_accuracy", "race_utk_accuracy", "race_utk_balanced_accuracy", "age_years_mae",
)


def compare(
    cfg: Config,
    out_dir: str | Path,
    methods: Sequence[str] = tuple(METHODS),
    epochs: int = 10,
    tables: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Trains heads once per method on cached embeddings; returns the val-metric table.

    Writes ``results.json`` and ``results.md`` to ``out_dir`` (and caches embeddings there).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown weighting methods {unknown}; known: {sorted(METHODS)}")
    cfg = copy.deepcopy(cfg)
    if cfg.model.weights:
        cfg.model.weights = str(resolve_weights(cfg.model.weights, cfg.model.backbone))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.train.seed)
    root = resolve_data_root(cfg.data.root)
    train_t, val_t = tables if tables is not None else load_tables(cfg, root)
    heads = data.dataset_heads(cfg)
    encoders = data.fit_encoders(train_t, heads)
    net = build_pretrained(cfg)
    tr, va = cached_embeddings(net, data.make_dataset(train_t, root, cfg, False, encoders),
                               data.make_dataset(val_t, root, cfg, False, encoders), out / "embeddings",
                               cfg.train.cache_flip)
    steps = cfg.train.steps_per_epoch or max(1, len(tr["emb"]) // cfg.data.batch_size)
    group = cfg.wandb.group or f"weighting-{datetime.now():%Y%m%d-%H%M%S}"
    loss_fns = build_losses(heads, cfg.train.label_smoothing, cfg.train.age_years_loss)
    rows = [_train_method(cfg, method, net, heads, tr, va, loss_fns, epochs, steps, out, group) for method in methods]
    table = pd.DataFrame(rows).set_index("method")
    write_result(out / "results.json", {"group": group, "epochs": epochs, "steps_per_epoch": steps,
                                        "n_train_rows": len(tr["emb"]), "n_val": len(va["emb"]), "results": rows})
    (out / "results.md").write_text(to_markdown(table, epochs, steps, group))
    return table


def _train_method(cfg: Config, method: str, net, heads, tr, va, loss_fns, epochs: int, steps: int, out: Path,
                  group: str) -> dict:
    """Fresh heads (the same initial weights for every method) trained with one weighting; val scores."""
    strategy, tuned = METHODS[method]
    keras.utils.set_random_seed(cfg.train.seed)  # same shuffles and dropout masks per method
    fit = embedding_fit_inputs(net, heads, tr, va, cfg.data.batch_size, cfg.train.seed)
    base = cfg.train.loss_weights if tuned else {h: 1.0 for h in heads}
    weighting = LossWeighting(heads, strategy, {h: w for h, w in base.items() if h in heads}, cfg.train.dwa_temperature)
    trainer = compile_trainer(fit, weighting, loss_fns, cfg, cfg.train.lr, epochs, steps)
    tracker = Tracker(cfg.wandb.mode, cfg.wandb.project, out, f"{cfg.name}-{method}",
                      {**to_dict(cfg), "method": method, "epochs": epochs}, group,
                      [*cfg.wandb.tags, "weighting-comparison", method], None, cfg.wandb.dir or None)
    trainer.fit(fit.train, epochs=epochs, steps_per_epoch=steps, validation_data=fit.val,
                callbacks=stage_callbacks(weighting, tracker), verbose=cfg.train.verbose, shuffle=False)
    scores = trainer.evaluate(fit.val, return_dict=True, verbose=0)
    tracker.log_final({k: float(v) for k, v in scores.items()}, {})
    tracker.finish()
    return {"method": method, **{k: float(scores[k]) for k in REPORT_METRICS if k in scores},
            **{f"final_weight_{h}": w for h, w in weighting.current_weights().items()}}


def to_markdown(table: pd.DataFrame, epochs: int, steps: int, group: str) -> str:
    """Val metrics per method as a Markdown table (accuracies in %, MAE in years)."""
    metric_cols = [c for c in REPORT_METRICS if c in table.columns]
    header = "| method | " + " | ".join(metric_cols) + " |"
    lines = [f"Loss weighting on cached embeddings: {epochs} epochs x {steps} steps, W&B group `{group}`.", "",
             header, "|" + "---|" * (len(metric_cols) + 1)]
    for method, row in table.iterrows():
        cells = [f"{row[c]:.2f}" if c.endswith("mae") else f"{100 * row[c]:.1f}" for c in metric_cols]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
