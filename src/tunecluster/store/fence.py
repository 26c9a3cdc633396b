"""Fenced writes: everything the chief writes is conditional on still holding its lock.

Contract:
- ``Fence(lock_key, token)`` names the chief lock and the value its holder wrote there.
  A chief that lost the lock (it stalled past the lock's expiry, Redis restarted, a
  standby took over) can still be running; every write it makes must then be refused.
- ``Writes`` records Redis commands now and applies them later in one Lua script that
  first checks ``GET lock == token`` and only then writes: all of them or none, and
  nothing when the caller is deposed (``LostLeadership``).
- A ``request_id`` makes the application idempotent: redis-py re-sends a script after a
  dropped connection, and the second run finds the first one's mark and does nothing.
- ``Fence.NONE`` (an empty lock key) applies the same writes unconditionally, for the
  roles that hold no lock (submit, cancel, delete from the CLI).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import redis

from tunecluster.errors import TuneclusterError
from tunecluster.store.connection import script

REQUEST_TTL_MS = 600_000

# KEYS: lock ('' = unfenced), request ('' = none), sequence ('' = none)
# ARGV: token, ops (JSON list of lists), expected sequence ('' = no check)
# Returns -1 when fenced out, -2 when the sequence moved (Redis lost or gained commits
# behind the caller's back), 0 when this request was already applied, else #ops.
_APPLY = """
if KEYS[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if KEYS[2] ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if KEYS[3] ~= '' and (redis.call('GET', KEYS[3]) or '0') ~= ARGV[3] then return -2 end
local ops = cjson.decode(ARGV[2])
for _, op in ipairs(ops) do redis.call(unpack(op)) end
if KEYS[2] ~= '' then redis.call('SET', KEYS[2], '1', 'PX', TTL_MS) end
if KEYS[3] ~= '' then redis.call('INCR', KEYS[3]) end
return #ops
""".replace("TTL_MS", str(REQUEST_TTL_MS))

# KEYS: lock | ARGV: token, ttl_ms. Extends the lock only if the caller holds it.
_EXTEND_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: lock | ARGV: token. Deletes the lock only if the caller holds it.
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LostLeadership(TuneclusterError):
    """The chief lock is no longer ours: nothing was written; stand by."""


class StaleState(TuneclusterError):
    """Redis no longer holds what this chief last committed (it restarted and lost the
    last writes, or was restored from an older copy): reload everything from Redis."""


@dataclass(frozen=True)
class Fence:
    lock_key: str
    token: str

    NONE: ClassVar[Fence]

    @property
    def active(self) -> bool:
        return bool(self.lock_key)

    def release(self, client: redis.Redis) -> bool:
        """Give the lock up, atomically, only if it is still ours."""
        if not self.active:
            return False
        return bool(script(client, _RELEASE_LOCK)(keys=[self.lock_key],
                                                          args=[self.token]))

    def extend(self, client: redis.Redis, ttl_ms: int) -> bool:
        """Extend the lock's expiry, only if it is still ours (never acquires it)."""
        return bool(script(client, _EXTEND_LOCK)(keys=[self.lock_key],
                                                         args=[self.token, ttl_ms]))


Fence.NONE = Fence("", "")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


class Writes:
    """Redis write commands recorded in order, applied later as one atomic, fenced step.

    The method names and arguments are redis-py's, so store code can stage into either.
    """

    def __init__(self) -> None:
        self.ops: list[list[str]] = []

    def __len__(self) -> int:
        return len(self.ops)

    def _add(self, *args: Any) -> Writes:
        self.ops.append([_text(a) for a in args])
        return self

    def hset(self, key: str, field: str | None = None, value: Any = None,
             mapping: Mapping[str, Any] | None = None) -> Writes:
        pairs: list[Any] = [] if field is None else [field, value]
        for k, v in (mapping or {}).items():
            pairs += [k, v]
        return self._add("HSET", key, *pairs) if pairs else self

    def hsetnx(self, key: str, field: str, value: Any) -> Writes:
        return self._add("HSETNX", key, field, value)

    def hdel(self, key: str, *fields: str) -> Writes:
        return self._add("HDEL", key, *fields) if fields else self

    def zadd(self, key: str, mapping: Mapping[str, float]) -> Writes:
        args: list[Any] = []
        for member, score in mapping.items():
            args += [repr(float(score)), member]
        return self._add("ZADD", key, *args) if args else self

    def zrem(self, key: str, *members: str) -> Writes:
        return self._add("ZREM", key, *members) if members else self

    def rpush(self, key: str, *values: Any) -> Writes:
        return self._add("RPUSH", key, *values)

    def lpush(self, key: str, *values: Any) -> Writes:
        return self._add("LPUSH", key, *values)

    def ltrim(self, key: str, start: int, end: int) -> Writes:
        return self._add("LTRIM", key, start, end)

    def set(self, key: str, value: Any, px: int | None = None) -> Writes:
        return self._add("SET", key, value, *(["PX", px] if px else []))

    def delete(self, *keys: str) -> Writes:
        return self._add("DEL", *keys) if keys else self

    def xadd(self, key: str, fields: Mapping[str, Any], maxlen: int | None = None,
             approximate: bool = True) -> Writes:
        trim: list[Any] = ["MAXLEN", "~" if approximate else "=", maxlen] if maxlen else []
        flat: list[Any] = []
        for k, v in fields.items():
            flat += [k, v]
        return self._add("XADD", key, *trim, "*", *flat)

    def xack(self, key: str, group: str, *ids: str) -> Writes:
        return self._add("XACK", key, group, *ids) if ids else self

    def xdel(self, key: str, *ids: str) -> Writes:
        return self._add("XDEL", key, *ids) if ids else self

    def extend(self, ops: Iterable[list[str]]) -> Writes:
        self.ops.extend(list(op) for op in ops)
        return self

    def apply(self, client: redis.Redis, fence: Fence = Fence.NONE,
              request_key: str = "", sequence: tuple[str, int] | None = None) -> int:
        """Apply every recorded write at once; raises LostLeadership when fenced out.

        ``sequence`` (key, expected value) makes the step also conditional on a counter
        that every such step increments: StaleState when Redis moved (lost commits).
        Returns the number of writes applied (0 for a request already applied)."""
        if not self.ops and not fence.active and sequence is None:
            return 0
        import json

        seq_key, expected = sequence if sequence else ("", 0)
        answer = int(script(client, _APPLY)(
            keys=[fence.lock_key, request_key, seq_key],
            args=[fence.token, json.dumps(self.ops), str(expected)]))
        if answer == -1:
            raise LostLeadership("the chief lock is held by another chief; nothing written")
        if answer == -2:
            raise StaleState("Redis no longer holds this chief's last commit; nothing written")
        return answer
