"""The same stages on Ray Data, for a cluster (or all cores of one machine).

    parts (driver) -> prepare_part (CPU tasks: read, decode, detect, align)
                   -> finish_part (actors, each holding one ONNX Runtime session)
                   -> committed by the driver (``manifest.commit_part``), same schema and files

A Ray row is one part, so every part's chips reach the model in the same chunks as in the
local engine and the rows are identical. The driver commits parts as they arrive (in any order;
parts are read back by index), so a killed Ray run resumes like a local one, and only the
driver needs to see the output folder: the workers need the inputs and the model file.
"""

from __future__ import annotations

import io
import pickle
import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from ff_keras.annotate import manifest
from ff_keras.annotate.engine_local import Progress, RunStats, pending_parts, run_settings
from ff_keras.annotate.stages import Options, Prepared, finish_part, prepare_part, run_schema

MODEL_ACTOR_MEMORY = 512 * 2**20  # bytes reserved per model actor (the released model's session: ~300 MB)


def _prepare(row: dict, opts: Options, size: int) -> dict:
    prepared = prepare_part(int(row["part"]), list(row["sources"]), opts, size)
    # Pickled: a part's chips are one ndarray whose face count varies from part to part.
    return {"part": prepared.index, "prepared": pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL)}


class ModelActor:
    """Holds one predictor (one ONNX Runtime session) for its lifetime; classifies whole parts."""

    def __init__(self, opts: Options, threads: int | None):
        from ff_keras.inference.predictor import load_predictor

        self.predictor = load_predictor(opts.model, threads=threads, batch_size=opts.batch_size)
        self.schema, self.extras = run_schema(self.predictor)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        tables = []
        for blob in batch["prepared"]:
            prepared: Prepared = pickle.loads(blob)
            table = finish_part(prepared, self.predictor, self.schema, self.extras)
            sink = io.BytesIO()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            tables.append(sink.getvalue())
        return {"part": list(batch["part"]), "table": tables,
                "inputs": [pickle.loads(b).inputs for b in batch["prepared"]]}


def run_ray(inputs: Sequence[str], out: str, opts: Options, address: str | None = None, model_actors: int = 1,
            model_threads: int | None = None, progress: bool = False) -> RunStats:
    """Annotates ``inputs`` into ``out`` on Ray (``ray.init(address)``; local when ``address`` is None
    and Ray is not initialised yet), resuming a run already there.

    Args:
        model_actors: how many model actors (ONNX Runtime sessions) run at once.
        model_threads: intra-op threads per session (None = ONNX Runtime's default, all cores).
    """
    import ray

    from ff_keras.inference.predictor import load_predictor

    t0 = time.perf_counter()
    # The driver checks the model once (clear error here, not in a worker) and knows its size.
    predictor = load_predictor(opts.model, batch_size=opts.batch_size)
    size = predictor.info.image_size
    del predictor
    committed = manifest.start_run(out, run_settings(inputs, opts))
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts files and faces
    stats = RunStats(parts_skipped=len(committed))
    for entry in committed.values():
        stats.add(entry)
    items = [{"part": i, "sources": s} for i, s in pending_parts(inputs, opts, committed)]
    bar = Progress(inputs, stats.inputs, progress)
    try:
        if items:
            ds = ray.data.from_items(items, override_num_blocks=len(items))
            ds = ds.map(_prepare, fn_kwargs={"opts": opts, "size": size}, num_cpus=1)
            # The actors' memory reservation (one ONNX Runtime session each) also keeps Ray from
            # fusing decode/detect into them: detection then scales with the cluster's CPUs,
            # not with the number of model actors.
            ds = ds.map_batches(ModelActor, fn_constructor_kwargs={"opts": opts, "threads": model_threads},
                                batch_size=1, compute=ray.data.ActorPoolStrategy(size=model_actors), num_cpus=1,
                                memory=MODEL_ACTOR_MEMORY)
            for row in ds.iter_rows():
                table = pa.ipc.open_stream(row["table"]).read_all()
                stats.commit(out, int(row["part"]), table, int(row["inputs"]), bar)
    finally:
        bar.close()
    stats.seconds = time.perf_counter() - t0
    return stats
