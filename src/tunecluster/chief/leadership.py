"""The chief lock: which chief is active, and how the active one keeps the lock.

One chief holds the lock (a key with a lease in Redis, ``keys.chief_lock``); the others
stand by and ask for it on every tick. The active chief asks Redis only every
``check_s``: every write it makes is fenced (checked inside the script that writes), so
a lock lost between checks costs nothing but that round. A keeper thread extends the
lock between ticks while the main loop gets through them, so a long step does not hand
the cluster to a standby; a chief whose loop shows no progress for ``stuck_after_s``
(``defaults.CHIEF_STUCK_S``, 30 s; a finalize may take ``CHIEF_FINALIZE_STUCK_S``) lets
its lock lapse, and a standby takes over one lock lifetime later.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

from tunecluster import defaults
from tunecluster.store import Store
from tunecluster.store.fence import Fence


class ChiefLock:
    """The lock of chief ``chief_id`` (whose token is ``fence``'s), held for ``lock_s``."""

    def __init__(self, store: Store, fence: Fence, chief_id: str, lock_s: float,
                 check_s: float, stuck_after_s: float | None = None) -> None:
        self.store = store
        self.fence = fence
        self.id = chief_id
        self.lock_s = lock_s
        self.check_s = check_s
        self.stuck_after_s = defaults.CHIEF_STUCK_S if stuck_after_s is None else stuck_after_s
        # Until when the keeper extends the lock: moved on by each sign of progress.
        self.alive_until = time.monotonic() + self.stuck_after_s
        self.next_check = 0.0

    def alive(self, allow_s: float | None = None) -> None:
        """The main loop made progress: keep the lock for ``allow_s`` more (default
        ``stuck_after_s``; a step known to be long, such as a finalize, asks more)."""
        self.alive_until = time.monotonic() + (self.stuck_after_s if allow_s is None
                                               else allow_s)

    def hold(self) -> bool:
        """Take the lock, or extend it if this chief holds it; whether it does now."""
        return self.store.control.hold(self.fence, int(self.lock_s * 1000))

    def checked(self, leader: bool) -> bool:
        """Whether this chief holds the lock: asked of Redis before every tick while
        standing by, and every ``check_s`` once active (``leader``). Every write of an
        active chief is fenced, so a lock lost between checks costs nothing but that
        round; asking on every tick cost a round trip per round."""
        now = time.monotonic()
        if leader and now < self.next_check:
            return True
        self.next_check = now + self.check_s
        return self.hold()

    def keep(self, stop_event: threading.Event, leading: Callable[[], bool]) -> None:
        """The keeper thread: extend the lock between ticks, so a long step (finalize
        evaluating the test split, a Bayesian oracle fitting its Gaussian process on a
        busy machine) does not hand the cluster to a standby that would redo the same
        step. Only while the main loop shows progress (``alive``): a chief stuck in a
        step lets its lock lapse."""
        while not stop_event.wait(self.lock_s / 3):
            if not leading():
                continue
            if time.monotonic() > self.alive_until:
                continue
            try:
                if not self.store.control.extend(self.fence, int(self.lock_s * 1000)):
                    self.next_check = 0.0  # lost: the main loop asks on its next tick
            except Exception:  # noqa: BLE001 - the main loop sees the loss itself
                pass

    def release(self) -> None:
        try:
            self.store.control.release(self.fence)
        except redis.RedisError:
            pass
