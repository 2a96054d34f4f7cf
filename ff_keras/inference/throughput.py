"""Throughput of a predictor at a fixed batch size (the INT8 report and the serving benchmark)."""

from __future__ import annotations

import time

import numpy as np


def images_per_second(predictor, images: np.ndarray, batch: int, repeats: int = 3, per_round: int = 64) -> float:
    """Best-of-``repeats`` throughput of ``predictor.predict`` at a fixed batch size.

    Each round makes enough calls to cover ``per_round`` images, so small batches are timed
    over many calls rather than one (a single call is dominated by timer and scheduler noise).
    """
    x = images[:batch] if len(images) >= batch else np.resize(images, (batch, *images.shape[1:]))
    calls = max(1, -(-per_round // batch))
    for _ in range(min(calls, 4)):  # warm-up: first calls allocate and spin up thread pools
        predictor.predict(x)
    best = min(_timed(predictor, x, calls) for _ in range(repeats))
    return batch * calls / best


def _timed(predictor, x: np.ndarray, calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        predictor.predict(x)
    return time.perf_counter() - t
