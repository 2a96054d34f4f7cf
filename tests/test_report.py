"""scripts/evaluate.py end to end: a tiny trained model, real images, every report file.

The fixture trains a tiny ResNet-18 for two real steps on real FairFace/UTKFace crops,
saves ``model.keras`` + ``model_info.json`` and writes small split manifests to a temp
folder, so the test does not depend on the committed manifests.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ff_keras.data import readers as datasets
from ff_keras import labels
from ff_keras.splits import build as splits
from ff_keras.model_info import ModelInfo, load_info, save_info

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
HEADS = ["age", "gender", "race", "race_utk"]


def _manifests(root: Path, folder: Path) -> pd.DataFrame:
    ff, _ = datasets.read_fairface(root, ("fairface_label_val.csv",))
    utk, _ = datasets.read_utkface(root)
    # 48 FairFace rows (half in FairFace's service_test subset) and 24 UTKFace rows.
    ff = pd.concat(
        [ff[ff.service_test].sample(24, random_state=0), ff[~ff.service_test].sample(24, random_state=0)]
    )
    utk = utk.sample(24, random_state=0)
    frames = []
    for df in (ff, utk):
        df = df.reset_index(drop=True)
        df["split"] = np.where(np.arange(len(df)) % 3 == 0, "val", "test")
        frames.append(df)
    manifest = pd.concat(frames, ignore_index=True)
    manifest["group_id"] = np.arange(len(manifest))
    folder.mkdir(parents=True, exist_ok=True)
    for source, df in manifest.groupby("source"):
        df[list(splits.MANIFEST_COLUMNS)].to_csv(folder / f"{source}.csv", index=False)
    return manifest


def _train_tiny(root: Path, manifest: pd.DataFrame, path: Path) -> None:
    import keras

    from ff_keras.config import load_config
    from ff_keras.models.multihead import build_model
    from ff_keras.inference.predictor import load_images

    cfg = load_config(
        None,
        [
            "model.backbone=resnet18",
            "model.width=0.125",
            f"data.image_size={SIZE}",
            "model.embed_dim=16",
            f"model.heads=[{','.join(HEADS)}]",
            "model.age_years_head=false",
        ],
    )
    model = build_model(cfg)
    rows = manifest[manifest.split == "val"]
    x = load_images([root / p for p in rows.rel_path], SIZE)
    y, w = {}, {}
    for head in HEADS:
        col = "age_bin" if head == "age" else head.replace("race_utk", "race")
        ok = np.array([head in labels.SOURCE_HEADS[s] for s in rows.source])
        names = labels.HEAD_CLASSES[head]
        y[head] = np.array([names.index(v) if k else 0 for v, k in zip(rows[col], ok)])
        w[head] = ok.astype("float32")
    sparse = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss={h: sparse for h in HEADS})
    model.fit(x, y, sample_weight=w, batch_size=12, epochs=1, steps_per_epoch=2, verbose=0)
    model.save(path)
    save_info(ModelInfo(image_size=SIZE, backbone="resnet18", heads=HEADS), path.parent)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, data_root):
    tmp = tmp_path_factory.mktemp("eval")
    manifest = _manifests(data_root, tmp / "splits")
    model = tmp / "model" / "model.keras"
    model.parent.mkdir()
    _train_tiny(data_root, manifest, model)
    out = tmp / "report"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "FF_DATA_ROOT": str(data_root)}
    cmd = [
        sys.executable,
        "scripts/evaluate.py",
        "--model",
        str(model),
        "--split",
        "test",
        "--out",
        str(out),
        "--tta",
        "flip",
        "--fit-temperature",
        "--wandb-run-id",
        "evaltest1",
        f"data.manifests_dir={tmp / 'splits'}",
        "evaluation.n_boot=200",
        "evaluation.min_group_n=2",
        f"evaluation.leakage_report={tmp / 'none.json'}",
        "evaluation.identity_cache=null",
    ]
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "out": out,
        "metrics": metrics,
        "manifest": manifest,
        "model": model,
        "tmp": tmp,
        "stdout": proc.stdout,
    }


def _cis(node, path=""):
    """Yields (path, point, ci) for every value that carries a CI in metrics.json."""
    if isinstance(node, dict):
        if isinstance(node.get("ci"), dict):
            for k, ci in node["ci"].items():
                yield f"{path}.{k}", node[k], ci
        elif isinstance(node.get("ci"), list):
            yield path, node.get("accuracy", node.get("value")), node["ci"]
        for k, v in node.items():
            if k != "ci":
                yield from _cis(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _cis(v, f"{path}[{i}]")


def test_all_report_files_exist(evaluated):
    out, m = evaluated["out"], evaluated["metrics"]
    for name in ("metrics.json", "report.md", "report.html"):
        assert (out / name).stat().st_size > 0
    for table in ("fairface", "utkface", "fairface/service_test"):
        slug = table.replace("/", "_")
        for head in m["tables"][table]["heads"]:
            assert (out / "plots" / f"confusion_{slug}_{head}.png").exists()
            assert (out / "plots" / f"groups_{slug}_{head}.png").exists()
    for head in ("age", "gender", "race", "race_utk"):
        assert (out / "plots" / f"reliability_{head}.png").exists()
    md = (out / "report.md").read_text()
    for png in (out / "plots").glob("*.png"):
        assert f"plots/{png.name}" in md
    assert "quoted" in md and "Split leakage check" in md


def test_rows_and_heads_per_source(evaluated):
    m, manifest = evaluated["metrics"], evaluated["manifest"]
    test = manifest[manifest.split == "test"]
    assert m["tables"]["fairface"]["n"] == int((test.source == "fairface").sum())
    assert m["tables"]["utkface"]["n"] == int((test.source == "utkface").sum())
    assert m["tables"]["fairface/service_test"]["n"] == int(
        ((test.source == "fairface") & test.service_test).sum()
    )
    assert set(m["tables"]["fairface"]["heads"]) == {"age", "gender", "race"}
    assert set(m["tables"]["utkface"]["heads"]) == {"age", "gender", "race_utk"}


def test_numbers_are_consistent(evaluated):
    for name, res in evaluated["metrics"]["tables"].items():
        for head, h in res["heads"].items():
            cm = np.asarray(h["confusion"])
            assert cm.shape == (len(labels.HEAD_CLASSES[head]),) * 2 and h["classes"] == list(
                labels.HEAD_CLASSES[head]
            )
            assert cm.sum() == res["n"] == h["n"], (name, head)
            assert math.isclose(h["accuracy"], np.trace(cm) / cm.sum()), (name, head)
        for grouping, per_head in res["groups"].items():
            for head, g in per_head.items():
                assert sum(r["n"] for r in g["groups"]) == res["n"], (name, grouping, head)
    points = list(_cis(evaluated["metrics"]))
    assert len(points) > 100
    for path, point, ci in points:
        if point is None:  # undefined statistic (a ratio of two zero accuracies): no interval either
            assert ci == [None, None], (path, ci)
            continue
        assert ci[0] - 1e-12 <= point <= ci[1] + 1e-12, (path, point, ci)


def test_temperature_stored_and_calibration_reported(evaluated):
    info = load_info(evaluated["model"])
    cal = evaluated["metrics"]["calibration"]["heads"]
    assert set(info.temperature) == set(HEADS)
    for head in HEADS:
        assert info.temperature[head] > 0
        assert math.isclose(cal[head]["temperature"], info.temperature[head])
        assert 0 <= cal[head]["ece_after"] <= 1 and 0 <= cal[head]["ece_before"] <= 1


def test_tta_leakage_comparison_and_wandb(evaluated):
    m, tmp = evaluated["metrics"], evaluated["tmp"]
    assert m["tta"]["mode"] == "flip" and m["tta"]["effect"]
    for r in m["tta"]["effect"]:
        assert math.isclose(r["delta"], r["with"] - r["without"], abs_tol=1e-12)
    assert m["leakage"]["groups_spanning_splits"] == 0 and m["leakage"]["paths_in_two_splits"] == 0
    assert all(
        r["kind"] == "quoted" and r["source"] and r["ours_kind"] == "measured" for r in m["comparison"]
    )
    assert any(r["ours"] is not None for r in m["comparison"])
    runs = list((tmp / "report").rglob("run-evaltest1.wandb"))  # no wandb.dir: beside the report
    assert runs, "no offline W&B run file"
    from wandb_log import read_wandb_history

    _, history = read_wandb_history(runs[0])
    logged = {k for row in history for k in row}
    assert any(k.startswith("eval_test/metrics") for k in logged)
    assert any(k.startswith("eval_test/plots/confusion_fairface_race") for k in logged)


def test_onnx_export_gives_the_same_report_numbers(evaluated, data_root):
    """One code path: the ONNX export (temperature baked in) scores exactly like the checkpoint."""
    from ff_keras.evaluation import run as eval_pipeline
    from ff_keras.config import load_config
    from ff_keras.inference.export import export_model, load_checkpoint
    from ff_keras.inference.predictor import load_images

    tmp = evaluated["tmp"]
    model, info = load_checkpoint(evaluated["model"])
    images = load_images([data_root / p for p in evaluated["manifest"].rel_path[:4]], SIZE)
    export_model(model, info, tmp / "export", images, formats=("onnx",))
    cfg = load_config(
        None,
        [
            f"data.manifests_dir={tmp / 'splits'}",
            "evaluation.n_boot=20",
            f"evaluation.leakage_report={tmp / 'x'}",
            "evaluation.identity_cache=null",
        ],
    )
    runs = {
        p.suffix: eval_pipeline.run_evaluation(p, "test", cfg)
        for p in (evaluated["model"], tmp / "export" / "model.onnx")
    }
    keras_run, onnx_run = runs[".keras"], runs[".onnx"]
    for head in ("age", "gender", "race"):
        a, b = keras_run["tables"]["fairface"]["heads"][head], onnx_run["tables"]["fairface"]["heads"][head]
        assert a["confusion"] == b["confusion"], head
        ca, cb = keras_run["calibration"]["heads"][head], onnx_run["calibration"]["heads"][head]
        assert math.isclose(ca["nll_before"], cb["nll_before"], rel_tol=1e-3), head
    # The export keeps only the contract heads, so UTKFace's race head is reported as skipped.
    assert "race_utk" in onnx_run["tables"]["utkface"]["skipped"]


def test_exported_model_reports_age_mae(tmp_path, data_root):
    """An ONNX export carries ``age_years``, so its evaluation reports UTKFace's MAE, equal to
    the checkpoint's."""
    from export_helpers import tiny_checkpoint

    from ff_keras.evaluation import run as eval_pipeline
    from ff_keras.config import load_config
    from ff_keras.inference.export import export_model, load_checkpoint
    from ff_keras.inference.predictor import load_images

    manifest = _manifests(data_root, tmp_path / "splits")
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    model, info = load_checkpoint(ckpt)
    images = load_images([data_root / p for p in manifest.rel_path[:4]], SIZE)
    export_model(model, info, tmp_path / "export", images, formats=("onnx",))
    cfg = load_config(None, [f"data.manifests_dir={tmp_path / 'splits'}", "evaluation.n_boot=20",
                             f"evaluation.leakage_report={tmp_path / 'x'}", "evaluation.identity_cache=null"])
    mae = {
        p.suffix: eval_pipeline.run_evaluation(p, "test", cfg)["tables"]["utkface"]["age_years"]
        for p in (ckpt, tmp_path / "export" / "model.onnx")
    }
    assert mae[".onnx"]["n"] == mae[".keras"]["n"] > 0
    assert math.isclose(mae[".onnx"]["mae"], mae[".keras"]["mae"], rel_tol=1e-4)
