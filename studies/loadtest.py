"""A real server in a subprocess and an HTTP load generator, shared by tests and the benchmark.

The server is started exactly as an operator would (``scripts/serve.py``) so tests and
benchmarks exercise the CLI, uvicorn's worker processes and the app factory.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np

from ff_keras.paths import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(
    model: str | Path, args: Sequence[str] = (), timeout: float = 120.0, log_path: str | Path | None = None
) -> Iterator[str]:
    """Starts ``scripts/serve.py --model MODEL ARGS`` on a free loopback port; yields its base URL.

    Waits for ``/health`` to answer 200 and stops the server (and its workers) on exit.
    """
    port = free_port()
    cmd = [sys.executable, str(REPO / "scripts" / "serve.py"), "--model", str(model), "--port", str(port),
           "--log-level", "warning", *args]
    url = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(log_path, "w")) if log_path else subprocess.DEVNULL
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        stack.callback(_stop, proc)
        _wait_healthy(proc, url, timeout, cmd, log_path)
        yield url


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float, cmd: list[str], log_path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}: {' '.join(cmd)} (log: {log_path})")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"server not healthy after {timeout}s: {' '.join(cmd)}")
        time.sleep(0.25)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()  # uvicorn stops its worker processes on SIGTERM
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def multipart_request(host: str, path: str, payload: bytes, filename: str = "face.jpg",
                      content_type: str = "image/jpeg") -> bytes:
    """One complete HTTP/1.1 multipart POST (headers + body), built once and re-sent."""
    boundary = "ffkerasloadtest0123456789"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status = int((await reader.readline()).split(b" ", 2)[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def _client(host: str, port: int, request: bytes, n: int, latencies: list, errors: list) -> None:
    """One keep-alive connection sending ``n`` requests back to back.

    A raw asyncio client rather than httpx: on a 2-core host the load generator shares the
    CPU with the server, and httpx spent more CPU per request than the server did.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for _ in range(n):
            t = time.perf_counter()
            try:
                writer.write(request)
                status, body = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as err:
                errors.append(repr(err))
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            if status != 200:
                errors.append(f"HTTP {status}: {body[:200].decode(errors='replace')}")
                continue
            latencies.append(time.perf_counter() - t)
    finally:
        writer.close()


async def load_test(base_url: str, payload: bytes, clients: int = 16, requests_per_client: int = 500) -> dict:
    """``clients`` concurrent keep-alive connections each POSTing ``requests_per_client`` images
    to /predict; req/s, latency percentiles, errors and the server's batching statistics."""
    url = httpx.URL(base_url)
    request = multipart_request(f"{url.host}:{url.port}", "/predict", payload)
    latencies: list[float] = []
    errors: list[str] = []
    await _client(url.host, url.port, request, 1, [], [])  # untimed warm-up
    t = time.perf_counter()
    await asyncio.gather(*[
        _client(url.host, url.port, request, requests_per_client, latencies, errors) for _ in range(clients)
    ])
    wall = time.perf_counter() - t
    async with httpx.AsyncClient(timeout=30.0) as http:
        meta = (await http.get(f"{base_url}/metadata")).json()
    lat = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "clients": clients, "requests": clients * requests_per_client, "ok": len(latencies), "errors": len(errors),
        "error_examples": errors[:3], "wall_s": wall, "req_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
        "batching_one_worker": meta["batching"],
    }
