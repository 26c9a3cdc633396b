"""A Store as settings that travel: picklable, and as a URL for a child process.

The Ray scheduler hands its Store to objects Ray pickles (the searcher, the callbacks)
and to the driver process it starts; this is how a Store's connection becomes data and
back, with the credentials kept out of anything pickled.
"""

from __future__ import annotations

from typing import Any

import redis

from tunecluster.store import Store
from tunecluster.store.keys import Keys

# Credentials never travel inside pickled objects (Ray's object store, Tune's experiment
# files on the artifacts volume): only where to connect does. The process that rebuilds
# a Store takes the password from its own environment (TUNECLUSTER_REDIS_URL: the Ray
# head's pod has it from the Secret), or from the process that pickled it.
SECRET_KWARGS = ("password", "credential_provider")
_local_secrets: dict[tuple[Any, ...], dict[str, Any]] = {}


def _where(kwargs: dict[str, Any]) -> tuple[Any, ...]:
    return (kwargs.get("host"), kwargs.get("port"), kwargs.get("path"), kwargs.get("db"),
            kwargs.get("username"))


def store_state(store: Store) -> dict[str, Any]:
    """A Store as picklable connection settings without its credentials (Ray client mode
    ships these objects; Tune also writes them to the experiment directory)."""
    from redis.retry import Retry

    pool = store.client.connection_pool
    kwargs = {}
    for key, value in pool.connection_kwargs.items():
        if key in SECRET_KWARGS:
            continue
        # settings only: redis-py's helper objects (handlers, registries) are rebuilt
        if value is None or isinstance(value, (str, bytes, int, float, bool, Retry)) or (
                isinstance(value, (list, tuple)) and all(isinstance(v, type) for v in value)):
            kwargs[key] = value
    secrets = {k: pool.connection_kwargs[k] for k in SECRET_KWARGS
               if pool.connection_kwargs.get(k) is not None}
    if secrets:
        _local_secrets[_where(kwargs)] = secrets
    return {"class": pool.connection_class, "kwargs": kwargs, "prefix": store.keys.p}


def _credentials(kwargs: dict[str, Any]) -> dict[str, Any]:
    """This process's credentials for the server ``kwargs`` name."""
    import os
    from urllib.parse import unquote, urlsplit

    from tunecluster import defaults

    if _where(kwargs) in _local_secrets:  # unpickled where it was pickled
        return dict(_local_secrets[_where(kwargs)])
    url = os.environ.get(defaults.REDIS_URL_ENV)
    if not url:
        return {}
    parts = urlsplit(url)
    out: dict[str, Any] = {}
    if parts.password is not None:
        out["password"] = unquote(parts.password)
    if parts.username and not kwargs.get("username"):
        out["username"] = unquote(parts.username)
    return out


def store_from_state(state: dict[str, Any]) -> Store:
    kwargs = {**state["kwargs"], **_credentials(state["kwargs"])}
    pool = redis.ConnectionPool(connection_class=state["class"], **kwargs)
    return Store(redis.Redis(connection_pool=pool), Keys(state["prefix"]))


def redis_url(store: Store) -> str:
    """The URL of the server ``store`` connects to, credentials included (for the child
    only: it is never logged, written or put on a command line)."""
    from urllib.parse import quote

    pool = store.client.connection_pool
    kw = pool.connection_kwargs
    user, password = kw.get("username") or "", kw.get("password") or ""
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user or password else ""
    db = int(kw.get("db") or 0)
    if kw.get("path"):  # a Unix socket
        return f"unix://{auth}{kw['path']}?db={db}"
    scheme = "rediss" if "SSL" in pool.connection_class.__name__ else "redis"
    return f"{scheme}://{auth}{kw.get('host', '127.0.0.1')}:{int(kw.get('port') or 6379)}/{db}"


def prefix(store: Store) -> str:
    """The key prefix ``store`` works under (``tc`` unless set)."""
    return str(store.keys.p)
