"""The chief's inbox: the stream of epoch reports, trial ends, submits and cancels.

Each chief reads it under its own consumer name in one consumer group
(``keys.CHIEF_GROUP``) and acknowledges an entry in the round that commits what it
decided; the active chief takes over what other chiefs read but never acknowledged.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from tunecluster.store.fence import Writes
from tunecluster.store.keys import CHIEF_GROUP, Keys


class ChiefInbox:
    """The inbox as read by consumer ``consumer`` (a chief's id)."""

    def __init__(self, client: redis.Redis, keys: Keys, consumer: str) -> None:
        self.r = client
        self.k = keys
        self.consumer = consumer
        self._next_consumer_prune = 0.0

    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.k.inbox, CHIEF_GROUP, id="0",
                                            mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def take_over(self, min_idle_ms: int) -> int:
        """Move inbox entries another chief read but never acknowledged (it died, or was
        deposed) to this chief's pending list; returns how many. Also forgets consumers
        of chiefs long gone, so the group does not grow with every restart."""
        inbox, taken, start = self.k.inbox, 0, "0-0"
        while True:
            reply = self.r.xautoclaim(inbox, CHIEF_GROUP, self.consumer,
                                                 min_idle_ms, start_id=start, count=500)
            start, entries = reply[0], reply[1]
            taken += len(entries)
            if start in ("0-0", b"0-0"):
                break
        if time.monotonic() >= self._next_consumer_prune:
            self._next_consumer_prune = time.monotonic() + 300
            for consumer in self.r.xinfo_consumers(inbox, CHIEF_GROUP):
                if (consumer["name"] != self.consumer and int(consumer["pending"]) == 0
                        and int(consumer.get("idle", 0)) > 3_600_000):
                    self.r.xgroup_delconsumer(inbox, CHIEF_GROUP, consumer["name"])
        return taken

    def read(self, pending: bool, block_ms: int | None) -> list[Any]:
        """The inbox's next entries (``pending``: those read before but never
        acknowledged, without blocking; else new ones, waiting up to ``block_ms``, None:
        not at all)."""
        rows = self.r.xreadgroup(
            CHIEF_GROUP, self.consumer, {self.k.inbox: "0" if pending else ">"},
            count=500, block=None if pending else block_ms)
        return [entry for _stream, items in rows or [] for entry in items]

    def acknowledge(self, writes: Writes, entry_ids: list[Any]) -> None:
        """Stage the acknowledgement (and removal) of ``entry_ids`` into ``writes``."""
        writes.xack(self.k.inbox, CHIEF_GROUP, *entry_ids)
        writes.xdel(self.k.inbox, *entry_ids)
