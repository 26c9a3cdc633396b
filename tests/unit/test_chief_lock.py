"""The chief lock's keeper (chief/leadership.py), against a real Redis: it extends the
lock while the main loop shows progress and stops once the loop shows none for
``stuck_after_s``, so a stuck chief's lock lapses and a standby can take it; a step
that asks for more time (a finalize) keeps it that long."""

from __future__ import annotations

import threading
import time

from tunecluster.chief.leadership import ChiefLock
from tunecluster.store import Store

LOCK_S = 0.6


def _lock(store: Store, chief: str, stuck_after_s: float) -> ChiefLock:
    return ChiefLock(store, store.control.fence(chief), chief, LOCK_S, check_s=0.1,
                     stuck_after_s=stuck_after_s)


def _keep(lock: ChiefLock) -> threading.Event:
    stop = threading.Event()
    threading.Thread(target=lock.keep, args=(stop, lambda: True), daemon=True).start()
    return stop


def _holder_for(store: Store, seconds: float) -> set[str | None]:
    """Who held the lock, sampled for ``seconds``."""
    seen, deadline = set(), time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.add(store.client.get(store.keys.chief_lock))
        time.sleep(0.05)
    return seen


def test_a_loop_that_shows_no_progress_lets_the_lock_lapse(store: Store) -> None:
    stuck = _lock(store, "chief-stuck", stuck_after_s=1.0)
    assert stuck.hold()
    stop = _keep(stuck)
    try:
        # kept past its own lifetime while within stuck_after_s ...
        assert _holder_for(store, 0.9) == {"chief-stuck"}
        # ... then let go: gone within stuck_after_s + one lifetime (+ a keeper period)
        deadline = time.monotonic() + 1.0 + LOCK_S + LOCK_S
        while store.client.get(store.keys.chief_lock) is not None:
            assert time.monotonic() < deadline, "a stuck chief kept its lock"
            time.sleep(0.05)
        assert _lock(store, "chief-standby", 1.0).hold()  # a standby takes over
    finally:
        stop.set()


def test_progress_and_a_long_step_keep_the_lock(store: Store) -> None:
    busy = _lock(store, "chief-busy", stuck_after_s=0.5)
    assert busy.hold()
    stop = _keep(busy)
    try:
        for _ in range(6):  # ticks, each a sign of progress
            busy.alive()
            assert _holder_for(store, 0.3) == {"chief-busy"}
        busy.alive(allow_s=3.0)  # a finalize: no progress shown for 2.5 s, kept
        assert _holder_for(store, 2.5) == {"chief-busy"}
    finally:
        stop.set()
