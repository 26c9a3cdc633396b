"""The per-job event stream: what happened, in order (``watch`` tails it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from tunecluster.store import codec
from tunecluster.store.keys import Keys
from tunecluster.store.records import read_or


@dataclass
class Event:
    id: str
    type: str
    data: dict[str, Any]


class EventLog:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.k = keys

    def read(self, job: str, after: str = "0-0", block_ms: int | None = None,
             count: int = 500) -> list[Event]:
        # a key of the wrong type (foreign data) reads as no events
        rows = read_or([], self.r.xread, {self.k.events(job): after}, count, block_ms)
        events = []
        for _stream, entries in rows or []:
            for entry_id, fields in entries:
                try:
                    data = codec.loads_object(fields.get("data", "{}"), "event")
                except Exception:
                    data = {"raw": fields.get("data")}
                events.append(Event(entry_id, fields.get("type", "?"), data))
        return events

    def last_id(self, job: str) -> str:
        """The id of the job's last event ("0-0": none, or no stream)."""
        last = read_or([], self.r.xrevrange, self.k.events(job), "+", "-", 1)
        return str(last[0][0]) if last else "0-0"
