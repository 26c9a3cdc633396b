"""Connecting to Redis from a URL, failing fast on bad credentials, backing off on outages.

``redis://[[user]:password@]host:port/db`` and ``rediss://`` (TLS) URLs are accepted.
Long-running roles wrap each loop iteration in ``Backoff``: a dropped connection
sleeps with exponential back-off and retries; an authentication error is fatal.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from tunecluster import defaults

log = logging.getLogger(__name__)


class AuthFailed(RuntimeError):
    """Redis refused our credentials (or demanded some): nothing will work until fixed."""


def connect(url: str | None = None, *, check: bool = True, decode: bool = True,
            retries: int = 20) -> redis.Redis:
    """A client for ``url``. Roles keep the default ``retries`` (about a minute of
    back-off per command); interactive commands pass a small number to fail fast."""
    url = url or defaults.REDIS_URL
    try:
        client = redis.Redis.from_url(
            url,
            decode_responses=decode,
            socket_connect_timeout=5,
            socket_keepalive=True,
            health_check_interval=15,
            # Ride out a Redis restart (about a minute) inside each command, so a trial
            # in the middle of an epoch report does not fail because Redis blinked; and
            # a full Redis (maxmemory, noeviction: it refuses every write, a script
            # before it runs, so nothing is half-written) until room is made.
            retry=Retry(ExponentialBackoff(cap=defaults.RECONNECT_BACKOFF_S[1],
                                           base=defaults.RECONNECT_BACKOFF_S[0]), retries),
            retry_on_error=list(RETRIED_BY_CLIENT),
        )
    except ValueError as exc:
        raise ValueError(f"--redis: {url!r} is not a Redis URL ({exc})") from None
    if check:
        _first_ping(url, decode, patient=retries > 1)
    return client


def _first_ping(url: str, decode: bool, patient: bool) -> None:
    """Prove the server and the credentials once, without the client's retries: redis-py
    counts AuthenticationError as a ConnectionError, so those would retry bad passwords.
    A patient caller (a role starting before Redis) waits up to a minute for the server.
    """
    probe = redis.Redis.from_url(url, decode_responses=decode, socket_connect_timeout=5)
    backoff = Backoff()
    deadline = time.monotonic() + (60.0 if patient else 0.0)
    try:
        while True:
            try:
                ping(probe, url)
                return
            except AuthFailed:
                raise
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
                if time.monotonic() >= deadline:
                    raise
                backoff.failed(exc)
    finally:
        probe.close()


def raw_client(client: redis.Redis) -> redis.Redis:
    """A client on the same server that returns bytes (for uploaded data files)."""
    kwargs = dict(client.connection_pool.connection_kwargs)
    kwargs["decode_responses"] = False
    pool = redis.ConnectionPool(connection_class=client.connection_pool.connection_class, **kwargs)
    return redis.Redis(connection_pool=pool)


def ping(client: redis.Redis, url: str = "") -> None:
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise AuthFailed(f"Redis authentication failed at {redact(url)}: {exc}") from None
    except redis.ResponseError as exc:
        if is_auth_error(exc):
            raise AuthFailed(f"Redis authentication failed at {redact(url)}: {exc}") from None
        raise


def is_auth_error(exc: BaseException) -> bool:
    if isinstance(exc, redis.AuthenticationError):
        return True
    text = str(exc).upper()
    return isinstance(exc, redis.ResponseError) and (
        "NOAUTH" in text or "WRONGPASS" in text or "NOPERM" in text
    )


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user + ':' if user else ':'}***@{host}"


class Backoff:
    """Exponential back-off for loops that must survive Redis restarts."""

    def __init__(self, first: float = defaults.RECONNECT_BACKOFF_S[0],
                 cap: float = defaults.RECONNECT_BACKOFF_S[1]) -> None:
        self.first, self.cap = first, cap
        self.delay = 0.0
        self.failures = 0

    def ok(self) -> None:
        if self.failures:
            log.info("redis connection restored after %d failed attempts", self.failures)
        self.delay, self.failures = 0.0, 0

    def failed(self, exc: BaseException) -> None:
        """Sleep before the next attempt; re-raise errors that retrying cannot fix."""
        if is_auth_error(exc):
            raise AuthFailed(f"Redis authentication failed: {exc}") from None
        self.failures += 1
        self.delay = min(self.cap, max(self.first, self.delay * 2))
        if self.failures == 1 or self.failures % 10 == 0:
            if isinstance(exc, redis.exceptions.OutOfMemoryError):
                log.warning("redis is full (maxmemory): writes refused, nothing written;"
                            " retrying in %.1fs (delete finished jobs or raise maxmemory)",
                            self.delay)
            else:
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, self.delay)
        time.sleep(self.delay)


# What every client of ``connect`` retries inside each command, with back-off: a dropped
# connection, a Redis still loading, and a full Redis (a write refused whole succeeds
# once room is made).
RETRIED_BY_CLIENT: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    redis.exceptions.OutOfMemoryError,
)
RETRYABLE: tuple[type[BaseException], ...] = (*RETRIED_BY_CLIENT, ConnectionError, OSError)


def retryable(exc: BaseException) -> bool:
    if is_auth_error(exc):
        return False
    if isinstance(exc, RETRYABLE):
        return True
    if isinstance(exc, redis.ResponseError):
        # A restarted Redis answers LOADING while it replays its AOF.
        return "LOADING" in str(exc).upper()
    return False


def wait_for(client: Any, attempts: int = 100, delay: float = 0.1) -> None:
    """Block until Redis answers (used right after starting a server)."""
    for _ in range(attempts):
        try:
            client.ping()
            return
        except redis.ConnectionError:
            time.sleep(delay)
    client.ping()
