"""A normal client's latency while hostile clients (slow bodies, scan bombs, flat PNGs, face crowds) hit the same
server, and a soak of mixed bad requests with the server's RSS sampled as it goes.

    python -m studies.hostile_load [--model models/ff_dlib_resnet150.onnx] [--normal 100]
        [--soak 2000] [--out reports/benchmarks/hardening.json]

(run from the repository root). The server is ``scripts/serve.py``
with its defaults on 127.0.0.1; every count is bounded. Hostile clients, all at once:
row 2: 140 uploads that send 100 bytes of a 100 kB body and stall (reopened when cut off);
row 4: a 6000 x 6000 progressive JPEG with 25,000 empty scans; row 5: a 6300 x 6300 flat PNG
with the framing check; row 6: ``/predict/batch?detect=true`` with 16 photos of 144 faces.
The normal client sends one FairFace crop to ``/predict`` (framing check on), one at a time.
Before that, on a fresh server, row 5 alone: the peak RSS under two flat PNGs and a strip at once.
The soak (after the attack, same server) sends the fault corpus's refused files and this round's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from ff_keras.data.readers import resolve_data_root
from ff_keras.machine import write_result
from ff_keras.paths import REPO, add_model_argument
from studies.loadtest import running_server

sys.path.insert(0, str(REPO / "tests"))
from fault_corpus import corpus, encode, progressive_jpeg_with_scans, unusual_exif_jpegs  # noqa: E402


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith(field)).split()[1]) / 1024


def crowd_photo(root: Path, n: int = 144, face_px: int = 100) -> bytes:
    """A 12 x 12 grid of FairFace crops: 144 faces in one 1200 x 1200 JPEG."""
    side = int(np.ceil(np.sqrt(n)))
    canvas = Image.new("RGB", (side * face_px, side * face_px), "white")
    for i in range(n):
        crop = Image.open(root / "fairface" / "val" / f"{i + 1}.jpg").convert("RGB").resize((face_px, face_px))
        canvas.paste(crop, ((i % side) * face_px, (i // side) * face_px))
    return encode(canvas, "JPEG", quality=90)


async def _stalled_uploads(host: str, port: int, n: int, stop: asyncio.Event, stats: dict) -> None:
    """Row 2: ``n`` uploads that send 100 bytes of a declared 100 kB body, then stall."""
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000\r\n\r\n--b\r\n" + b"x" * 95)

    async def one() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(head)
                reply = await reader.read(200)
                stats["row2_answers"][reply[9:12].decode() or "closed"] = (
                    stats["row2_answers"].get(reply[9:12].decode() or "closed", 0) + 1)
                writer.close()
            except OSError:
                await asyncio.sleep(0.1)

    await asyncio.gather(*[one() for _ in range(n)])


async def _repeat(url: str, files, params: dict, stop: asyncio.Event, key: str, stats: dict) -> None:
    async with httpx.AsyncClient(timeout=300) as http:
        while not stop.is_set():
            t = time.perf_counter()
            r = await http.post(url, files=files, params=params)
            stats[key].append((r.status_code, round(time.perf_counter() - t, 3)))


async def hostile_run(base: str, normal: int, data_root: Path) -> dict:
    url = httpx.URL(base)
    face = (data_root / "fairface" / "val" / "1.jpg").read_bytes()
    scans = progressive_jpeg_with_scans(25_000, (6000, 6000))
    flat = encode(Image.new("RGB", (6300, 6300), (200, 190, 180)), "PNG", compress_level=9)
    crowd = crowd_photo(data_root)
    stats: dict = {"row2_answers": {}, "row4": [], "row5": [], "row6": []}
    stop = asyncio.Event()
    pid = httpx.get(f"{base}/health").json()["pid"]
    rss_before = _rss_mb(pid)
    hostile = [
        asyncio.create_task(_stalled_uploads(url.host, url.port, 140, stop, stats)),
        asyncio.create_task(_repeat(f"{base}/predict", {"file": ("scans.jpg", scans)}, {}, stop, "row4", stats)),
        asyncio.create_task(_repeat(f"{base}/predict", {"file": ("flat.png", flat)}, {}, stop, "row5", stats)),
        asyncio.create_task(_repeat(f"{base}/predict/batch", [("files", (f"crowd{i}.jpg", crowd)) for i in range(16)],
                                    {"detect": "true"}, stop, "row6", stats)),
    ]
    await asyncio.sleep(3.0)  # the hostile clients are all running before the first normal request
    latencies, statuses = [], []
    async with httpx.AsyncClient(timeout=60) as http:
        for _ in range(normal):
            t = time.perf_counter()
            r = await http.post(f"{base}/predict", files={"file": ("face.jpg", face)})
            latencies.append(time.perf_counter() - t)
            statuses.append(r.status_code)
            await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait(hostile, timeout=120)
    for t in hostile:
        t.cancel()
    lat = np.asarray(latencies) * 1000
    summary = {k: {str(s): sum(1 for x in v if x[0] == s) for s in {x[0] for x in v}} for k, v in stats.items()
               if k != "row2_answers"}
    return {
        "normal_requests": normal, "normal_ok": statuses.count(200),
        "normal_p50_ms": round(float(np.percentile(lat, 50)), 1),
        "normal_p99_ms": round(float(np.percentile(lat, 99)), 1),
        "normal_max_ms": round(float(lat.max()), 1),
        "hostile_status_counts": {**summary, "row2": stats["row2_answers"]},
        "hostile_mean_s": {k: round(float(np.mean([x[1] for x in v])), 2) for k, v in stats.items()
                           if k != "row2_answers" and v},
        "server_rss_mb_before": round(rss_before, 1), "server_rss_mb_after": round(_rss_mb(pid), 1),
        "server_peak_rss_mb": round(_rss_mb(pid, "VmHWM"), 1),
    }


def _bad_requests(face: bytes) -> list[tuple[str, bytes]]:
    """The fault corpus's refused files plus this round's: strips, scan bombs, garbage, odd EXIF."""
    files = [(n, d) for n, (d, e) in corpus(face).items() if e != 200]
    files += [("strip.jpg", encode(Image.new("RGB", (12000, 32), "gray"), "JPEG")),
              ("scans.jpg", progressive_jpeg_with_scans(300)),
              ("garbage.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)]
    files += list(unusual_exif_jpegs().items())
    return files


async def soak(base: str, n: int, face: bytes, sample_every: int = 200) -> dict:
    """``n`` bad requests from 4 concurrent clients; the server's RSS every ``sample_every``."""
    pid = httpx.get(f"{base}/health").json()["pid"]
    bad = _bad_requests(face)
    samples = [(0, round(_rss_mb(pid), 1))]
    statuses: dict[str, int] = {}
    sent = done = 0

    async def client(http: httpx.AsyncClient, k: int) -> None:
        nonlocal sent, done
        i = k
        while sent < n:
            sent += 1
            name, data = bad[i % len(bad)]
            i += 4
            r = await http.post(f"{base}/predict", files={"file": (name, data)})
            statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
            done += 1
            if done % sample_every == 0:
                samples.append((done, round(_rss_mb(pid), 1)))

    t = time.perf_counter()
    async with httpx.AsyncClient(timeout=60) as http:
        await asyncio.gather(*[client(http, k) for k in range(4)])
    rss = [r for _, r in samples]
    return {"requests": done, "wall_s": round(time.perf_counter() - t, 1), "statuses": statuses,
            "rss_mb_samples": samples, "rss_growth_after_first_200_mb": round(rss[-1] - rss[1], 1),
            "kinds_of_bad_file": len(bad)}


