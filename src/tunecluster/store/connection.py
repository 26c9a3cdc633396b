"""Connecting to Redis from a URL, failing fast on bad credentials, backing off on outages.

``redis://[[user]:password@]host:port/db`` and ``rediss://`` (TLS) URLs are accepted, and
``redis+sentinel://[[user]:password@]host:port,host:port,.../SERVICE[/db]``: the primary
that the sentinels name, followed through failovers (``store/sentinel.py``).
Long-running roles wrap each loop iteration in ``Backoff``: a dropped connection
sleeps with exponential back-off and retries; an authentication error is fatal.

A patient client (``retries`` > 1) logs an outage once as it starts, every minute while
it lasts and once when Redis answers again; its retries stop at once after
``stop_retrying`` (a role told to stop does not ride out an outage first). A role's
client also gives up on a reply after ``for_role``'s socket timeout: a Redis that
accepts and never answers (stopped, or behind a broken network) is an outage too.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from tunecluster import defaults
from tunecluster.errors import TuneclusterError
from tunecluster.store import sentinel

log = logging.getLogger(__name__)

# A role's socket timeout (``for_role``): well above any reply a working Redis takes
# (the roles' blocking reads wait a second at most), short enough to notice a Redis
# that stopped answering.
ROLE_TIMEOUT_S = float(os.environ.get("TUNECLUSTER_REDIS_TIMEOUT_S", "10"))
OUTAGE_NOTE_S = 60.0  # while an outage lasts, a line this often


class AuthFailed(TuneclusterError, RuntimeError):
    """Redis refused our credentials (or demanded some): nothing will work until fixed."""


def connect(url: str | None = None, *, check: bool = True, decode: bool = True,
            retries: int = 20) -> redis.Redis:
    """A client for ``url``. Roles keep the default ``retries`` (about a minute of
    back-off per command); interactive commands pass a small number to fail fast."""
    url = url or defaults.REDIS_URL
    try:
        client = _client(
            url,
            decode_responses=decode,
            socket_connect_timeout=5,
            socket_keepalive=True,
            health_check_interval=15,
            # Ride out a Redis restart (about a minute) inside each command, so a trial
            # in the middle of an epoch report does not fail because Redis blinked; and
            # a full Redis (maxmemory, noeviction: it refuses every write, a script
            # before it runs, so nothing is half-written) until room is made.
            retry=_WatchedRetry(ExponentialBackoff(cap=defaults.RECONNECT_BACKOFF_S[1],
                                                   base=defaults.RECONNECT_BACKOFF_S[0]),
                                retries, _Watch(url, report=retries > 1)),
            retry_on_error=list(RETRIED_BY_CLIENT),
        )
    except ValueError as exc:
        if sentinel.is_sentinel_url(url):
            raise ValueError(f"--redis: {redact(url)}: {exc}") from None
        raise ValueError(f"--redis: {redact(url)!r} is not a Redis URL ({exc})") from None
    if check:
        _first_ping(url, decode, patient=retries > 1)
    return client


def _client(url: str, **settings: Any) -> redis.Redis:
    if sentinel.is_sentinel_url(url):
        return sentinel.master_client(url, **settings)
    return redis.Redis.from_url(url, **settings)


def _first_ping(url: str, decode: bool, patient: bool) -> None:
    """Prove the server and the credentials once, without the client's retries: redis-py
    counts AuthenticationError as a ConnectionError, so those would retry bad passwords.
    A patient caller (a role starting before Redis) waits up to a minute for the server.
    """
    probe = _client(url, decode_responses=decode, socket_connect_timeout=5)
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
        sentinel.close(probe)


class _Watch:
    """One client's outage log and stop flag, shared by all its connections (redis-py
    deep-copies the ``Retry`` into each connection: a copy of this is itself)."""

    def __init__(self, url: str, report: bool) -> None:
        self.url, self.report = redact(url), report
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._next_note = 0.0

    def __deepcopy__(self, memo: dict[int, Any]) -> _Watch:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled with a Store's settings (Ray ships them, tunecluster.ray.searcher): a
        # fresh watch there, since locks and events do not pickle.
        return (_Watch, (self.url, self.report))

    def retrying(self, _exc: BaseException) -> bool:
        return not self.stopped.is_set()

    def failed(self, exc: BaseException) -> None:
        if not self.report:
            return
        now = time.monotonic()
        with self._lock:
            first = self._down_since is None
            if not first and now < self._next_note:
                return
            if first:
                self._down_since = now
            self._next_note = now + OUTAGE_NOTE_S
            since = now - (self._down_since or now)
        if isinstance(exc, redis.exceptions.OutOfMemoryError):
            log.warning("redis is full (maxmemory) at %s: writes refused, nothing written;"
                        " retrying", self.url)
        elif first:
            log.warning("redis unreachable at %s (%s); retrying until it answers", self.url,
                        exc)
        else:
            log.warning("redis still unreachable at %s after %.0f s (%s)", self.url, since, exc)

    def answered(self) -> None:
        if self._down_since is None:  # the usual case: no lock taken
            return
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            log.warning("redis answers again at %s after %.1f s", self.url,
                        time.monotonic() - since)


class _WatchedRetry(Retry):
    """redis-py's retry of each command, which logs outages and stops on request."""

    def __init__(self, backoff: ExponentialBackoff, retries: int, watch: _Watch) -> None:
        super().__init__(backoff, retries, is_retryable=watch.retrying)
        self.watch = watch

    def call_with_retry(self, do: Callable[[], Any], fail: Callable[..., Any],
                        *args: Any, **kwargs: Any) -> Any:
        watch = self.watch

        def done() -> Any:
            result = do()
            # A reply, not a connection's set-up (None, or a socket: a stopped Redis's
            # kernel still accepts connections) nor a connection already open.
            if result is not None and not isinstance(result, socket.socket):
                watch.answered()
            return result

        def failed(error: Exception, *more: Any) -> Any:
            watch.failed(error)
            return fail(error, *more)

        return super().call_with_retry(done, failed, *args, **kwargs)


