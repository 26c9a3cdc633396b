"""Worker registry and heartbeats: who is alive, and how many trial slots they offer."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import redis

from tunecluster.store.keys import Keys
from tunecluster.store.queue import server_ms

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
        self._heartbeat = client.register_script(_HEARTBEAT)

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

    def live(self, lease_s: float) -> dict[str, dict[str, str]]:
        """Workers whose heartbeat is younger than a lease, with their info."""
        ids = self.r.zrangebyscore(self.k.workers, server_ms(self.r) - int(lease_s * 1000),
                                   "+inf")
        pipe = self.r.pipeline(transaction=False)
        for worker in ids:
            pipe.hgetall(self.k.worker(worker))
        return {w: info for w, info in zip(ids, pipe.execute(), strict=True) if info}

    def total_slots(self, lease_s: float) -> int:
        return self.census(lease_s)[1]

    def census(self, lease_s: float) -> tuple[int, int]:
        """Live workers and the trial slots they offer together."""
        live = self.live(lease_s)
        total = 0
        for info in live.values():
            try:
                total += max(0, int(info.get("slots", "1")))
            except ValueError:
                total += 1
        return len(live), total

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
