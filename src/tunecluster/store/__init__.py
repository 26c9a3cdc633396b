"""The control plane on Redis: the only place where chief and workers meet.

``Store`` bundles the parts: ``jobs`` (records, submit, cancel), ``queue`` (trials with
leases), ``events`` (per-job stream), ``workers`` (heartbeats). Every key is named in
``keys.py``; only JSON crosses Redis (``codec.py``).
"""

from __future__ import annotations

import redis

from tunecluster.store import telemetry
from tunecluster.store.connection import (
    AuthFailed,
    Backoff,
    connect,
    for_role,
    raw_client,
    redact,
    stop_retrying,
)
from tunecluster.store.control import ChiefControl
from tunecluster.store.events import Event, EventLog
from tunecluster.store.fence import Fence, Writes
from tunecluster.store.jobs import ACTIVE_STATES, FINAL_STATES, JobRecord, JobStore
from tunecluster.store.keys import Keys, member, split_member
from tunecluster.store.queue import Claim, LostLease, TrialQueue, now_ms, server_ms
from tunecluster.store.workers import WorkerRegistry


class Store:
    def __init__(self, client: redis.Redis, keys: Keys | None = None) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.jobs = JobStore(client, self.keys)
        self.queue = TrialQueue(client, self.keys)
        self.events = EventLog(client, self.keys)
        self.workers = WorkerRegistry(client, self.keys)
        self.control = ChiefControl(client, self.keys)

    @classmethod
    def from_url(cls, url: str | None = None, retries: int = 20) -> Store:
        return cls(connect(url, retries=retries))

    def chief(self) -> str | None:
        """The id of the chief holding the cluster's lock, or None (no chief in office)."""
        holder = self.client.get(self.keys.chief_lock)
        return None if holder is None else str(holder)

    def chief_beat(self) -> int | None:
        """Redis time (ms) of the active chief's last beat, or None (none beats)."""
        beat = self.client.get(self.keys.chief_beat)
        try:
            return None if beat is None else int(beat)
        except ValueError:  # foreign data: no beat to trust
            return None

    def apply(self, writes: Writes, fence: Fence = Fence.NONE) -> None:
        """Apply ``writes`` (staged by the parts' ``stage_*``) at once, fenced."""
        writes.apply(self.client, fence)

    def for_role(self, longest_block_s: float = 1.0) -> None:
        """A long-running role's client: see ``connection.for_role``."""
        for_role(self.client, longest_block_s=longest_block_s)

    def stop_retrying(self) -> None:
        """A role told to stop: see ``connection.stop_retrying``."""
        stop_retrying(self.client)

    def ping(self) -> bool:
        return bool(self.client.ping())

    def now_ms(self) -> int:
        """Redis server time in ms: the one clock every host agrees on."""
        return server_ms(self.client)

    def census(self) -> tuple[int, bool, list[str]]:
        """For the metrics, in one round trip: trials holding a lease, whether a chief
        holds the lock, and every job id."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(self.keys.leases)
        pipe.exists(self.keys.chief_lock)
        pipe.zrange(self.keys.jobs_all, 0, -1)
        running, chief, jobs = pipe.execute()
        return int(running), bool(chief), list(jobs)

    def telemetry(self) -> telemetry.Snapshot:
        """The cluster's counters and histograms (``telemetry.read``)."""
        return telemetry.read(self.client, self.keys)

    def name_connection(self, name: str) -> None:
        """Name this connection in Redis's CLIENT LIST (to find a reader among many)."""
        self.client.client_setname(name)

    def close(self) -> None:
        self.client.close()

    def raw(self) -> redis.Redis:
        """A client on the same server that answers bytes (uploaded files, blobs); the
        caller closes it."""
        return raw_client(self.client)


__all__ = [
    "ACTIVE_STATES",
    "FINAL_STATES",
    "AuthFailed",
    "Backoff",
    "Claim",
    "Event",
    "JobRecord",
    "Keys",
    "LostLease",
    "Store",
    "connect",
    "member",
    "now_ms",
    "raw_client",
    "redact",
    "split_member",
]
