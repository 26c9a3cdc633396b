"""Access to the dashboard: loopback by default, a token everywhere else.

Rules (``TokenAuth``, an ASGI middleware in front of every route):
- With a token (``$TUNECLUSTER_DASHBOARD_TOKEN``), every request needs it: the header
  ``Authorization: Bearer TOKEN``, or the cookie set by visiting any page once with
  ``?token=TOKEN`` (HttpOnly, SameSite=Strict; the page is then reloaded without the
  token in its address). A missing or wrong token gets 401; comparisons are constant time.
  ``/healthz`` (probes) is always open, and ``/metrics`` when ``open_metrics`` (scrapers
  cannot send a per-pod token; it holds counts, no names or hyperparameters).
- Without a token (loopback only, see ``check_bind``), the Host header must name the
  bound host or loopback: a web page elsewhere cannot reach the dashboard through DNS
  rebinding. Loopback is decided on addresses (a name is resolved first), never on how
  the name is spelled: ``127.evil.example`` is not loopback.
- The token is at least 16 characters with no white space, and not a documented example;
  an empty or blank one is refused at start, never taken as "no token".
- Every request that changes something (not GET/HEAD) must carry the header
  ``X-Tunecluster: 1``, which a cross-site form cannot send (no CSRF).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
from collections.abc import Iterable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_plus

from tunecluster.security import EXAMPLE_PASSWORDS, MIN_PASSWORD_LENGTH

TOKEN_ENV = "TUNECLUSTER_DASHBOARD_TOKEN"
COOKIE = "tc_dashboard"
ACTION_HEADER = "x-tunecluster"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def _loopback_address(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # fe80::1%eth0: the zone aside
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is loopback too
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the dashboard on this machine: an address that is
    loopback, or a name every one of whose addresses is (resolved as the bind resolves
    it; a name that does not resolve is not loopback)."""
    name = host.strip().removeprefix("[").removesuffix("]")
    if not name:
        return False
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
        return _loopback_address(name)
    except ValueError:
        pass
    try:
        found = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except (OSError, UnicodeError):
        return False
    return bool(found) and all(_loopback_address(str(a)) for a in found)


def check_token(token: str) -> None:
    """Raise ``ValueError`` (one line, without the token) for a token that is blank,
    holds white space, is short or is a documented example."""
    rule = (f"${TOKEN_ENV} must be at least {MIN_PASSWORD_LENGTH} characters with no"
            " spaces, and not a documented example (openssl rand -hex 24)")
    if not token:
        raise ValueError(f"{rule}; it is set but empty")
    if any(c.isspace() for c in token):
        raise ValueError(f"{rule}; it holds spaces or other white space")
    if len(token) < MIN_PASSWORD_LENGTH or token.lower() in EXAMPLE_PASSWORDS:
        raise ValueError(rule)


def check_bind(host: str, token: str | None) -> None:
    """Raise ``ValueError`` (one line) when the dashboard must not start so: a bad token
    (``check_token``; None is no token), or no token off loopback."""
    if token is not None:
        check_token(token)
    if not token and not is_loopback(host):
        raise ValueError(f"the dashboard refuses --host {host} without a token: set"
                         f" ${TOKEN_ENV} (openssl rand -hex 24), or bind 127.0.0.1")


def cookie_value(token: str) -> str:
    """What the cookie holds: a digest of the token (the token itself never sits in it)."""
    return hmac.new(token.encode(), b"tunecluster-dashboard-cookie", hashlib.sha256).hexdigest()


class TokenAuth:
    """The ASGI middleware that applies the module's rules."""

    def __init__(self, app: Any, token: str | None, *, open_metrics: bool = False,
                 hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.token = token or None
        self.open_paths = {"/healthz"} | ({"/metrics"} if open_metrics else set())
        self.hosts = set(LOOPBACK) | set(hosts)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in self.open_paths:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if self.token is None:
            host = _hostname(headers.get("host", ""))
            if host not in self.hosts:
                await _deny(send, 403, f"host {host!r} is not this dashboard's")
                return
        else:
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                              keep_blank_values=True)
            given = dict(query).get("token")
            if given is not None:
                if not hmac.compare_digest(given.encode(), self.token.encode()):
                    await _deny(send, 401, "wrong token")
                    return
                await _redirect(send, _address_without_token(scope), cookie_value(self.token))
                return
            if not self._authorized(headers):
                await _deny(send, 401, f"this dashboard needs its token (${TOKEN_ENV}):"
                                       " Authorization: Bearer TOKEN, or open ?token=TOKEN once")
                return
        if scope.get("method", "GET") not in ("GET", "HEAD") and \
                headers.get(ACTION_HEADER) != "1":
            await _deny(send, 403, f"actions need the header {ACTION_HEADER.title()}: 1")
            return
        await self.app(scope, receive, send)

    def _authorized(self, headers: dict[str, str]) -> bool:
        assert self.token is not None
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return hmac.compare_digest(auth[7:].strip().encode(), self.token.encode())
        jar = SimpleCookie()
        try:
            jar.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header is no credential
            return False
        morsel = jar.get(COOKIE)
        return morsel is not None and hmac.compare_digest(
            morsel.value.encode(), cookie_value(self.token).encode())


def _hostname(value: str) -> str:
    """The host part of a Host header (``[::1]:8080`` -> ``[::1]``)."""
    if value.startswith("["):
        return value.split("]")[0] + "]"
    return value.rsplit(":", 1)[0] if ":" in value else value


# What a path or query may keep as it is in a Location header; the rest is %-encoded.
PATH_SAFE = "/%-._~!$&'()*+,;=:@"
QUERY_SAFE = PATH_SAFE + "?"


def _address_without_token(scope: dict[str, Any]) -> str:
    """Where the token redirect sends the browser: this page on this dashboard, without
    the token. Built from the raw request target (re-quoted: no control or non-ASCII
    character can reach the header) and starting with exactly one slash, so that no
    browser reads it as another host (``//evil.example``, ``/\\evil.example``)."""
    raw = scope.get("raw_path") or scope.get("path", "/").encode()
    path = "/" + quote(raw, safe=PATH_SAFE).lstrip("/")
    kept = [part for part in scope.get("query_string", b"").split(b"&")
            if part and unquote_plus(part.split(b"=", 1)[0].decode("latin-1")) != "token"]
    query = "&".join(quote(part, safe=QUERY_SAFE) for part in kept)
    return path + (f"?{query}" if query else "")


async def _deny(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _redirect(send: Any, location: str, cookie: str) -> None:
    await send({"type": "http.response.start", "status": 303, "headers": [
        (b"location", location.encode("ascii")), (b"content-length", b"0"),
        (b"set-cookie", f"{COOKIE}={cookie}; HttpOnly; SameSite=Strict; Path=/".encode())]})
    await send({"type": "http.response.body", "body": b""})
