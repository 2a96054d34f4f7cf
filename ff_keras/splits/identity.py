"""Face identity descriptors and image hashes used to keep one person's photos in one split.

dlib's face-recognition ResNet gives 128-d descriptors (same person: distance < ~0.6).
Computing them costs 0.05-0.15 s per image with dlib on a 2-core CPU (a batched Keras port of
the network cuts that to about a third), so they are cached in an ``.npz``
keyed by the image path relative to the data root; the cache is written in chunks so a
killed run resumes where it stopped.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from ff_keras.data.crops import main_face_box
from ff_keras.data.image_check import file_sha256
from ff_keras.paths import face_models_dir

DESCRIPTOR_DIM = 128


_MODELS = None


def _models():
    """Loads dlib's detector, 5-point predictor and descriptor net once per process."""
    global _MODELS
    if _MODELS is None:
        import dlib

        d = face_models_dir()
        _MODELS = (
            dlib.get_frontal_face_detector(),
            dlib.shape_predictor(str(d / "shape_predictor_5_face_landmarks.dat")),
            dlib.face_recognition_model_v1(str(d / "dlib_face_recognition_resnet_model_v1.dat")),
        )
    return _MODELS


def face_descriptor(rgb: np.ndarray) -> tuple[np.ndarray, bool]:
    """128-d dlib descriptor of the main face in a face crop.

    The face box is ``data.crops.main_face_box`` (largest HOG box, else the central 2/3).

    Returns:
        (descriptor float32 [128], whether HOG detected the face)
    """
    detector, predictor, net = _models()
    rect, detected = main_face_box(detector, rgb)
    shape = predictor(rgb, rect)
    return np.asarray(net.compute_face_descriptor(rgb, shape), np.float32), detected


def dhash(rgb: np.ndarray, hash_size: int = 16) -> np.ndarray:
    """Difference hash (hash_size**2 bits, packed to uint8) robust to re-encoding and mild re-cropping."""
    gray = Image.fromarray(rgb).convert("L").resize((hash_size + 1, hash_size), Image.LANCZOS)
    px = np.asarray(gray, np.int16)
    return np.packbits((px[:, 1:] > px[:, :-1]).ravel())


def face_chip(rgb: np.ndarray) -> tuple[np.ndarray, bool]:
    """dlib's aligned 150 px chip of the main face (the input of its descriptor network).

    Same face as ``face_descriptor``; ``compute_face_descriptor(rgb, shape)`` equals the
    network applied to this chip, so a batched port of the network can take over.
    """
    import dlib

    detector, predictor, _ = _models()
    rect, detected = main_face_box(detector, rgb)
    return dlib.get_face_chip(rgb, predictor(rgb, rect), size=150, padding=0.25), detected


def _read_rgb(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _face_record(of_face: Callable[[np.ndarray], tuple[np.ndarray, bool]], path: str
                 ) -> tuple[np.ndarray, bool, np.ndarray, str]:
    """``of_face(rgb)`` (descriptor or chip, detected), dHash and SHA-256 of one image file."""
    rgb = _read_rgb(path)
    value, detected = of_face(rgb)
    return value, detected, dhash(rgb), file_sha256(path)


def load_cache(cache_path: Path) -> dict[str, np.ndarray]:
    if not cache_path.exists():
        return {"key": np.array([], dtype=object)}
    with np.load(cache_path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def compute_embeddings(
    data_root: Path,
    rel_paths: Sequence[str],
    cache_path: Path,
    workers: int = 2,
    chunk: int = 2000,
    progress: bool = True,
    describe_chips: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Descriptors, detection flags, dHashes and SHA-256 for ``rel_paths``, cached and resumable.

    With ``describe_chips`` (uint8 chips [N, 150, 150, 3] -> descriptors [N, 128], e.g. the
    batched Keras port ``convert.dlib_reference.BatchedDescriptor``) worker processes only
    detect, align and hash, and the network runs batched in this process; otherwise dlib
    computes each descriptor itself.

    Returns a dict of aligned arrays: ``key`` (relative path), ``descriptor`` [N,128],
    ``detected`` [N], ``dhash`` [N,32] uint8, ``sha256`` [N] str.
    """
    cache = load_cache(cache_path)
    cache["key"] = repair_keys(cache["key"], rel_paths)
    have = set(cache["key"].tolist())
    todo = [p for p in dict.fromkeys(rel_paths) if p not in have]
    if todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="identity descriptors", disable=not progress, mininterval=10)
        # Workers either compute dlib's descriptor or only cut the chip for the batched network.
        record = partial(_face_record, face_descriptor if describe_chips is None else face_chip)
        # spawn, not fork: the parent may hold TensorFlow's thread pools.
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                files = [str(data_root / p) for p in part]
                results = list(pool.map(record, files, chunksize=16))
                if describe_chips is not None:  # chips -> descriptors, batched in this process
                    chips, detected, hashes, shas = zip(*results)
                    results = list(zip(describe_chips(np.stack(chips)), detected, hashes, shas))
                cache = _append(cache, part, results)
                _save(cache, cache_path)
                bar.update(len(part))
        bar.close()
    index = {k: i for i, k in enumerate(cache["key"].tolist())}
    missing = [p for p in rel_paths if p not in index]
    if missing:
        raise KeyError(f"{len(missing)} paths missing from identity cache, e.g. {missing[0]}")
    rows = np.array([index[p] for p in rel_paths], dtype=np.int64)
    return {k: v[rows] for k, v in cache.items()}


def _append(cache: dict, keys: list[str], results: Iterable) -> dict:
    vecs, detected, hashes, shas = zip(*results)
    new = {
        "key": np.array(keys, dtype=str),
        "descriptor": np.stack(vecs).astype(np.float32),
        "detected": np.array(detected, dtype=bool),
        "dhash": np.stack(hashes).astype(np.uint8),
        "sha256": np.array(shas, dtype=str),
    }
    if len(cache["key"]) == 0:
        return new
    # No cast of the old strings to the new chunk's width: that truncated longer keys (see repair_keys).
    return {k: np.concatenate([cache[k], new[k]]) for k in new}


def _save(cache: dict, cache_path: Path) -> None:
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_name(cache_path.name + ".tmp.npz")
    np.savez(tmp, **{k: (v.astype(str) if v.dtype == object else v) for k, v in cache.items()})
    os.replace(tmp, cache_path)


def repair_keys(keys: np.ndarray, rel_paths: Sequence[str]) -> np.ndarray:
    """Restores cache keys cut short by an older ``_append``, which cast the cached keys to the
    string width of the newest chunk (``fairface/val/10000.jpg`` -> ``fairface/val/10000.jp``).

    Keys are written in sorted order within a run, so a cut key becomes the smallest path
    of ``rel_paths`` that starts with it and sorts after the previous key; keys that match
    nothing (files not asked for) stay as they are.
    """
    import bisect

    universe = sorted(set(rel_paths))
    known = set(universe)
    out, prev = [], ""
    for key in np.asarray(keys).tolist():
        if key not in known:
            lo = bisect.bisect_left(universe, key)
            hits = [u for u in universe[lo : lo + 64] if u.startswith(key)]
            after = [u for u in hits if u > prev] or hits
            key = after[0] if after else key
        out.append(key)
        prev = key
    if len(set(out)) != len(out):
        dup = next(k for k, c in Counter(out).items() if c > 1)
        raise ValueError(f"identity cache keys are ambiguous after repair, e.g. {dup!r}: delete the cache")
    return np.array(out, dtype=str)
