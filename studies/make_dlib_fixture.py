"""Writes the golden dlib parity fixture: a few aligned chips and dlib's own descriptors.

    python studies/make_dlib_fixture.py [--n 8] [--out tests/fixtures/dlib_parity.npz]

The chips come from FairFace val crops (data root: ``FF_DATA_ROOT`` or ../shared/data)
aligned by dlib (``ff_keras.convert.dlib_weights.dlib_reference``). With the fixture the Keras
port can be checked where dlib itself is not installed; only the pip ``.dat`` is needed.
"""

from __future__ import annotations

import argparse
from pathlib import Path


import numpy as np
from PIL import Image

from ff_keras.convert.dlib_reference import dlib_reference
from ff_keras.data.readers import resolve_data_root

# Byte-identical pair in FairFace val (data README): the same image twice.
SAME_IMAGE_PAIR = ("val/2842.jpg", "val/7881.jpg")


def fixture_files(n: int) -> list[str]:
    """The first ``n - 2`` val crops plus the byte-identical pair (a same-image check)."""
    return [f"val/{i}.jpg" for i in range(1, n - 1)] + list(SAME_IMAGE_PAIR)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="number of chips (>= 3; ~60 kB each)")
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures/dlib_parity.npz"))
    args = ap.parse_args(argv)
    if args.n < 3:
        ap.error("--n must be >= 3")
    root = resolve_data_root() / "fairface"
    files = fixture_files(args.n)
    images = [np.asarray(Image.open(root / f).convert("RGB")) for f in files]
    chips, descriptors = dlib_reference(images)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, chips=chips, descriptors=descriptors, files=np.array(files))
    print(f"✅ wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB): {len(files)} chips + dlib descriptors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
