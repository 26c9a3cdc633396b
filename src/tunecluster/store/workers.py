"""Worker registry and heartbeats: who is alive, and how many trial slots they offer."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import redis

from tunecluster.store.keys import Keys
from tunecluster.store.queue import now_ms


class WorkerRegistry:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.k = keys

    def heartbeat(self, worker: str, info: Mapping[str, Any], ttl_s: float) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.zadd(self.k.workers, {worker: now_ms()})
        pipe.hset(self.k.worker(worker), mapping={k: str(v) for k, v in info.items()})
        pipe.pexpire(self.k.worker(worker), int(ttl_s * 1000) * 3)
        pipe.execute()

    def remove(self, worker: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(self.k.workers, worker)
        pipe.delete(self.k.worker(worker))
        pipe.execute()

    def live(self, lease_s: float) -> dict[str, dict[str, str]]:
        """Workers whose heartbeat is younger than a lease, with their info."""
        ids = self.r.zrangebyscore(self.k.workers, now_ms() - int(lease_s * 1000), "+inf")
        pipe = self.r.pipeline(transaction=False)
        for worker in ids:
            pipe.hgetall(self.k.worker(worker))
        return {w: info for w, info in zip(ids, pipe.execute(), strict=True) if info}

    def total_slots(self, lease_s: float) -> int:
        total = 0
        for info in self.live(lease_s).values():
            try:
                total += max(0, int(info.get("slots", "1")))
            except ValueError:
                total += 1
        return total

    def prune(self, lease_s: float) -> list[str]:
        """Forget workers silent for ten leases (their trials were reaped long ago)."""
        dead = self.r.zrangebyscore(self.k.workers, "-inf", now_ms() - int(lease_s * 10_000))
        for worker in dead:
            self.remove(worker)
        return list(dead)


def default_worker_id() -> str:
    import os
    import secrets

    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
