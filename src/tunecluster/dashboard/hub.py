"""One shared reader of each job's event stream, fanned out to every open page.

Contract:
- Per job with at least one subscriber, exactly one thread runs a blocking ``XREAD``
  (``EventLog.read``, at most ``block_ms`` per call) on the job's stream and hands each
  event to every subscriber's asyncio queue: N open pages cost Redis one reader, not N.
  The thread ends once the job has no subscriber left (checked after every read).
- An event reaches the subscribers as soon as ``XREAD`` returns it (no polling interval).
- ``version(job)`` is the id of the last event the reader saw (None with no reader):
  the dashboard's job cache is valid while it does not change, so pages that refetch
  after an event share one rebuild.
- A subscriber that falls behind by ``QUEUE_SIZE`` events gets a ``resync`` event (and
  refetches) instead of an unbounded queue.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunecluster.store import Event, Store

log = logging.getLogger("tunecluster.dashboard")
# The name of the readers' Redis connections (CLIENT LIST shows who reads what).
CLIENT_NAME = "tunecluster-dashboard-hub"
QUEUE_SIZE = 1000
RESYNC = Event("0-0", "resync", {})


@dataclass
class _Feed:
    job: str
    subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Event]]] = \
        field(default_factory=set)
    last_id: str | None = None
    thread: threading.Thread | None = None


class Hub:
    """Shared per-job event readers (see the module's contract)."""

    def __init__(self, store_factory: Callable[[], Store], block_ms: int = 1000) -> None:
        self._store_factory = store_factory
        self.block_ms = block_ms
        self._feeds: dict[str, _Feed] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.reads = 0  # XREAD calls made, all jobs together (for tests and the bench)

    def version(self, job: str) -> str | None:
        """The id of the last event the job's reader saw (None: no reader now)."""
        feed = self._feeds.get(job)
        return feed.last_id if feed is not None and feed.thread is not None else None

    def readers(self) -> int:
        """How many jobs have a reader thread now."""
        with self._lock:
            return sum(1 for f in self._feeds.values() if f.thread is not None)

    def subscribe(self, job: str) -> asyncio.Queue[Event]:
        """A queue that receives the job's events from now on (call from the loop)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_SIZE)
        with self._lock:
            feed = self._feeds.setdefault(job, _Feed(job))
            feed.subscribers.add((loop, queue))
            if feed.thread is None:
                feed.thread = threading.Thread(target=self._run, args=(feed,),
                                               name=f"tc-hub-{job}", daemon=True)
                feed.thread.start()
        return queue

    def unsubscribe(self, job: str, queue: asyncio.Queue[Event]) -> None:
        """Stop delivering to ``queue`` (the reader ends after its next read if it
        was the last)."""
        with self._lock:
            feed = self._feeds.get(job)
            if feed is not None:
                feed.subscribers = {s for s in feed.subscribers if s[1] is not queue}

    def close(self) -> None:
        """End every reader (after its current read)."""
        self._closed.set()

    def _run(self, feed: _Feed) -> None:
        store = self._store_factory()
        after: str | None = None
        try:
            while not self._closed.is_set():
                with self._lock:
                    if not feed.subscribers:
                        feed.thread = None
                        return
                try:
                    if after is None:
                        store.name_connection(CLIENT_NAME)
                        # what happens from now on (a page loads what came before itself);
                        # a fixed id, not "$", so nothing between two reads is missed
                        after = store.events.last_id(feed.job)
                        feed.last_id = after
                    self.reads += 1
                    events = store.events.read(feed.job, after, block_ms=self.block_ms,
                                               count=500)
                except Exception as exc:  # noqa: BLE001 - Redis away: retry, pages wait
                    log.warning("event reader of %s: %s", feed.job, type(exc).__name__)
                    self._closed.wait(1.0)
                    continue
                for event in events:
                    after = event.id
                    feed.last_id = event.id
                    self._fan_out(feed, event)
        finally:
            with self._lock:
                if feed.thread is threading.current_thread():
                    feed.thread = None
            try:
                store.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def _fan_out(self, feed: _Feed, event: Event) -> None:
        with self._lock:
            targets = list(feed.subscribers)
        for loop, queue in targets:
            try:
                loop.call_soon_threadsafe(_offer, queue, event)
            except RuntimeError:  # that page's loop is closed: it has gone
                self.unsubscribe(feed.job, queue)


def _offer(queue: asyncio.Queue[Event], event: Event) -> None:
    try:
        queue.put_nowait(event)
    except asyncio.QueueFull:
        # the page is too slow: drop what it has not read and tell it to refetch
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(RESYNC)


def sse(event: Event | None, *, comment: str | None = None) -> str:
    """One server-sent event (or a comment line that keeps the connection open)."""
    import json

    if event is None:
        return f": {comment or 'keepalive'}\n\n"
    payload: dict[str, Any] = {"id": event.id, "type": event.type, "data": event.data}
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(payload)}\n\n"