async def flat_png_peak(base: str, rounds: int = 3) -> dict:
    """Row 5 alone: two 6300 x 6300 flat PNGs and a 6000 x 300 strip at once (framing check on),
    ``rounds`` times; the server's peak RSS before and after."""
    pid = httpx.get(f"{base}/health").json()["pid"]
    flat = encode(Image.new("RGB", (6300, 6300), (200, 190, 180)), "PNG", compress_level=9)
    strip = encode(Image.new("RGB", (6000, 300), (200, 190, 180)), "PNG")
    before = _rss_mb(pid, "VmHWM")
    statuses = []
    async with httpx.AsyncClient(timeout=300) as http:
        for _ in range(rounds):
            rs = await asyncio.gather(*[http.post(f"{base}/predict", files={"file": (n, d)}) for n, d in
                                        (("flat1.png", flat), ("flat2.png", flat), ("strip.png", strip))])
            statuses += [r.status_code for r in rs]
    return {"requests": len(statuses), "statuses": statuses, "peak_rss_mb_after_startup": round(before, 1),
            "peak_rss_mb": round(_rss_mb(pid, "VmHWM"), 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(ap)
    ap.add_argument("--normal", type=int, default=100, help="normal one-face requests during the attack")
    ap.add_argument("--soak", type=int, default=2000, help="bad requests in the soak (0: skip)")
    ap.add_argument("--out", default=str(REPO / "reports" / "benchmarks" / "hardening.json"))
    ap.add_argument("--server-log", default=None)
    args = ap.parse_args(argv)
    data_root = resolve_data_root()
    face = (data_root / "fairface" / "val" / "1.jpg").read_bytes()
    doc: dict = {"model": str(args.model), "server": "scripts/serve.py with its defaults, 127.0.0.1",
                 "cpu_cores": len(os.sched_getaffinity(0))}
    with running_server(args.model, [], timeout=300, log_path=args.server_log) as base:
        doc["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
        doc["row5_alone"] = asyncio.run(flat_png_peak(base))
        print(json.dumps(doc["row5_alone"], indent=2), flush=True)
    with running_server(args.model, [], timeout=300, log_path=args.server_log) as base:
        doc["hostile"] = asyncio.run(hostile_run(base, args.normal, data_root))
        doc["load_average_after_hostile"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(doc["hostile"], indent=2), flush=True)
        if args.soak:
            doc["soak"] = asyncio.run(soak(base, args.soak, face))
            print(json.dumps(doc["soak"], indent=2), flush=True)
    write_result(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
