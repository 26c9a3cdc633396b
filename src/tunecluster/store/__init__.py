"""The control plane on Redis: the only place where chief and workers meet.

``Store`` bundles the parts: ``jobs`` (records, submit, cancel), ``queue`` (trials with
leases), ``events`` (per-job stream), ``workers`` (heartbeats). Every key is named in
``keys.py``; only JSON crosses Redis (``codec.py``).
"""

from __future__ import annotations

import redis

from tunecluster.store.connection import AuthFailed, Backoff, connect, raw_client, redact
from tunecluster.store.events import Event, EventLog
from tunecluster.store.jobs import ACTIVE_STATES, FINAL_STATES, JobRecord, JobStore
from tunecluster.store.keys import Keys, member, split_member
from tunecluster.store.queue import Claim, LostLease, TrialQueue, now_ms
from tunecluster.store.workers import WorkerRegistry


class Store:
    def __init__(self, client: redis.Redis, keys: Keys | None = None) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.jobs = JobStore(client, self.keys)
        self.queue = TrialQueue(client, self.keys)
        self.events = EventLog(client, self.keys)
        self.workers = WorkerRegistry(client, self.keys)

    @classmethod
    def from_url(cls, url: str | None = None, retries: int = 20) -> Store:
        return cls(connect(url, retries=retries))

    def chief(self) -> str | None:
        """The id of the chief holding the cluster's lock, or None (no chief in office)."""
        holder = self.client.get(self.keys.chief_lock)
        return None if holder is None else str(holder)

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
