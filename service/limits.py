"""Request limits: body size enforced while the body streams in, and requests per minute."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

from service.errors import ApiError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's body parsing re-raises it instead of turning it into 400."""

    def __init__(self, limit: int, what: str) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes for {what}")


class BodyLimit:
    """Refuses bodies over the limit: at once from Content-Length, else as soon as the streamed
    bytes pass it, so memory stays bounded whatever the client claims."""

    def __init__(self, app: ASGIApp, *, multipart_limit: int, other_limit: int) -> None:
        self.app, self.multipart_limit, self.other_limit = app, multipart_limit, other_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        multipart = headers.get("content-type", "").startswith("multipart/form-data")
        limit = self.multipart_limit if multipart else self.other_limit
        what = "uploads" if multipart else "non-multipart requests"
        # the multipart envelope (boundaries, part headers) may add a little to the file itself
        allowed = limit + 64 * 1024 if multipart else limit
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > allowed:
            await _send_json(send, 413, "too_large", BodyTooLarge(limit, what).detail)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > allowed:
                    raise BodyTooLarge(limit, what)
            return message

        try:
            await self.app(scope, limited, send)
        except BodyTooLarge as exc:  # raised outside FastAPI's handlers (e.g. while streaming)
            await _send_json(send, 413, "too_large", exc.detail)


async def _send_json(send: Send, status: int, error: str, detail: str) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class RateLimiter:
    """A token bucket per key, refilled continuously at `per_minute` per minute.

    In memory, per API process: with several API processes each enforces its own share."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        now = self.clock()
        with self._lock:
            level, last = self._buckets.get(key, (self.capacity, now))
            level = min(self.capacity, level + (now - last) * self.rate)
            if level < 1.0:
                self._buckets[key] = (level, now)
                retry = max(1, math.ceil((1.0 - level) / self.rate))
                raise ApiError(429, "rate_limited",
                               f"more than {int(self.capacity)} requests per minute; retry in {retry} s",
                               headers={"Retry-After": str(retry)})
            self._buckets[key] = (level - 1.0, now)
            if len(self._buckets) > 100_000:  # forget idle keys rather than grow without bound
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 120}
