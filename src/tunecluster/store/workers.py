"""Worker registry and heartbeats: who is alive, and how many trial slots they offer."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import redis

from tunecluster.store.connection import script
from tunecluster.store.keys import Keys, split_member
from tunecluster.store.queue import server_ms
from tunecluster.store.records import hashes, worker_info

# Heartbeats are scored with Redis server time, which is what the chief compares them
# with: a worker whose clock is skewed is still seen alive exactly as long as it beats.
# KEYS: workers, worker | ARGV: worker id, ttl_ms, field, value, ...
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], 'beat', now, unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return now
"""


class WorkerRegistry:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.k = keys
        self._heartbeat = script(client, _HEARTBEAT)

    def heartbeat(self, worker: str, info: Mapping[str, Any], ttl_s: float) -> None:
        """Say this worker is alive; ``info`` fields land in its record (``beat`` is set
        to Redis time here, whatever the caller put there)."""
        flat: list[str] = []
        for k, v in info.items():
            if k != "beat":
                flat += [k, str(v)]
        self._heartbeat(keys=[self.k.workers, self.k.worker(worker)],
                        args=[worker, int(ttl_s * 1000) * 3, *flat])

    def remove(self, worker: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(self.k.workers, worker)
        pipe.delete(self.k.worker(worker))
        pipe.execute()

    def live(self, lease_s: float) -> dict[str, dict[str, Any]]:
        """Workers whose heartbeat is younger than a lease, with their info decoded
        (``records.worker_info``: numbers are ints; a garbled one is flagged in
        ``malformed`` and offers no slot). A record that is no hash is left out."""
        ids = self.r.zrangebyscore(self.k.workers, server_ms(self.r) - int(lease_s * 1000),
                                   "+inf")
        rows = hashes(self.r, [self.k.worker(w) for w in ids])
        return {w: worker_info(info) for w, info in zip(ids, rows, strict=True) if info}

    def total_slots(self, lease_s: float) -> int:
        return self.census(lease_s)[1]

    def census(self, lease_s: float) -> tuple[int, int]:
        """Live workers and the trial slots they offer together."""
        live = self.live(lease_s)
        return len(live), sum(info["slots"] for info in live.values())

    def current_trials(self) -> dict[str, list[str]]:
        """Worker id -> the "{job}/{trial}" members of the running trials it holds (from
        the lease set and each trial's ``worker``; forged members are left out)."""
        members = [m for m in self.r.zrange(self.k.leases, 0, -1) if all(split_member(m))]
        rows = hashes(self.r, [self.k.trial(*split_member(m)) for m in members])
        current: dict[str, list[str]] = {}
        for m, row in zip(members, rows, strict=True):
            if row and row.get("worker"):
                current.setdefault(row["worker"], []).append(m)
        return current

    def prune(self, lease_s: float) -> list[str]:
        """Forget workers silent for ten leases (their trials were reaped long ago)."""
        dead = self.r.zrangebyscore(self.k.workers, "-inf",
                                    server_ms(self.r) - int(lease_s * 10_000))
        for worker in dead:
            self.remove(worker)
        return list(dead)


def default_worker_id() -> str:
    import os
    import secrets

    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
