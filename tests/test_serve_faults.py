"""Fault injection against a real server: crafted files, lying bodies, slow and huge headers,
misconfigured start-ups, a default server that really detects, and slow requests that must
not hold up others. Every answer is either a result or ``{"detail": "<text naming the file>"}``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from export_helpers import REPO
from fault_corpus import corpus, encode, face_as_16bit
from PIL import Image

from studies.loadtest import free_port, running_server

ARGS = ["--detector", "none", "--max-pixels", "4000000", "--max-request-pixels", "10000000",
        "--max-request-mb", "4", "--head-timeout-s", "1.5", "--max-batch", "8"]


@pytest.fixture(scope="module")
def model(tiny_onnx):
    return tiny_onnx


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    with running_server(model, ARGS, log_path=tmp_path_factory.mktemp("logs") / "serve.log") as url:
        yield url


def _server_rss_mb(url: str) -> float:
    pid = httpx.get(f"{url}/health").json()["pid"]
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) / 1024


def _assert_error_schema(r: httpx.Response, name: str) -> None:
    body = r.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    assert name in body["detail"], body


def test_corpus_gets_results_or_clear_4xx(server, face):
    """Each crafted file, sent with a misleading part type, gets its expected status."""
    for name, (data, expected) in corpus(face).items():
        r = httpx.post(f"{server}/predict", files={"file": (name, data, "image/png")}, timeout=30)
        assert r.status_code == expected, (name, r.status_code, r.text[:300])
        if expected == 200:
            assert len(r.json()["faces"]) == 1, name
        else:
            _assert_error_schema(r, name)
    assert httpx.get(f"{server}/health").status_code == 200


def test_part_type_is_ignored_bytes_decide(server, face):
    for ctype in ("application/octet-stream", "image/jpg", None):
        part = ("f.jpg", face) if ctype is None else ("f.jpg", face, ctype)
        assert httpx.post(f"{server}/predict", files={"file": part}).status_code == 200, ctype


def test_sixteen_bit_png_is_scaled_not_clipped(server, face):
    png16, png8 = face_as_16bit(face)
    got = [httpx.post(f"{server}/predict", files={"file": (n, d)}).json()["faces"][0]["heads"]
           for n, d in (("g16.png", png16), ("g8.png", png8))]
    for head in got[1]:
        for cls, p in got[1][head]["probabilities"].items():
            assert got[0][head]["probabilities"][cls] == pytest.approx(p, abs=1e-3), (head, cls)


def test_batch_reports_each_file(server, face):
    files = [("files", (n, d)) for n, (d, _) in corpus(face).items()][:16]
    r = httpx.post(f"{server}/predict/batch", files=files, timeout=60)
    assert r.status_code == 200, r.text[:300]
    results = r.json()["results"]
    want = [e for _, (_, e) in list(corpus(face).items())[:16]]
    got = [x.get("status", 200) for x in results]
    assert got == want
    assert r.json()["errors"] == sum(e != 200 for e in want)


def test_decoded_pixel_budget_and_memory(server):
    """16 solid 3.9 Mpixel images in one request: JPEGs are decoded at reduced scale and all
    answered; PNGs (no reduced decoding) stop at the request's 10 Mpixel budget, per file."""
    jpeg = encode(Image.new("RGB", (2280, 1710), (200, 150, 120)), "JPEG", quality=95)
    png = encode(Image.new("RGB", (2280, 1710), (200, 150, 120)), "PNG")
    before = _server_rss_mb(server)
    r = httpx.post(f"{server}/predict/batch", files=[("files", (f"{i}.jpg", jpeg)) for i in range(16)], timeout=120)
    assert r.status_code == 200 and r.json()["errors"] == 0
    assert r.json()["results"][0]["width"] == 2280  # boxes in the uploaded frame despite reduced decoding
    r = httpx.post(f"{server}/predict/batch", files=[("files", (f"{i}.png", png)) for i in range(16)], timeout=120)
    statuses = [x.get("status", 200) for x in r.json()["results"]]
    assert statuses == [200, 200] + [413] * 14, statuses
    assert "budget" in r.json()["results"][2]["detail"] and "2.png" in r.json()["results"][2]["detail"]
    assert _server_rss_mb(server) - before < 300


def _read_reply(s: socket.socket, limit: int = 65536) -> bytes:
    """Everything the server sends until it closes the connection (error replies close it);
    headers and body can arrive in separate packets."""
    reply = b""
    while len(reply) < limit:
        try:
            part = s.recv(4096)
        except (ConnectionResetError, TimeoutError):
            break
        if not part:
            break
        reply += part
    return reply


def _raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return _read_reply(s)


def _port(url: str) -> int:
    return httpx.URL(url).port


