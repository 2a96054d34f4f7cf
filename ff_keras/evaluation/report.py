"""Evaluation report: ``metrics.json``, PNG plots and one document rendered as Markdown and HTML.

The document is a list of blocks (heading, paragraph, table, image) rendered twice, so
the Markdown and HTML reports can never disagree. Figures come from ``plots``.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ff_keras.evaluation import baselines
from ff_keras.evaluation.plots import plot_confusion, plot_groups, plot_reliability

Block = tuple[str, Any]
_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}img{max-width:100%}"
)
_QUOTED_NOTE = (
    "Quoted numbers are copied from the cited source, on that source's own test data; ours are "
    "measured on our held-out split. 'comparable' says whether the metric and population match."
)


# === Rendering ===


def fmt(value: Any, ci: Sequence[float] | None = None) -> str:
    """``0.912 [0.901, 0.923]``; NaN / None as ``–``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    if ci is not None and not any(math.isnan(c) for c in ci):
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for kind, body in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + body)
        elif kind == "p":
            out.append(body)
        elif kind == "img":
            out.append(f"![{Path(body).stem}]({body})")
        elif kind == "table":
            header, rows = body
            cells = [header, ["---"] * len(header), *rows]
            out.append(
                "\n".join("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in cells)
            )
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[Block], title: str) -> str:
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
    ]
    for kind, body in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{html.escape(body)}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{html.escape(body)}</p>")
        elif kind == "img":
            out.append(f"<img src='{html.escape(body)}' alt='{html.escape(Path(body).stem)}'>")
        elif kind == "table":
            header, rows = body
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
            trs = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
            )
            out.append(f"<table><tr>{head}</tr>{trs}</table>")
    return "\n".join(out) + "</body></html>\n"


# === Document ===


def _img(path: Path, out_dir: Path) -> Block:
    return ("img", path.relative_to(out_dir).as_posix())


def _head_rows(res: dict) -> list[list]:
    rows = []
    for head, m in res["heads"].items():
        for metric in ("accuracy", "balanced_accuracy", "macro_f1", "off_by_one"):
            if metric in m:
                rows.append([head, metric, fmt(m[metric], m["ci"][metric]), m["n"]])
    if "age_years" in res:
        years = res["age_years"]
        rows.append(["age_years", "MAE (years)", fmt(years["mae"], years["ci"]["mae"]), years["n"]])
    return rows


def _fairness_summary(res: dict) -> list[list]:
    summary = []
    for grouping, per_head in res["groups"].items():
        for head, g in per_head.items():
            if "gap" in g:
                summary.append([grouping, head, g["worst"]["group"], fmt(g["worst"]["accuracy"], g["worst"]["ci"]),
                                fmt(g["gap"]["value"], g["gap"]["ci"]), fmt(g["ratio"]["value"], g["ratio"]["ci"])])
            else:
                summary.append([grouping, head, g.get("note", ""), "–", "–", "–"])
    return summary


def _group_detail(res: dict) -> list[list]:
    """One row per (grouping, group) with each head's accuracy [CI]."""
    heads = list(res["heads"])
    detail = {}
    for grouping, per_head in res["groups"].items():
        for head in heads:
            for r in per_head[head]["groups"]:
                row = detail.setdefault((grouping, r["group"]), [grouping, r["group"], r["n"]] + ["–"] * len(heads))
                row[3 + heads.index(head)] = fmt(r["accuracy"], r["ci"])
    return list(detail.values())


def _table_blocks(name: str, res: dict, out_dir: Path) -> list[Block]:
    """One evaluated table: head metrics, fairness summary and detail, confusion and group plots."""
    blocks: list[Block] = [("h2", f"{name} (n = {res['n']})"),
                           ("table", (["head", "metric", "value [95 % CI]", "n"], _head_rows(res)))]
    if res.get("skipped"):
        blocks.append(("p", f"Not evaluated (model has no such head): {', '.join(res['skipped'])}."))
    heads = list(res["heads"])
    blocks += [
        ("h3", "Fairness slices (accuracy; groups with n ≥ min_group_n)"),
        ("table", (["grouping", "head", "worst group", "worst acc [CI]", "max gap [CI]", "ratio [CI]"],
                   _fairness_summary(res))),
        ("table", (["grouping", "group", "n", *[f"{h} acc [CI]" for h in heads]], _group_detail(res))),
    ]
    slug, plots = name.replace("/", "_"), out_dir / "plots"
    for head, m in res["heads"].items():
        confusion = plot_confusion(m["confusion"], m["classes"], f"{name}: {head}",
                                   plots / f"confusion_{slug}_{head}.png")
        groups = {grouping: per_head[head] for grouping, per_head in res["groups"].items()}
        by_group = plot_groups(groups, f"{name}: {head} accuracy by group", plots / f"groups_{slug}_{head}.png")
        blocks += [_img(confusion, out_dir), _img(by_group, out_dir)]
    return blocks


