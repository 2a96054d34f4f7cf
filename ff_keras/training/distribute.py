"""tf.distribute for training: strategy from ``train.distribute``, chief-only outputs, sharding.

* ``none``          the default (no-op) strategy: one device, same code path.
* ``mirrored``      ``MirroredStrategy`` over the local GPUs; without GPUs, over the logical
                    CPU devices made by ``split_cpu`` (``train.logical_devices``: tests/smoke).
* ``multi_worker``  ``MultiWorkerMirroredStrategy`` from the standard ``TF_CONFIG`` variable;
                    worker 0 (or the ``chief`` task) is the chief.

``data.batch_size`` is the GLOBAL batch: Keras' ``fit`` hands the dataset to
``strategy.experimental_distribute_dataset``, which re-batches every global batch into
``batch_size / num_replicas`` rows per replica (``per_replica_batch`` checks it divides).
Strategies must be created before the TF runtime starts (logical devices, collectives), so
``train`` creates it first. Every worker runs the same code; only the chief writes into the
run folder, the others write into a throw-away folder of their own (``worker_dir``), as the
TF multi-worker guide recommends: saving may need every worker, but only one copy is kept.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf

STRATEGIES = ("none", "mirrored", "multi_worker")


def split_cpu(n: int) -> list[str]:
    """Splits the (first) physical CPU into ``n`` logical devices; returns their names.

    Must run before the TF runtime is initialised; a second call with the same ``n`` is a
    no-op, any other use after start-up raises naming the problem.
    """
    cpus = tf.config.list_physical_devices("CPU")
    have = tf.config.get_logical_device_configuration(cpus[0])
    if n > 1 and not (have and len(have) == n):
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
        except RuntimeError as err:
            raise RuntimeError(
                f"train.logical_devices={n} needs a fresh process (TF is already initialised): {err}") from err
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def tf_config() -> dict:
    """The parsed ``TF_CONFIG`` (``{}`` when unset); malformed JSON raises, quoting it."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON ({err}): {raw!r}") from err


def get_strategy(name: str, logical_devices: int = 0) -> tf.distribute.Strategy:
    """Strategy for ``train.distribute``; see the module docstring."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown train.distribute {name!r}; expected one of {STRATEGIES}")
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        cpus = split_cpu(logical_devices) if logical_devices > 1 else []
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        # MirroredStrategy() alone would use only /cpu:0 on a GPU-less host.
        return tf.distribute.MirroredStrategy(gpus or cpus or None)
    cluster = tf_config().get("cluster", {})
    if not cluster:
        raise ValueError("train.distribute=multi_worker needs TF_CONFIG with a 'cluster' "
                         "(see docs/scaling.md or studies/multiworker_smoke.py)")
    return tf.distribute.MultiWorkerMirroredStrategy()


def task() -> tuple[str, int]:
    """(task type, index) of this process from ``TF_CONFIG``; ``("worker", 0)`` when unset."""
    t = tf_config().get("task", {})
    return t.get("type", "worker"), int(t.get("index", 0))


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """True on the process that owns the outputs: single-process runs, the ``chief`` task, or
    worker 0 of a cluster without a chief task."""
    if strategy is not None and not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    kind, index = task()
    has_chief = "chief" in tf_config().get("cluster", {})
    return kind == "chief" or (kind == "worker" and index == 0 and not has_chief)


def worker_dir(run_dir: Path, strategy: tf.distribute.Strategy) -> Path:
    """``run_dir`` on the chief; ``run_dir/workertemp_<task><index>`` elsewhere (the TF
    multi-worker guide's layout): each worker keeps its own BackupAndRestore state there,
    and ``train`` deletes it when the run finishes, so one copy of everything remains."""
    if is_chief(strategy):
        return run_dir
    kind, index = task()
    return run_dir / f"workertemp_{kind}{index}"


def per_replica_batch(global_batch: int, strategy: tf.distribute.Strategy) -> int:
    """Rows each replica sees per step; the global batch must split evenly."""
    n = strategy.num_replicas_in_sync
    if global_batch % n:
        raise ValueError(f"data.batch_size={global_batch} (global) does not split over {n} replicas")
    return global_batch // n


# === Local cluster (multi-worker smoke runs on one machine) ===


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (all held open while picking)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def local_tf_configs(n: int) -> list[str]:
    """One ``TF_CONFIG`` per worker of an ``n``-worker cluster on 127.0.0.1 (worker 0 = chief)."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(n)]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(n)]


def launch_local_workers(argv: Sequence[str], n: int, timeout: float, log_dir: Path) -> list[Path]:
    """Runs ``argv`` as ``n`` local worker processes with their TF_CONFIG; returns the log paths.

    Raises ``RuntimeError`` (naming the worker and quoting its log tail) when one fails or the
    cluster runs past ``timeout`` seconds; every worker is killed then, so nothing hangs.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    procs, logs = [], []
    for i, tf_conf in enumerate(local_tf_configs(n)):
        logs.append(log_dir / f"worker{i}.log")
        env = {**os.environ, "TF_CONFIG": tf_conf, "TF_CPP_MIN_LOG_LEVEL": "2"}
        with open(logs[-1], "w") as out:
            procs.append(subprocess.Popen(list(argv), env=env, stdout=out, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    try:
        for i, p in enumerate(procs):
            try:
                rc = p.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"worker {i} still running after {timeout:.0f}s:\n{_tail(logs[i])}") from None
            if rc != 0:
                raise RuntimeError(f"worker {i} exited with {rc}:\n{_tail(logs[i])}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return logs


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:]
