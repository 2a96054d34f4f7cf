"""Limits enforced below the routes: requests in flight, request body size and pace, shutdown
drain and connection-level timeouts.

``ConcurrencyLimit`` answers 503 in the service's JSON error shape, with ``Retry-After``, once a
worker holds its limit of requests in flight; a request with a body counts once its body is in,
and ``/health`` is never refused (a readiness probe must not fail because uploads are slow).
``BodyLimit`` is ASGI middleware that counts body bytes as they arrive, so a chunked or lying
upload is cut off at the limit instead of being spooled to disk by the multipart parser first,
and gives the body a deadline (a time allowance plus a minimum rate), so uploads that stall or
trickle are answered 408 and closed.
``Drain`` answers requests that arrive once shutdown has begun with a JSON 503 and gives the
ones in flight ``drain_timeout_s`` to finish. ``GuardedHttpToolsProtocol`` is uvicorn's HTTP
protocol with the limits it lacks: a request head (request line + headers) must arrive within
``head_timeout_s`` of the connection opening or the previous response, and must fit in
``max_head_bytes`` however it is written (uvicorn only times out idle keep-alive connections,
and its httptools parser takes headers of any size); past ``max_connections`` open connections
a request gets a JSON 503 (``/health`` still answered), and malformed HTTP a JSON 400.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from collections.abc import Awaitable, Callable

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

Scope = dict
Message = dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# glibc raises its mmap threshold up to 32 MB each time a large mmap'd block is freed, so after a
# few big decodes (a 40 Mpixel PNG is 159 MB) later large arrays come from the heap arenas of the
# decode threads and stay with the process when freed: RSS ratchets up to the worst mix seen.
# A fixed threshold keeps every block over it mmap'd, and munmap'd (returned) when freed.
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h


def return_large_buffers_to_os(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fixes glibc's mmap threshold so that large image buffers go back to the OS when freed.

    Returns False where the C library is not glibc (nothing changed).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


# Paths a readiness probe uses: never refused for load, so health checks are not starved.
HEALTH_PATHS = ("/health",)


async def send_json_error(send: Send, status: int, detail: str, close: bool = False,
                          retry_after_s: int | None = None) -> None:
    """A ``{"detail": ...}`` response, the service's one error shape, sent at the ASGI level."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    if retry_after_s is not None:
        headers.append((b"retry-after", str(retry_after_s).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Refusal(Exception):
    """Raised out of ``receive`` to stop the app reading a body; becomes one JSON error."""

    def __init__(self, status: int, detail: str, retry_after_s: int | None = None):
        super().__init__(detail)
        self.status, self.detail, self.retry_after_s = status, detail, retry_after_s


async def _serve_or_refuse(app: Callable, scope: Scope, receive: Receive, send: Send) -> None:
    """Runs ``app``; if ``receive`` raises a ``_Refusal`` (the app may catch and rewrap it, as
    FastAPI's form parser does), the app's own answer is dropped and the refusal is sent."""
    refusal: _Refusal | None = None
    started = False

    async def guarded_receive() -> Message:
        nonlocal refusal
        try:
            return await receive()
        except _Refusal as r:
            refusal = r
            raise

    async def guarded_send(msg: Message) -> None:
        nonlocal started
        if refusal is None:
            started = True
            await send(msg)

    try:
        await app(scope, guarded_receive, guarded_send)
    except _Refusal:
        pass
    if refusal is not None and not started:
        await send_json_error(send, refusal.status, refusal.detail, close=True, retry_after_s=refusal.retry_after_s)


def _has_body(scope: Scope) -> bool:
    headers = dict(scope["headers"])
    return headers.get(b"content-length", b"0") not in (b"", b"0") or b"transfer-encoding" in headers


class ConcurrencyLimit:
    """Answers 503 while ``max_requests`` HTTP requests are already being handled by this worker.

    A request with a body takes its slot once the body is in, not while it arrives: uploads that
    stall or trickle (bounded by ``BodyLimit``'s deadline and the connection cap) cannot hold the
    slots that decoding and the model need. ``/health`` is never refused.
    """

    def __init__(self, app: Callable, max_requests: int):
        # ``ServeSettings`` refuses limits below 1 at start-up; Starlette builds middleware lazily,
        # at the first request, too late for a check here.
        self.app = app
        self.max_requests = max_requests
        self.in_flight = 0  # one event loop per worker: no lock needed

    def _busy(self) -> _Refusal:
        detail = f"server busy: {self.max_requests} requests already in progress on this worker; retry shortly"
        return _Refusal(503, detail, retry_after_s=1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in HEALTH_PATHS:
            return await self.app(scope, receive, send)
        holding = False
        if not _has_body(scope):
            if self.in_flight >= self.max_requests:
                busy = self._busy()
                return await send_json_error(send, 503, busy.detail, retry_after_s=1)
            self.in_flight, holding = self.in_flight + 1, True

        async def slot_receive() -> Message:
            nonlocal holding
            msg = await receive()
            if not holding and msg["type"] == "http.request" and not msg.get("more_body", False):
                if self.in_flight >= self.max_requests:
                    raise self._busy()
                self.in_flight, holding = self.in_flight + 1, True
            return msg

        try:
            await _serve_or_refuse(self.app, scope, slot_receive, send)
        finally:
            if holding:
                self.in_flight -= 1


class BodyLimit:
    """Answers 413 once a request body passes ``max_bytes``, declared or streamed, and 408 when
    the body is not in by ``timeout_s`` + (bytes so far) / ``min_rate`` seconds after the head."""

    def __init__(self, app: Callable, max_bytes: int, timeout_s: float = 10.0, min_rate: float = 32768.0):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.min_rate = min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body exceeds the {self.max_bytes}-byte limit"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await send_json_error(send, 413, f"{message} (Content-Length {int(length)})", close=True)
        loop = asyncio.get_running_loop()
        start = loop.time()
        received, complete = 0, False

        async def counted_receive() -> Message:
            nonlocal received, complete
            if complete:  # the body is in: later receives wait for a disconnect, not for data
                return await receive()
            left = start + self.timeout_s + received / self.min_rate - loop.time()
            try:
                msg = await asyncio.wait_for(receive(), max(left, 0.0))
            except asyncio.TimeoutError:
                raise _Refusal(408, f"request body too slow: {received} bytes in {loop.time() - start:.1f} s; the "
                               f"limit is {self.timeout_s:g} s plus 1 s per {self.min_rate:g} bytes") from None
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                complete = not msg.get("more_body", False)
                if received > self.max_bytes:
                    raise _Refusal(413, message)
            return msg

        await _serve_or_refuse(self.app, scope, counted_receive, send)


class DrainState:
    """Whether this worker is shutting down, and the requests it still has in flight."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.draining = False
        self.tasks: set[asyncio.Task] = set()

    def start(self) -> None:
        """Begins the drain; safe to call from a signal handler on the event loop's thread."""
        if not self.draining:
            self.draining = True
            loop = asyncio.get_event_loop()
            loop.call_soon_threadsafe(loop.call_later, self.timeout_s, self._cancel_all)

    def _cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()


class Drain:
    """Graceful shutdown: once ``state.start()`` is called (SIGTERM), new requests get a JSON 503
    and requests in flight have ``state.timeout_s`` to finish; those still running then are
    cancelled and answered with a JSON 503 (not uvicorn's plain-text 500 or a dropped connection)."""

    def __init__(self, app: Callable, state: DrainState):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.state.draining:
            return await send_json_error(send, 503, "server is shutting down; retry (another instance will answer)",
                                         close=True, retry_after_s=1)
        started = False

        async def tracked_send(msg: Message) -> None:
            nonlocal started
            started = True
            await send(msg)

        task = asyncio.ensure_future(self.app(scope, receive, tracked_send))
        self.state.tasks.add(task)
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:  # uvicorn gave up on this request: so does the app
            task.cancel()
            raise
        finally:
            self.state.tasks.discard(task)
        if not task.cancelled():
            return task.result()  # the app's own exception, if any, goes on up
        if not started:
            await send_json_error(send, 503, f"server shut down before this request finished (drain timeout "
                                  f"{self.state.timeout_s:g} s); retry", close=True, retry_after_s=1)


def drain_on_sigterm(drain: DrainState) -> None:
    """Chains ``drain.start`` in front of the SIGTERM/SIGINT handlers uvicorn installed (call it
    from the app's lifespan startup, which runs inside uvicorn's signal capture). Outside the main
    thread (an in-process test client runs the lifespan in a thread) there is no process signal
    to chain, and Python refuses to install handlers there, so nothing is done."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum, frame, previous=previous) -> None:  # noqa: ANN001 - signal's signature
            drain.start()
            previous(signum, frame)

        signal.signal(sig, handler)


class _HeadTooLarge(Exception):
    pass


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a request-head deadline and size limit, a connection
    cap answered in JSON, and JSON bodies on its own 400s.

    Build it with ``functools.partial(GuardedHttpToolsProtocol, head_timeout_s=...,
    max_head_bytes=..., max_connections=...)`` and pass that as uvicorn's ``http`` (with
    uvicorn's own ``limit_concurrency`` off: it answers in plain text and refuses ``/health``).
    """

    def __init__(self, *args, head_timeout_s: float = 10.0, max_head_bytes: int = 32 * 1024,
                 max_connections: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_timeout_s = head_timeout_s
        self.max_head_bytes = max_head_bytes
        self.max_connections = max_connections
        self._head_timer: asyncio.TimerHandle | None = None
        self._reading_head = True
        self._head_bytes = 0  # bytes received while a head is being read (heads split over writes)
        self._parsed_head = 0  # request line + headers as parsed (heads arriving in one write with a body)

    def connection_made(self, transport) -> None:  # noqa: ANN001 - asyncio's signature
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._reading_head and self._head_bytes > self.max_head_bytes and not self.transport.is_closing():
            self._reject(431, f"request line and headers exceed {self.max_head_bytes} bytes")

    def send_400_response(self, msg: str) -> None:
        if self._parsed_head > self.max_head_bytes:  # raised from on_header below
            self._reject(431, f"request line and headers exceed {self.max_head_bytes} bytes")
        else:
            self._reject(400, "invalid HTTP request")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsed_head = 0
        if self._head_timer is None:
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_head(self, n: int) -> None:
        self._parsed_head += n
        if self._parsed_head > self.max_head_bytes:
            raise _HeadTooLarge  # httptools stops parsing; uvicorn then calls send_400_response

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._cancel_head_timer()
        over = self.max_connections is not None and len(self.connections) > self.max_connections
        if not over or httptools.parse_url(self.url).path.decode("latin-1") in HEALTH_PATHS:
            return super().on_headers_complete()
        app, self.app = self.app, self._too_many_connections
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    async def _too_many_connections(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"server busy: over {self.max_connections} open connections on this worker; retry shortly"
        await send_json_error(send, 503, detail, close=True, retry_after_s=1)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head, self._head_bytes = True, 0

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self._reject(408, f"request headers not received within {self.head_timeout_s:g} s")
        else:
            self.transport.close()

    def _reject(self, status: int, detail: str) -> None:
        """Writes one JSON error and closes; the parser state is abandoned with the connection."""
        body = json.dumps({"detail": detail}).encode()
        reason = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        self.transport.close()
