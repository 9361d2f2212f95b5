"""uvicorn with the limits a service on a hospital network needs: a connection that has not sent
complete request headers within ``HEADER_TIMEOUT`` seconds is closed (uvicorn itself waits
forever: one slow client per connection slot is a slowloris), at most ``limit_concurrency``
connections (more get 503), and a short keep-alive."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
KEEP_ALIVE = 5
#: the largest request line + headers (h11 answers 400 past it)
MAX_HEADER_BYTES = 64 * 1024


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request headers are late."""

    header_timeout = HEADER_TIMEOUT
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # the headers of the next request are incomplete
            self._arm()
        else:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()  # the keep-alive timeout governs an idle connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def run(app: Any, host: str, port: int, max_connections: int = MAX_CONNECTIONS) -> None:
    """uvicorn with these limits (``ICHDET_HEADER_TIMEOUT``: the header timeout, seconds)."""
    import uvicorn

    HeaderTimeoutH11.header_timeout = float(os.environ.get("ICHDET_HEADER_TIMEOUT", HEADER_TIMEOUT))
    print(f"ichdet serve on http://{host}:{port}/", flush=True)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        http=HeaderTimeoutH11,
        limit_concurrency=max_connections,
        timeout_keep_alive=KEEP_ALIVE,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        server_header=False,
    )
