"""One process: parts of ``part_size`` inputs are prepared, classified and committed in order.

Memory is bounded by two parts (their chips and rows), not by the collection: rows leave for
disk when their part is committed, and inputs are listed lazily (``inputs.iter_inputs``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

from ff_keras.annotate import manifest
from ff_keras.annotate.inputs import chunked, iter_inputs
from ff_keras.annotate.stages import Options, finish_part, prepare_part, run_schema


@dataclass
class RunStats:
    """What one invocation did (parts skipped because a previous run committed them included)."""

    inputs: int = 0
    faces: int = 0
    unreadable: int = 0
    no_face: int = 0
    parts_written: int = 0
    parts_skipped: int = 0
    seconds: float = 0.0

    def add(self, entry: dict) -> None:
        self.inputs += entry["inputs"]
        self.faces += entry["faces"]
        self.unreadable += entry["unreadable"]
        self.no_face += entry.get("no_face", 0)

    def commit(self, out, index: int, table, inputs, bar) -> None:  # noqa: ANN001 - Path, pa.Table, tqdm
        """Commits one part (Parquet file, then its manifest line) and counts it; both engines call this."""
        entry = manifest.commit_part(out, index, table, inputs)
        self.add(entry)
        self.parts_written += 1
        bar.update(entry)


def run_settings(inputs: Sequence[str], opts: Options) -> dict:
    """What ``_run.json`` records: the inputs as given and every option that shapes the rows."""
    return {"inputs": [str(i) for i in inputs], **asdict(opts)}


def pending_parts(inputs: Sequence[str], opts: Options, committed: Iterable[int]) -> Iterator[tuple[int, list[str]]]:
    """(index, sources) of every part not yet committed, in input order."""
    done = set(committed)
    for index, sources in enumerate(chunked(iter_inputs(inputs), opts.part_size)):
        if index not in done:
            yield index, sources


class Progress:
    """tqdm over input files with faces/s in the postfix (tqdm itself shows files/s and the ETA)."""

    def __init__(self, inputs: Sequence[str], done: int, enabled: bool):
        from tqdm import tqdm

        total = sum(1 for _ in iter_inputs(inputs)) if enabled else None  # a lazy second listing
        self.bar = tqdm(total=total, initial=done, unit="file", desc="annotate", disable=not enabled,
                        file=sys.stderr, smoothing=0.1)
        self.faces, self.start = 0, time.perf_counter()

    def update(self, entry: dict) -> None:
        self.faces += entry["faces"]
        rate = self.faces / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{rate:.1f} faces/s", refresh=False)
        self.bar.update(entry["inputs"])

    def close(self) -> None:
        self.bar.close()


def run_local(inputs: Sequence[str], out: str, opts: Options, predictor=None, progress: bool = False) -> RunStats:
    """Annotates ``inputs`` into ``out`` (resuming a run already there).

    Args:
        predictor: a loaded ``Predictor``; default ``load_predictor(opts.model)``.
    Raises:
        ValueError: when ``out`` holds a run with other settings.
    """
    from ff_keras.inference.predictor import load_predictor

    t0 = time.perf_counter()
    # The model first: a wrong --model must fail before the folder records this run's settings.
    # No spinning: ONNX Runtime's idle threads would busy-wait on the cores the thread decoding
    # the next part needs (measured on 2 cores: 3-10 % more faces/s without spinning).
    predictor = predictor or load_predictor(opts.model, batch_size=opts.batch_size, spinning=False)
    committed = manifest.start_run(out, run_settings(inputs, opts))
    schema, extras = run_schema(predictor)
    stats = RunStats(parts_skipped=len(committed))
    for entry in committed.values():
        stats.add(entry)
    bar = Progress(inputs, stats.inputs, progress)
    parts = pending_parts(inputs, opts, committed)
    size = predictor.info.image_size

    def prepare_next(pool: ThreadPoolExecutor) -> Future | None:
        item = next(parts, None)
        return None if item is None else pool.submit(prepare_part, *item, opts, size)

    # One part is decoded and detected in a thread while the model runs on the one before
    # (ONNX Runtime, Pillow and the detectors release the GIL): two parts in memory at most.
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="annotate-prepare") as pool:
            pending = prepare_next(pool)
            while pending is not None:
                prepared = pending.result()
                pending = prepare_next(pool)
                table = finish_part(prepared, predictor, schema, extras)
                stats.commit(out, prepared.index, table, prepared.inputs, bar)
    finally:
        bar.close()
    stats.seconds = time.perf_counter() - t0
    return stats
