"""`BodyLimit`, pure ASGI middleware (no per-request task or body copy, unlike
BaseHTTPMiddleware) that serving and the router both mount: a request body over `max_bytes`
gets 413 before the app sees it: at once from its Content-Length, or while it streams in
(chunked bodies are counted as they arrive); a body not received in full within `timeout_s`
gets 408 and the connection is closed (after a lingering read of what is still coming, so
the client is not reset before it reads the 408).

    app.add_middleware(BodyLimit, max_bytes=2 << 20, timeout_s=10,
                       setting="CHUNKREC_SERVING_MAX_BODY_BYTES")
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LINGER_S = 1.0  # after a 408, how long the rest of a body is read and dropped before closing


async def _send_json(send: Send, status: int, doc: dict[str, Any], close: bool = False,
                     more: bool = False) -> None:
    body = orjson.dumps(doc)
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if close:  # uvicorn closes the connection after a response that says so
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": more})


async def _linger(receive: Receive, send: Send) -> None:
    """A lingering close: the response is all sent (its Content-Length), but the connection
    stays open up to LINGER_S while what the client still sends of its body is read and
    dropped. Closed at once, a socket that then receives data answers it with a reset, and a
    reset can make the client's kernel drop the 408 before the client has read it."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LINGER_S):
            while True:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
    await send({"type": "http.response.body", "body": b"", "more_body": False})  # closes


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 10.0,
                 setting: str = "CHUNKREC_SERVING_MAX_BODY_BYTES") -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.setting = setting  # named in the 413: the limit a client hit

    def _too_large(self) -> dict[str, str]:
        return {"detail": f"request body larger than {self.max_bytes} bytes ({self.setting})"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"),
                        None)
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_json(send, 400, {"detail": "bad Content-Length header"})
                return
            if size > self.max_bytes:
                await _send_json(send, 413, self._too_large())
                return
        # Read the whole body here, counting (a chunked body has no Content-Length), within
        # one deadline for all of it: uvicorn times out neither a body nor a pause in one, so a
        # client trickling a byte at a time would hold its connection and task forever. The
        # app gets the body replayed (FastAPI would turn an exception raised while it reads
        # into a 400).
        chunks: list[bytes] = []
        seen = 0
        try:
            async with asyncio.timeout(self.timeout_s):  # around the reads only, not a send
                while seen <= self.max_bytes:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # client went away
                    chunk = message.get("body", b"")
                    seen += len(chunk)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            # close the connection too: the rest of the body may still be on its way
            await _send_json(send, 408, {"detail": "request body not received within "
                                         f"{self.timeout_s:g} s"}, close=True, more=True)
            await _linger(receive, send)
            return
        if seen > self.max_bytes:
            await _send_json(send, 413, self._too_large())
            return
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
