"""The HTTP door: one ASGI middleware in front of every route, which decides before any body
is read.

In this order: the ``Host`` header must name an allowed host (DNS rebinding: a page on
``rebind.attacker.example`` that resolves to 127.0.0.1 gets 421); a state-changing call
(POST, PUT, PATCH, DELETE) from a browser must come from this server's own origin (a
cross-site form POST gets 403); every route but the page, its static files and ``/healthz``
needs the bearer token when one is configured (401, the body unread); a body is cut off at the
size cap on the bytes actually received, whatever ``Content-Length`` or ``Transfer-Encoding``
say (413). Every response carries a Content-Security-Policy without external sources,
``frame-ancestors 'none'``, ``X-Frame-Options: DENY``, ``nosniff`` and ``no-referrer``. The
actor (a hash of the token, or ``local``) is put into the request state for the audit log.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from ichdet.serve.audit import token_actor

PUBLIC = ("/", "/healthz", "/static/app.js", "/static/app.css", "/favicon.ico")
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
        b"form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class BodyTooLarge(Exception):
    pass


def allowed_hosts(bind: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The names the ``Host`` header may carry: the bind address, loopback names, ``extra``
    (``--allowed-host``; ``*`` allows any)."""
    hosts = {bind.lower(), *LOCAL_HOSTS, *(h.lower() for h in extra)}
    return frozenset(hosts - {"0.0.0.0", "::"})


def host_name(value: str) -> str:
    """``example.org:8000`` -> ``example.org``; ``[::1]:8000`` -> ``::1``."""
    parsed = urlsplit(f"//{value}")
    try:
        return (parsed.hostname or "").lower()
    except ValueError:
        return ""


class Guard:
    def __init__(
        self,
        app: Any,
        token: str | None,
        hosts: frozenset[str],
        max_body: int,
        refused: Callable[[int], None] = lambda _status: None,
    ):
        self.app, self.token, self.hosts = app, token, hosts
        self.max_body, self.refused = max_body, refused

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        problem = self.check(scope, headers)
        if problem is not None:
            self.refused(problem[0])
            await _answer(send, *problem)
            return
        scope.setdefault("state", {})["actor"] = token_actor(self.token) if self.token else "local"
        await self._call_capped(scope, receive, send)

    def check(self, scope: dict[str, Any], headers: dict[str, str]) -> tuple[int, str] | None:
        host = host_name(headers.get("host", ""))
        if "*" not in self.hosts and host not in self.hosts:
            return 421, "unknown Host header (start the server with --allowed-host NAME)"
        if scope["method"] in STATE_CHANGING and not self._same_origin(headers):
            return 403, "cross-origin request refused"
        if self.token is not None and scope["path"] not in PUBLIC:
            given = headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(
                value.strip().encode(), self.token.encode()
            ):
                return 401, "a valid bearer token is required"
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return 413, f"body over the {self.max_body}-byte limit"
        return None

    def _same_origin(self, headers: dict[str, str]) -> bool:
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return False
        origin = headers.get("origin")
        if origin is None:  # not a browser, or a same-origin GET-like navigation
            return True
        return urlsplit(origin).netloc.lower() == headers.get("host", "").lower()

    async def _call_capped(self, scope: Any, receive: Any, send: Any) -> None:
        """The app, with its body cut off at the cap: whatever the app makes of the cut (a
        parse error, an exception), the answer is 413."""
        received, started, exceeded = 0, False, False
        too_large = f"body over the {self.max_body}-byte limit"

        async def counted() -> Any:
            nonlocal received, exceeded
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                exceeded = True
                raise BodyTooLarge
            return message

        async def tracked(message: Any) -> None:
            nonlocal started
            if exceeded:  # the app's answer to a cut body is replaced
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _answer(send, 413, too_large)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(BodyTooLarge):
            await self.app(scope, counted, tracked)
        if exceeded:
            self.refused(413)
            if not started:
                await _answer(send, 413, too_large)


def _with_headers(send: Any) -> Any:
    async def wrapped(message: Any) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *HEADERS]}
        await send(message)

    return wrapped


async def _answer(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