def test_declared_and_streamed_bodies_over_the_limit(server):
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    reply = _raw(_port(server), head + b"Content-Length: 170000000\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413") and b'"detail"' in reply and b"Content-Length" in reply
    # Chunked, no length: the server must answer once about 4 MB have arrived, not after 64 MB.
    sent = 0
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=10) as s:
        s.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n\r\n'
        s.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        chunk = b"%x\r\n%s\r\n" % (2**20, b"\0" * 2**20)
        try:
            for _ in range(64):
                s.sendall(chunk)
                sent += 1
        except OSError:
            pass  # the server closed the connection after its 413
        reply = _read_reply(s)
    assert reply.startswith(b"HTTP/1.1 413") and b"4194304-byte limit" in reply, reply[:200]
    assert sent < 32
    assert httpx.get(f"{server}/health").status_code == 200


def test_huge_headers_and_slow_clients_are_cut_off(server):
    reply = _raw(_port(server), b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100_000)
    assert reply.startswith(b"HTTP/1.1 431")
    t = time.monotonic()
    for partial in (b"", b"GET /health HTTP/1.1\r\nHost:"):  # idle, then headers never finished
        reply = _raw(_port(server), partial)
        assert reply.startswith(b"HTTP/1.1 408") and b'"detail"' in reply
    assert time.monotonic() - t < 8  # --head-timeout-s 1.5 each


