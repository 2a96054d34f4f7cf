"""tf.distribute training on CPU: 2 logical devices (mirrored), 2 local workers (multi_worker),
mixed precision, and the strategy/chief/sharding helpers."""

from __future__ import annotations

import json
import math
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from train_helpers import tiny_tables

from ff_keras.data import pipeline as data
from ff_keras.training import distribute
from ff_keras.config import load_config
from studies.multiworker import COMPARE, LAYOUTS, SMOKE, compare
from ff_keras.training.run import train

# Same 8 rows, float32, no dropout/augmentation, frozen BatchNorm: only the summation order
# differs between layouts, so losses agree to float32 rounding. (Measured: bit-identical;
# without the 1/num_replicas gradient scaling the 2nd-step loss moves by ~6e-2.)
LOSS_ATOL = 1e-5


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return compare(tmp_path_factory.mktemp("layouts"), timeout=240)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layouts_agree_with_single_device_run(layouts, layout):
    run, base = layouts[layout], layouts["none"]
    losses = run["step_losses"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    # First step: same batch and weights. Second: also checks gradients are summed / replicas.
    np.testing.assert_allclose(losses, base["step_losses"], rtol=0, atol=LOSS_ATOL)
    replicas = 1 if layout == "none" else 2
    assert run["distribute"] == {"strategy": layout, "replicas": replicas, "global_batch": 8,
                                 "per_replica_batch": 8 // replicas}
    # One copy of everything: the non-chief worker's folder is gone, one best model remains.
    assert run["saved_models"] == ["best/model.keras"]
    assert run["worker_dirs"] == []


def test_compare_config_switches_off_layout_dependent_randomness():
    cfg = load_config(SMOKE, COMPARE)
    assert cfg.model.dropout == 0 and not cfg.augment.flip and cfg.augment.hue == 0
    assert cfg.data.limit_train == cfg.data.batch_size  # every step sees all rows, in any order
    assert not cfg.train.cache_frozen_embeddings and cfg.train.optimizer == "sgd"


def test_strategy_errors_name_the_problem(monkeypatch):
    with pytest.raises(ValueError, match="unknown train.distribute 'horovod'"):
        distribute.get_strategy("horovod")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        distribute.get_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        distribute.tf_config()
    with pytest.raises(ValueError, match="does not split over 3 replicas"):
        distribute.per_replica_batch(8, _Replicas(3))


class _Replicas:
    """Stands in for a strategy's replica count only (no 3-replica strategy fits here)."""

    def __init__(self, n: int):
        self.num_replicas_in_sync = n


def test_chief_and_worker_folders_follow_tf_config(monkeypatch, tmp_path):
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    for index, chief in ((0, True), (1, False)):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        assert distribute.is_chief() is chief
    with_chief = {**cluster, "chief": ["127.0.0.1:3"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}}))
    assert not distribute.is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    # worker_dir only redirects non-chiefs of a multi-worker strategy; any other is the chief.
    assert distribute.worker_dir(tmp_path, tf.distribute.get_strategy()) == tmp_path
    configs = [json.loads(c) for c in distribute.local_tf_configs(2)]
    assert [c["task"]["index"] for c in configs] == [0, 1]
    assert len(set(configs[0]["cluster"]["worker"])) == 2


def test_input_pipeline_is_data_sharded(data_root):
    train_t, _ = tiny_tables(data_root, n_train=8, n_val=2)
    cfg = load_config(SMOKE)
    ds = data.make_dataset(train_t, data_root, cfg, training=True)
    assert ds.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_and_exports_float32_onnx(tmp_path, data_root, policy):
    import onnx

    from ff_keras.inference.export import export_model, load_checkpoint
    from ff_keras.inference.predictor import load_images

    tables = tiny_tables(data_root, n_train=8, n_val=8)
    cfg = load_config(SMOKE, [
        f"output_dir={tmp_path}", "train.run_id=mp", f"train.mixed_precision={policy}",
        "train.stages=[{epochs: 1, lr: 0.01, freeze_backbone: false}]", "train.steps_per_epoch=1",
        "augment.jit_compile=false", "train.verbose=0"])
    result = train(cfg, argv=["mp"], tables=tables)
    assert math.isfinite(result.history["loss"][0]) and math.isfinite(result.val_metrics["loss"])
    model, info = load_checkpoint(result.model_path)
    compute = {layer.dtype_policy.compute_dtype for layer in model.layers}
    assert policy.split("_")[1] in compute  # the backbone really ran in half precision
    out = model(np.zeros((2, 32, 32, 3), np.float32), training=False)
    dtypes = {h: keras.backend.standardize_dtype(v.dtype) for h, v in out.items()}
    assert dtypes == dict.fromkeys(out, "float32")  # heads (and so losses) stay float32
    images = load_images(sorted((data_root / "fairface" / "val").glob("*.jpg"))[:8], info.image_size)
    report = export_model(model, info, tmp_path / "export", images, formats=("onnx",))  # raises ParityError
    proto = onnx.load(str(tmp_path / "export" / "model.onnx"))
    float32 = onnx.TensorProto.FLOAT
    assert {o.type.tensor_type.elem_type for o in [*proto.graph.input, *proto.graph.output]} == {float32}
    assert all(init.data_type != onnx.TensorProto.FLOAT16 for init in proto.graph.initializer)
    assert report.parity["onnx"]
    assert keras.mixed_precision.global_policy().name == "float32"


def test_two_serving_workers_each_answer_health_probes(tmp_path, data_root):
    import asyncio

    import httpx
    from export_helpers import tiny_export

    from studies.loadtest import running_server

    model = tiny_export(tmp_path, data_root, n_images=8) / "model.onnx"

    async def probe_pids(url: str) -> set[int]:
        async def one() -> int:  # a fresh connection per probe, as a load balancer's checks
            async with httpx.AsyncClient() as client:
                response = await client.get(f"{url}/health")
                response.raise_for_status()
                return response.json()["pid"]

        return set(await asyncio.gather(*[one() for _ in range(40)]))

    with running_server(model, ["--workers", "2"], log_path=tmp_path / "serve.log") as url:
        # running_server returns once one worker is healthy; the other may still be loading.
        seen: set[int] = set()
        deadline = time.monotonic() + 90
        while len(seen) < 2 and time.monotonic() < deadline:
            seen |= asyncio.run(probe_pids(url))
        assert len(seen) == 2  # two processes, each with its own ORT session and batcher