def _watch_of(client: redis.Redis) -> _Watch | None:
    retry = client.connection_pool.connection_kwargs.get("retry")
    return retry.watch if isinstance(retry, _WatchedRetry) else None


def stop_retrying(client: redis.Redis) -> None:
    """From now on, a command of ``client`` that fails raises at once (a role that was
    told to stop): what it was waiting for is no longer wanted."""
    watch = _watch_of(client)
    if watch is not None:
        watch.stopped.set()


def for_role(client: redis.Redis, longest_block_s: float = 1.0) -> None:
    """Make a long-running role's client give up on a reply after ``ROLE_TIMEOUT_S``
    (longer than its longest blocking read, ``longest_block_s``), so that a Redis that
    stopped answering is retried and logged like one that refuses connections. Only the
    roles': a client's blocking reads may wait longer (``Job.events(block_s=)``)."""
    pool = client.connection_pool
    pool.connection_kwargs["socket_timeout"] = max(ROLE_TIMEOUT_S, longest_block_s + 5)
    pool.disconnect()
    pool.reset()  # connections made before take the timeout too: new ones replace them


def raw_client(client: redis.Redis) -> redis.Redis:
    """A client on the same server that returns bytes (for uploaded data files)."""
    if sentinel.is_sentinel_pool(client.connection_pool):  # follows the primary too
        return redis.Redis(connection_pool=sentinel.sibling_pool(client.connection_pool,
                                                                 decode_responses=False))
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
                 cap: float = defaults.RECONNECT_BACKOFF_S[1],
                 stop: threading.Event | None = None) -> None:
        self.first, self.cap = first, cap
        self.stop = stop  # set: the wait ends at once (a role told to stop)
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
        if self.stop is not None:
            self.stop.wait(self.delay)
        else:
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
# NoScriptError: Redis restarted (or flushed its scripts) under the caller, whose retry
# of the command then found the script gone; done again, the script is loaded again.
RETRYABLE: tuple[type[BaseException], ...] = (*RETRIED_BY_CLIENT, ConnectionError, OSError,
                                              redis.exceptions.NoScriptError)

# How many times a script call loads its script again when Redis has lost it.
SCRIPT_RELOADS = 5


class Script(redis.commands.core.Script):
    """A Lua script that loads itself again each time Redis answers NOSCRIPT.

    redis-py's own ``Script`` loads it once and tries once more. When that second try
    waits out a full Redis (``RETRIED_BY_CLIENT``) and Redis restarts meanwhile, its
    script cache is empty again and the NOSCRIPT escaped: a chief died of it in a soak.
    A script that did not run wrote nothing, so calling it again is safe."""

    def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        for _ in range(SCRIPT_RELOADS):
            try:
                return super().__call__(keys or [], args or [], client)
            except redis.exceptions.NoScriptError:
                continue
        return super().__call__(keys or [], args or [], client)


def script(client: Any, body: str) -> Script:
    """``client.register_script(body)``, reloading itself as ``Script`` says."""
    return Script(client, body)


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
