"""Redis through Sentinel: the URL form and a client that follows the primary.

``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/SERVICE[/db]``

- the hosts are the sentinels (port 26379 unless given; ``[::1]:26379`` for IPv6);
- ``SERVICE`` is the name the sentinels monitor (``sentinel monitor SERVICE ...``);
- ``db`` is the database number on the primary (0 unless given);
- user and password are the *primary's* (``requirepass``/ACL), percent-encoded like any
  URL's; the sentinels themselves are asked without credentials.

A client made here asks the sentinels for the primary's address whenever it opens a
connection (redis-py's ``SentinelConnectionPool``): after a failover, the next command
that finds its connection dropped (or the old primary read-only, or a blocking read
unblocked by the demotion) reconnects to the promoted replica, inside the same retry and
back-off as any dropped connection. Nothing restarts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

SCHEME = "redis+sentinel"
DEFAULT_PORT = 26379
FORM = "redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/SERVICE[/db]"
# The sentinels answer at once or not at all: a short timeout moves on to the next one.
SENTINEL_KWARGS: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 2.0,
                                   "socket_keepalive": True}
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HOST = re.compile(r"[A-Za-z0-9._-]{1,253}")


@dataclass(frozen=True)
class SentinelURL:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() == SCHEME


def parse(url: str) -> SentinelURL:
    """The parts of a Sentinel URL; ``ValueError`` (one line naming the field, the
    value and what is allowed) for anything else. The message never shows a password
    (nor the URL: ``connection.connect`` puts the redacted URL in front)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != SCHEME:
        raise _bad("scheme", scheme, f"{SCHEME}://")
    creds, at, tail = rest.rpartition("@")
    if not at:
        creds, tail = "", rest
    cut = min((i for i in (tail.find("?"), tail.find("#")) if i >= 0), default=-1)
    if cut >= 0:
        raise _bad("query", tail[cut:], "none: every setting is in the path")
    hosts, _, path = tail.partition("/")
    username = password = None
    if at:
        user, colon, secret = creds.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_address(item) for item in hosts.split(","))
    service, _, db_text = path.partition("/")
    if not _SERVICE.fullmatch(service):
        raise _bad("service name", service,
                   "the name the sentinels monitor: letters, digits, '.', '_', '-'")
    db = 0
    if db_text:
        if not db_text.isdigit() or int(db_text) > 1_000_000:
            raise _bad("db", db_text, "a database number (0, 1, ...) after the service")
        db = int(db_text)
    return SentinelURL(sentinels, service, db, username, password)


def _address(item: str) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, close, port_text = item[1:].partition("]")
        if not close or (port_text and not port_text.startswith(":")):
            raise _bad("sentinel address", item, "[ipv6]:port")
        port_text = port_text[1:]
        ok = bool(host) and all(c in "0123456789abcdefABCDEF:." for c in host)
    else:
        host, _, port_text = item.partition(":")
        ok = bool(_HOST.fullmatch(host))
    if not ok:
        raise _bad("sentinel host", item or "(empty)",
                   "a host name or address, sentinels separated by ','")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise _bad("sentinel port", port_text, f"1 to 65535 (default {DEFAULT_PORT})")
    return host, int(port_text)


def _bad(field: str, value: str, allowed: str) -> ValueError:
    return ValueError(f"bad {field} {value!r}; allowed: {allowed} (the form is {FORM})")


class PrimaryConnection(SentinelManagedConnection):
    """A connection to the primary that asks the sentinels where it is on *every*
    reconnect. redis-py's re-send of a command after a dropped connection reconnects the
    same connection object to its last host (``send_packed_command``), not through the
    sentinels: after a failover that is the dead primary, again and again."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()  # SentinelManagedConnection.connect: the sentinels' answer
        super().send_packed_command(command, check_health)


def master_client(url: str, **settings: Any) -> redis.Redis:
    """A client of the primary that ``url``'s sentinels name now and after a failover;
    ``settings`` are those of any connection (timeouts, retry, decoding)."""
    spec = parse(url)
    manager = Sentinel(spec.sentinels, sentinel_kwargs=SENTINEL_KWARGS)
    return manager.master_for(spec.service, redis_class=redis.Redis, db=spec.db,
                              username=spec.username, password=spec.password,
                              connection_class=PrimaryConnection, **settings)


def is_sentinel_pool(pool: Any) -> bool:
    return isinstance(pool, SentinelConnectionPool)


def sibling_pool(pool: SentinelConnectionPool, **changes: Any) -> SentinelConnectionPool:
    """A new pool on the same service and sentinels with ``changes`` to its settings."""
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k != "connection_pool"}
    kwargs.update(changes)
    return SentinelConnectionPool(pool.service_name, pool.sentinel_manager,
                                  is_master=pool.is_master,
                                  connection_class=pool.connection_class, **kwargs)


def close(client: redis.Redis) -> None:
    """Close ``client`` and, for a Sentinel client, its connections to the sentinels."""
    pool = client.connection_pool
    client.close()
    if is_sentinel_pool(pool):
        pool.disconnect()
        pool.sentinel_manager.close()
