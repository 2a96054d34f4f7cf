"""Limits enforced below the routes: requests in flight, request body size and connection-level
timeouts.

``ConcurrencyLimit`` answers 503 in the service's JSON error shape, with ``Retry-After``, once a
worker holds its limit of requests in flight (uvicorn's own ``limit_concurrency`` answers in
plain text and also counts idle keep-alive connections, so ``scripts/serve.py`` keeps it only as
a backstop above this one). ``BodyLimit`` is ASGI middleware that counts body bytes as they arrive, so a chunked or
lying upload is cut off at the limit instead of being spooled to disk by the multipart
parser first. ``GuardedHttpToolsProtocol`` is uvicorn's HTTP protocol with two limits it
lacks: a request head (request line + headers) must arrive within ``head_timeout_s`` of
the connection opening or the previous response, and must fit in ``max_head_bytes``
(uvicorn only times out idle keep-alive connections, and its httptools parser takes
headers of any size).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

Scope = dict
Message = dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _BodyTooLarge(Exception):
    pass


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


class ConcurrencyLimit:
    """Answers 503 while ``max_requests`` HTTP requests are already being handled by this worker."""

    def __init__(self, app: Callable, max_requests: int):
        # ``ServeSettings`` refuses limits below 1 at start-up; Starlette builds middleware lazily,
        # at the first request, too late for a check here.
        self.app = app
        self.max_requests = max_requests
        self.in_flight = 0  # one event loop per worker: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.in_flight >= self.max_requests:
            detail = f"server busy: {self.max_requests} requests already in progress on this worker; retry shortly"
            return await send_json_error(send, 503, detail, retry_after_s=1)
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class BodyLimit:
    """Answers 413 once a request body passes ``max_bytes``, declared or streamed."""

    def __init__(self, app: Callable, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body exceeds the {self.max_bytes}-byte limit"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await send_json_error(send, 413, f"{message} (Content-Length {int(length)})", close=True)
        received, exceeded, started = 0, False, False

        async def counted_receive() -> Message:
            nonlocal received, exceeded
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return msg

        async def guarded_send(msg: Message) -> None:
            nonlocal started
            if exceeded:  # the app's own answer to the aborted body is replaced by the 413
                return
            started = True
            await send(msg)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if exceeded and not started:
            await send_json_error(send, 413, message, close=True)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a request-head deadline and size limit.

    Build it with ``functools.partial(GuardedHttpToolsProtocol, head_timeout_s=...,
    max_head_bytes=...)`` and pass that as uvicorn's ``http``.
    """

    def __init__(self, *args, head_timeout_s: float = 10.0, max_head_bytes: int = 32 * 1024, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_timeout_s = head_timeout_s
        self.max_head_bytes = max_head_bytes
        self._head_timer: asyncio.TimerHandle | None = None
        self._reading_head = True
        self._head_bytes = 0

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

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

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
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        self.transport.close()