def test_validation_and_multipart_errors_have_one_shape(server, face):
    cases = [
        httpx.post(f"{server}/predict", files={"wrong_field": ("a.jpg", face)}),
        httpx.post(f"{server}/predict"),
        httpx.post(f"{server}/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}),
        httpx.post(f"{server}/predict", content=b"--x\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nab",
                   headers={"content-type": "multipart/form-data; boundary=x"}),
        httpx.post(f"{server}/predict/batch", json={"files": []}),
        httpx.post(f"{server}/predict?detect=maybe", files={"file": ("a.jpg", face)}),
    ]
    for r in cases:
        assert 400 <= r.status_code < 500, r.text
        body = r.json()
        assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    assert "file" in cases[0].json()["detail"] and "detect" in cases[-1].json()["detail"]


def test_normal_client_is_served_during_hostile_traffic(server, face):
    bad = corpus(face)

    async def hostile():
        async with httpx.AsyncClient(timeout=60) as http:
            for name, (data, _) in list(bad.items()) * 2:
                await http.post(f"{server}/predict", files={"file": (name, data)})

    async def normal():
        await asyncio.sleep(0.2)
        lat = []
        async with httpx.AsyncClient(timeout=60) as http:
            for _ in range(10):
                t = time.perf_counter()
                r = await http.post(f"{server}/predict", files={"file": ("ok.jpg", face)})
                assert r.status_code == 200
                lat.append(time.perf_counter() - t)
        return lat

    async def both():
        return await asyncio.gather(hostile(), hostile(), normal())

    lat = asyncio.run(both())[2]
    assert max(lat) < 5.0, lat


# === Start-up ===


def _serve(model, *args, timeout=120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "scripts/serve.py", "--model", str(model), "--port", str(free_port()), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


def _copy(model, folder, sidecar: dict | None):
    folder.mkdir()
    (folder / "model.onnx").write_bytes(model.read_bytes())
    if sidecar is not None:
        (folder / "model_info.json").write_text(json.dumps(sidecar))
    return folder / "model.onnx"


def test_misconfigured_start_ups_fail_fast_with_one_line(model, tmp_path):
    info = json.loads((model.parent / "model_info.json").read_text())
    wrong_size = _copy(model, tmp_path / "wrong", {**info, "image_size": 224})
    orphan = _copy(model, tmp_path / "orphan", None)
    for path, args, message in [
        (wrong_size, ["--detector", "none"], "image_size 224"),
        (orphan, ["--workers", "2", "--detector", "none"], "no model_info.json"),
        (model, ["--detector", "bogus"], "invalid choice: 'bogus'"),
        (model, ["--detector", "none", "--limit-concurrency", "0"], "limit_concurrency must be >= 1"),
    ]:
        t = time.monotonic()
        proc = _serve(path, *args)
        assert proc.returncode == 2, (args, proc.stderr[-500:])
        assert time.monotonic() - t < 60
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert message in lines[-1] and "Traceback" not in proc.stderr, proc.stderr[-1500:]


def test_requests_past_the_concurrency_limit_get_a_json_503(model, tmp_path):
    """Two slow detections hold both slots: the next request is told to retry, in the service's
    JSON error shape, /health is still answered, and requests are served again once the slots are
    free. Uploads stalled mid-body do not hold slots (their body deadline bounds them instead)."""
    big = encode(Image.new("RGB", (3000, 2400), (90, 120, 100)), "JPEG", quality=90)
    args = ["--detector", "dlib_hog", "--limit-concurrency", "2", "--detect-max-pixels", "8000000",
            "--max-pixels", "8000000", "--no-framing-check"]
    with running_server(model, args, log_path=tmp_path / "serve.log") as url:
        head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 100000\r\n\r\n--b\r\n")
        stalled = [socket.create_connection(("127.0.0.1", _port(url)), timeout=10) for _ in range(3)]
        try:
            for s in stalled:
                s.sendall(head)
            time.sleep(0.3)
            assert httpx.get(f"{url}/metadata").status_code == 200  # stalled bodies hold no slot
        finally:
            for s in stalled:
                s.close()
        slow = [threading.Thread(target=httpx.post, args=(f"{url}/predict?detect=true",),
                                 kwargs={"files": {"file": ("big.jpg", big)}, "timeout": 120}) for _ in range(2)]
        for t in slow:
            t.start()
        time.sleep(0.8)
        r = httpx.get(f"{url}/metadata")
        assert r.status_code == 503, r.text
        assert "retry" in r.json()["detail"] and r.headers["retry-after"] == "1"
        assert httpx.get(f"{url}/health").status_code == 200  # readiness probes are never refused
        for t in slow:
            t.join()
        assert httpx.get(f"{url}/metadata").status_code == 200


def test_default_server_detects_faces(model, data_root, tmp_path):
    """No --detector: ?detect=true finds no face in a blank photo, one in a tight crop (found
    on the padded retry) and one per person in a six-person photo."""
    from test_faces import multi_person_photo

    blank = encode(Image.new("RGB", (600, 300), (200, 210, 220)), "JPEG")
    crop = (data_root / "fairface" / "val" / "10055.jpg").read_bytes()
    group = multi_person_photo().read_bytes()
    with running_server(model, [], log_path=tmp_path / "serve.log", timeout=240) as url:
        assert httpx.get(f"{url}/health").json()["detector"] == "mtcnn"
        n = {name: len(httpx.post(f"{url}/predict?detect=true", files={"file": (name, data)},
                                  timeout=60).json()["faces"])
             for name, data in (("blank.jpg", blank), ("crop.jpg", crop), ("group.jpg", group))}
    assert n == {"blank.jpg": 0, "crop.jpg": 1, "group.jpg": 6}


def test_slow_detection_does_not_hold_up_other_requests(model, data_root, tmp_path):
    """A large photo searched at full size takes seconds; small requests meanwhile are answered
    by the other decode thread instead of waiting behind it."""
    big = Image.new("RGB", (3000, 2400), (90, 120, 100))
    big.paste(Image.open(data_root / "fairface" / "val" / "1.jpg").resize((600, 600)), (1200, 900))
    big = encode(big, "JPEG", quality=90)
    small = (data_root / "fairface" / "val" / "2.jpg").read_bytes()
    args = ["--detector", "dlib_hog", "--detect-max-pixels", "8000000", "--max-pixels", "8000000"]
    with running_server(model, args, log_path=tmp_path / "serve.log") as url:
        done = {}

        def slow():
            t = time.perf_counter()
            httpx.post(f"{url}/predict?detect=true", files={"file": ("big.jpg", big)}, timeout=300)
            done["big"] = time.perf_counter() - t

        worker = threading.Thread(target=slow)
        worker.start()
        time.sleep(0.5)
        lat = []
        for _ in range(3):
            t = time.perf_counter()
            r = httpx.post(f"{url}/predict?detect=true", files={"file": ("small.jpg", small)}, timeout=300)
            assert r.status_code == 200 and len(r.json()["faces"]) == 1
            lat.append(time.perf_counter() - t)
        small_done = "big" not in done
        worker.join()
    assert small_done, (done, lat)  # the small requests finished while the big one still ran
    assert max(lat) < done["big"] / 2, (done, lat)


def test_cli_reports_the_same_files_and_keeps_going(model, face, tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    files = corpus(face)
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    proc = subprocess.run(
        [sys.executable, "scripts/predict.py", str(folder), "--model", str(model), "--detector", "none", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    unreadable = {u["path"].rsplit("/", 1)[-1] for u in doc["unreadable"]}
    assert unreadable == {n for n, (_, e) in files.items() if e != 200}
    assert {f["image"].rsplit("/", 1)[-1] for f in doc["faces"]} == {n for n, (_, e) in files.items() if e == 200}
    for u in doc["unreadable"]:
        assert u["path"].rsplit("/", 1)[-1] in u["error"]
    for f in doc["faces"]:
        assert set(f["heads"]) == {"age", "gender", "race"} and isinstance(f["age_years"], float)
