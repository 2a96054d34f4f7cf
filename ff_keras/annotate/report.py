"""``audit DIR``: reads a run's face rows and writes the composition report beside them.

    DIR/audit.json   every number
    DIR/audit.md     one table per grouping: class | argmax | prob_sum | adjusted (% with CI)
    DIR/audit.html   the same tables and the bar chart, one self-contained page
    DIR/audit.png    bar chart: the three estimators side by side, with CI whiskers
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from ff_keras.annotate import audit, manifest
from ff_keras.annotate.schema import schema_classes

NAMES = {"argmax": "argmax count", "prob_sum": "summed probabilities", "adjusted": "adjusted count (val confusion)"}


def face_probs(out: str | Path) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """{head: [faces, k]} probabilities of the run's face rows, and the class names."""
    table = manifest.read_output(out)
    classes = schema_classes(table.schema)
    faces = table.filter(pc.equal(table.column("status"), "face"))
    probs = {}
    for head, names in classes.items():
        flat = faces.column(f"{head}_probs").combine_chunks().flatten().to_numpy()
        probs[head] = flat.reshape(faces.num_rows, len(names)).astype(np.float64)
    return probs, classes


def run_audit(out: str | Path, model: str | None = None, n_boot: int = 200, seed: int = 0,
              level: float = 0.95) -> dict:
    """Audits the run in ``out`` and writes the report files; returns the ``audit.json`` document.

    Args:
        model: the model whose sidecar holds the val confusion (default: the run's own model).
    """
    from ff_keras.annotate.confusion import confusion_rates
    from ff_keras.model_info import load_info

    out = Path(out)
    model = model or json.loads((out / manifest.RUN_FILE).read_text())["model"]
    info = load_info(model)
    probs, classes = face_probs(out)
    if not len(next(iter(probs.values()))):
        raise ValueError(f"{out}: the run has no face rows to audit")
    rates = {h: confusion_rates(info, h) for h in probs}
    doc = {"run": str(out), "model": str(model), "level": level, "n_boot": n_boot, "seed": seed,
           "confusion_source": {k: v for k, v in info.val_confusion.items() if k != "heads"},
           "groupings": audit.audit_tables(probs, classes, rates, n_boot, seed, level)}
    (out / "audit.json").write_text(json.dumps(doc, indent=2))
    chart = plot(doc, out / "audit.png")
    (out / "audit.md").write_text(markdown(doc))
    (out / "audit.html").write_text(to_html(doc, chart))
    return doc


def _cell(d: dict, i: int) -> str:
    return f"{100 * d['share'][i]:.1f} % [{100 * d['low'][i]:.1f}, {100 * d['high'][i]:.1f}]"


def _rows(doc: dict):
    for name, g in doc["groupings"].items():
        est = [e for e in audit.ESTIMATORS if e in g]
        yield name, g, est, [[c] + [_cell(g[e], i) for e in est] for i, c in enumerate(g["classes"])]


def markdown(doc: dict) -> str:
    lines = [f"# Composition audit of {doc['run']}", "",
             f"Model {doc['model']}. Shares of faces with {round(100 * doc['level'])} % bootstrap CIs "
             f"({doc['n_boot']} resamples of faces). {NAMES['adjusted']}: argmax counts corrected with the "
             f"confusion matrix measured on {doc['confusion_source'].get('rows', '?')} "
             f"{doc['confusion_source'].get('split', 'val')} rows.", ""]
    for name, g, est, rows in _rows(doc):
        lines += [f"## {name} ({g['n']} faces)", "", "| class | " + " | ".join(NAMES[e] for e in est) + " |",
                  "|---" * (len(est) + 1) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    return "\n".join(lines)


def to_html(doc: dict, chart: Path) -> str:
    img = base64.b64encode(chart.read_bytes()).decode()
    parts = [f"<!doctype html><meta charset=utf-8><title>Composition audit</title><h1>Composition audit of "
             f"{html.escape(doc['run'])}</h1><p>Model {html.escape(doc['model'])}.</p>",
             f'<img alt="composition by estimator" src="data:image/png;base64,{img}" style="max-width:100%">']
    for name, g, est, rows in _rows(doc):
        head = "".join(f"<th>{html.escape(NAMES[e])}</th>" for e in est)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        parts.append(f"<h2>{html.escape(name)} ({g['n']} faces)</h2><table border=1 cellpadding=4>"
                     f"<tr><th>class</th>{head}</tr>{body}</table>")
    return "\n".join(parts)


def plot(doc: dict, path: Path) -> Path:
    """Grouped bars: one panel per grouping, one bar per estimator and class, CI whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = doc["groupings"]
    fig, axes = plt.subplots(len(groups), 1, figsize=(11, 3.2 * len(groups)), squeeze=False)
    for ax, (name, g) in zip(axes[:, 0], groups.items()):
        est = [e for e in audit.ESTIMATORS if e in g]
        x = np.arange(len(g["classes"]))
        width = 0.8 / len(est)
        for j, e in enumerate(est):
            s, lo, hi = (np.array(g[e][k]) * 100 for k in ("share", "low", "high"))
            ax.bar(x + (j - (len(est) - 1) / 2) * width, s, width, yerr=[s - lo, hi - s], capsize=2, label=NAMES[e])
        ax.set_xticks(x, g["classes"], rotation=30 if len(x) > 7 else 0, ha="right" if len(x) > 7 else "center",
                      fontsize=8)
        ax.set_ylabel("% of faces")
        ax.set_title(f"{name} ({g['n']} faces)")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
