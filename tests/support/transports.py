"""httpx transports for client tests: a faulty link between the real app and the client."""

from __future__ import annotations

import httpx


class FlipsAByte(httpx.BaseTransport):
    """Passes the app's real answers on with the last byte of each body flipped (a faulty link)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        body = response.read()
        flipped = body[:-1] + bytes([body[-1] ^ 1]) if body else body
        return httpx.Response(response.status_code, headers=response.headers, content=flipped, request=request)
