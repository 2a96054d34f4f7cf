"""Weights & Biases logging: offline by default, imported lazily, a no-op when disabled.

Offline runs land in ``<wandb dir>/wandb/offline-run-*/run-<id>.wandb`` and are uploaded
later with ``wandb sync`` (``tests/wandb_log.py`` reads them back in the tests).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

MODES = ("online", "offline", "disabled")


def wandb_key(name: str) -> str:
    """Keras log name -> W&B panel name: ``val_race_accuracy`` -> ``val/race_accuracy``."""
    for prefix in ("val_", "loss_weight_"):
        if name.startswith(prefix):
            return f"{prefix[:-1]}/{name[len(prefix):]}"
    if name in ("lr", "learning_rate", "epoch"):
        return name
    return f"train/{name}"


class Tracker:
    """Thin wrapper over one W&B run; every method is a no-op when ``mode='disabled'``."""

    def __init__(
        self,
        mode: str,
        project: str,
        run_dir: str | Path,
        name: str,
        config: Mapping[str, Any],
        group: str | None = None,
        tags: Sequence[str] = (),
        run_id: str | None = None,
        wandb_dir: str | Path | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"unknown wandb.mode {mode!r}; expected one of {MODES}")
        self.mode = mode
        self.run = None
        self.last_step = -1
        if mode == "disabled":
            return
        import wandb  # lazy: training without W&B never imports it

        directory = Path(wandb_dir) if wandb_dir else Path(run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            mode=mode,
            project=project,
            name=name,
            dir=str(directory),
            config=dict(config),
            group=group,
            tags=list(tags) or None,
            id=run_id,
            resume="allow" if run_id else None,
            reinit="finish_previous",
        )

    @property
    def enabled(self) -> bool:
        return self.run is not None

    @property
    def run_path(self) -> Path | None:
        """Folder of the local run files (holds the ``.wandb`` log)."""
        return Path(self.run.dir).parent if self.enabled else None

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self.enabled:
            self.last_step = max(self.last_step, step if step is not None else self.last_step + 1)
            self.run.log({wandb_key(k): _plain(v) for k, v in metrics.items()}, step=step)

    def log_final(
        self,
        metrics: Mapping[str, float],
        confusions: Mapping[str, tuple[np.ndarray, Sequence[str]]],
        out_dir: str | Path | None = None,
    ) -> None:
        """End of run: a table of val metrics and one confusion-matrix image per head.

        The PNGs are also written to ``out_dir`` so a disabled-W&B run keeps them.
        """
        figures = {head: confusion_figure(cm, names, head) for head, (cm, names) in confusions.items()}
        if out_dir is not None:
            for head, fig in figures.items():
                fig.savefig(Path(out_dir) / f"confusion_{head}.png", dpi=80)
        if self.enabled:
            import wandb

            rows = [[k, float(v)] for k, v in sorted(metrics.items())]
            payload: dict[str, Any] = {"val_metrics": wandb.Table(columns=["metric", "value"], data=rows)}
            payload.update({f"confusion/{h}": wandb.Image(fig) for h, fig in figures.items()})
            # Its own step after the last epoch: never merged into an epoch's row.
            self.last_step += 1
            self.run.log(payload, step=self.last_step)
            for k, v in metrics.items():
                self.run.summary[f"final/{k}"] = float(v)
        import matplotlib.pyplot as plt

        for fig in figures.values():
            plt.close(fig)

    def finish(self) -> None:
        if self.enabled:
            self.run.finish()
            self.run = None


class TrackingCallback(keras.callbacks.Callback):
    """Logs every epoch's logs (train/val metrics, lr, loss weights) to the tracker."""

    def __init__(self, tracker: Tracker):
        super().__init__()
        self.tracker = tracker

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.tracker.log({**(logs or {}), "epoch": epoch}, step=epoch)


def confusion_figure(cm: np.ndarray, class_names: Sequence[str], title: str):
    """Row-normalised confusion matrix as a matplotlib figure (rows = true class)."""
    import matplotlib

    matplotlib.use("Agg")
    from sklearn.metrics import ConfusionMatrixDisplay

    cm = np.asarray(cm, dtype=float)
    norm = np.divide(cm, cm.sum(axis=1, keepdims=True), out=np.zeros_like(cm), where=cm.sum(axis=1, keepdims=True) > 0)
    disp = ConfusionMatrixDisplay(norm, display_labels=list(class_names))
    disp.plot(values_format=".2f", colorbar=False, xticks_rotation=45)
    disp.ax_.set_title(f"{title} (row-normalised)")
    disp.figure_.tight_layout()
    return disp.figure_


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if hasattr(value, "numpy"):
        return np.asarray(value.numpy()).item()
    return value