def _intro(metrics: dict) -> str:
    info, settings = metrics.get("model_info", {}), metrics["settings"]
    return (
        f"Model {metrics['model']} (backbone {info.get('backbone', '?')}, {info.get('image_size', '?')} px). "
        f"Test-time augmentation: {metrics.get('tta', {}).get('mode') or 'none'}. "
        f"CIs: {settings['level']:.0%} percentile bootstrap, {settings['n_boot']} resamples, seed {settings['seed']} "
        "(widened to contain the point estimate where the percentile interval of a min/max statistic "
        "excludes it). Every figure is measured, except the 'quoted' values of the comparison table."
    )


def _leakage_blocks(leak: dict | None) -> list[Block]:
    if leak is None:
        return []
    return [("h2", "Split leakage check"), ("p", leak.get("summary", "")),
            ("table", (["item", "value"], [[k, v] for k, v in leak.items() if k != "summary"]))]


def _calibration_blocks(cal: dict, out_dir: Path) -> list[Block]:
    if not cal:
        return []
    rows = [[h, fmt(c["temperature"]), fmt(c["nll_before"]), fmt(c["nll_after"]), fmt(c["ece_before"]),
             fmt(c["ece_after"]), c["n"]] for h, c in cal["heads"].items()]
    blocks: list[Block] = [
        ("h2", "Calibration (temperature scaling fitted on val)"), ("p", cal.get("note", "")),
        ("table", (["head", "temperature", "NLL before", "NLL after", "ECE before", "ECE after", "n"], rows)),
    ]
    for head, c in cal["heads"].items():
        path = plot_reliability(c, f"reliability: {head}", out_dir / "plots" / f"reliability_{head}.png")
        blocks.append(_img(path, out_dir))
    return blocks


def _tta_blocks(tta: dict) -> list[Block]:
    if not tta.get("effect"):
        return []
    rows = [[r["table"], r["head"], r["metric"], fmt(r["without"]), fmt(r["with"]), f"{r['delta']:+.4f}"]
            for r in tta["effect"]]
    return [("h2", "Test-time augmentation effect (horizontal-flip averaging)"),
            ("table", (["table", "head", "metric", "without TTA", "with TTA", "delta"], rows))]


def _comparison_blocks(comparison: list[dict]) -> list[Block]:
    if not comparison:
        return []
    header = ["model", "metric", "value", "kind", "our value (measured)", "comparable", "source / note"]
    rows = [[r["model"], r["metric"], fmt(r["value"]), "quoted", fmt(r["ours"]), r["comparable"], r["source"]]
            for r in comparison]
    return [("h2", "Comparison with published figures"), ("p", _QUOTED_NOTE), ("table", (header, rows))]


def build_blocks(metrics: dict, out_dir: Path) -> list[Block]:
    """The whole report as blocks; writes the plots it references under ``out_dir/plots``."""
    blocks: list[Block] = [("h1", f"Evaluation: {Path(metrics['model']).name} on {metrics['split']}"),
                           ("p", _intro(metrics))]
    blocks += _leakage_blocks(metrics.get("leakage"))
    for name, res in metrics["tables"].items():
        blocks += _table_blocks(name, res, out_dir)
    blocks += _calibration_blocks(metrics.get("calibration", {}), out_dir)
    blocks += _tta_blocks(metrics.get("tta", {}))
    blocks += _comparison_blocks(metrics["comparison"] if "comparison" in metrics else baselines.compare(metrics))
    return blocks


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_report(metrics: dict, out_dir: str | Path) -> dict[str, Path]:
    """Writes ``metrics.json``, ``report.md``, ``report.html`` and ``plots/*.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {**metrics, "comparison": baselines.compare(metrics)}
    blocks = build_blocks(metrics, out_dir)
    paths = {
        "metrics": out_dir / "metrics.json",
        "markdown": out_dir / "report.md",
        "html": out_dir / "report.html",
    }
    paths["metrics"].write_text(json.dumps(_jsonable(metrics), indent=1))
    paths["markdown"].write_text(to_markdown(blocks))
    paths["html"].write_text(to_html(blocks, blocks[0][1]))
    return paths
