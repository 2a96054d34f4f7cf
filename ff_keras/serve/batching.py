"""Micro-batching: concurrent requests share one ONNX Runtime call.

Each request puts its images on an asyncio queue and awaits a future. One worker task takes
the first waiting item, then keeps gathering until ``max_batch`` images are collected or
``max_wait_ms`` has passed, runs the model once in a thread (so the event loop keeps
accepting requests) and hands each request its rows back. Under load one large batch costs
far less than many single-image calls; when idle, a request waits at most ``max_wait_ms``.

A request with more than ``max_batch`` images (a group photo, a batch upload) is split into
chunks of ``max_batch`` that it queues one at a time, so other requests' images join the next
model calls instead of waiting behind one call of thousands of faces.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

PredictFn = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass
class BatchStats:
    """What the batcher has done; exposed by ``/metadata`` and ``/health``."""

    batches: int = 0
    images: int = 0
    max_batch_seen: int = 0
    sizes: Counter = field(default_factory=Counter)

    def record(self, n: int) -> None:
        self.batches += 1
        self.images += n
        self.max_batch_seen = max(self.max_batch_seen, n)
        self.sizes[n] += 1

    def as_dict(self) -> dict:
        return {
            "batches": self.batches,
            "images": self.images,
            "max_batch_seen": self.max_batch_seen,
            "mean_batch": self.images / self.batches if self.batches else 0.0,
            "batch_size_histogram": {str(k): v for k, v in sorted(self.sizes.items())},
        }


@dataclass
class _Item:
    images: np.ndarray
    future: asyncio.Future


class MicroBatcher:
    """Gathers images from concurrent callers into batches of at most ``max_batch``.

    With ``enabled=False`` every call runs on its own (the baseline the benchmark compares to).
    """

    def __init__(self, predict: PredictFn, max_batch: int = 32, max_wait_ms: float = 5.0, enabled: bool = True):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        self.predict_fn = predict
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.enabled = enabled
        self.stats = BatchStats()
        # One model thread: ORT parallelises inside a call; two concurrent calls would only
        # fight over the same cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ff-infer")
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        """Whether requests can be answered: the gathering task is alive (always, unbatched)."""
        if not self.enabled:
            return not self._executor._shutdown
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.enabled and self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._worker(), name="ff-micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Probabilities per head for ``images`` [k, H, W, 3]; may share model calls with others.
        At most ``max_batch`` images per call: larger requests queue their chunks in turn."""
        if len(images) <= self.max_batch:
            return await self._predict_chunk(images)
        parts = [await self._predict_chunk(images[i : i + self.max_batch])
                 for i in range(0, len(images), self.max_batch)]
        return {head: np.concatenate([part[head] for part in parts]) for head in parts[0]}

    async def _predict_chunk(self, images: np.ndarray) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        if not self.enabled:
            self.stats.record(len(images))
            return await loop.run_in_executor(self._executor, self.predict_fn, images)
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not awaited (app lifespan not running)")
        future = loop.create_future()
        await self._queue.put(_Item(images, future))
        return await future

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        pending: _Item | None = None
        while True:
            first = pending or await self._queue.get()
            pending = None
            items, n = [first], len(first.images)
            deadline = time.monotonic() + self.max_wait
            while n < self.max_batch:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                item = await self._get_within(timeout)
                if item is None:
                    break
                if n + len(item.images) > self.max_batch:
                    pending = item  # a multi-image request that would overflow starts the next batch
                    break
                items.append(item)
                n += len(item.images)
            await self._run(loop, items)

    async def _get_within(self, timeout: float) -> _Item | None:
        """Next queued item or None after ``timeout`` s. A cancelled ``Queue.get`` leaves the
        item queued (unlike ``wait_for`` on 3.11, which can drop one in a race)."""
        getter = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait({getter}, timeout=timeout)
        if getter in done:
            return getter.result()
        getter.cancel()
        return None

    async def _run(self, loop: asyncio.AbstractEventLoop, items: list[_Item]) -> None:
        batch = np.concatenate([it.images for it in items])
        self.stats.record(len(batch))
        try:
            out = await loop.run_in_executor(self._executor, self.predict_fn, batch)
        except Exception as err:  # noqa: BLE001 - any failure goes to the waiting requests; the worker lives on
            for it in items:
                if not it.future.done():
                    it.future.set_exception(err)
            return
        start = 0
        for it in items:
            stop = start + len(it.images)
            if not it.future.done():  # the client may have gone away
                it.future.set_result({h: v[start:stop] for h, v in out.items()})
            start = stop
