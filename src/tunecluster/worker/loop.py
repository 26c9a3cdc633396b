"""The worker: registers, heartbeats, and runs one claim loop per trial slot.

The worker process itself never imports TensorFlow. Each slot owns a long-lived child
process (``child.py``) that trains; the slot hands it one claimed trial at a time,
keeps the trial's lease alive through the heartbeat, and recycles the child when it
crashes, after ``trials_per_child`` trials, or past ``max_rss_mb``.
SIGTERM/SIGINT: stop claiming, kill running trials and release them (their attempt is
not counted, and the next worker resumes them from their last checkpoint), then exit.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunecluster import defaults
from tunecluster.store import Claim, Store, now_ms
from tunecluster.store.connection import Backoff, retryable
from tunecluster.store.workers import default_worker_id
from tunecluster.worker.child import child_main

log = logging.getLogger("tunecluster.worker")


class ChildDied(RuntimeError):
    def __init__(self, exitcode: int | None) -> None:
        self.exitcode = exitcode
        if exitcode is not None and exitcode < 0:
            try:
                name = signal.Signals(-exitcode).name
            except ValueError:
                name = f"signal {-exitcode}"
            text = f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
        else:
            text = f"exit code {exitcode}"
        super().__init__(f"trial process crashed: {text}")


@dataclass
class Child:
    """One trial process and the pipe to it."""

    redis_url: str
    artifacts: str
    worker: str
    env: dict[str, str]
    process: Any = None
    conn: Any = None
    trials: int = 0

    def ensure(self) -> None:
        if self.process is not None and self.process.is_alive():
            return
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self.process = ctx.Process(
            target=child_main, args=(child, self.redis_url, self.artifacts, self.worker, self.env),
            daemon=True, name="tunecluster-trial")
        self.process.start()
        child.close()
        self.conn, self.trials = parent, 0

    def run(self, claim: Claim, stopping: threading.Event) -> dict[str, Any]:
        self.ensure()
        self.conn.send_bytes(json.dumps({"job": claim.job, "trial": claim.trial,
                                         "attempt": claim.attempt,
                                         "values": claim.values,
                                         "resume": claim.resume,
                                         "claimed_at": claim.claimed_at}).encode())
        self.trials += 1
        while True:
            if self.conn.poll(0.2):
                try:
                    return json.loads(self.conn.recv_bytes())
                except (EOFError, OSError):
                    pass
            if not self.process.is_alive():
                self.process.join(1)
                code = self.process.exitcode
                self.process = None
                raise ChildDied(code)
            if stopping.is_set():
                self.kill()
                raise InterruptedError("worker shutting down")

    def kill(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.process = None

    def close(self) -> None:
        if self.process is not None and self.process.is_alive():
            try:
                self.conn.send_bytes(b'{"exit": true}')
                self.process.join(5)
            except OSError:
                pass
        self.kill()


@dataclass
class Worker:
    store: Store
    redis_url: str
    artifacts: str
    slots: int = 1
    worker_id: str = field(default_factory=default_worker_id)
    lease_s: float = defaults.LEASE_S
    heartbeat_s: float = defaults.HEARTBEAT_S
    trials_per_child: int = defaults.TRIALS_PER_CHILD
    max_rss_mb: int = defaults.CHILD_MAX_RSS_MB
    slot_env: list[dict[str, str]] | None = None

    def __post_init__(self) -> None:
        self.artifacts = str(Path(self.artifacts).resolve())
        self.stopping = threading.Event()
        self.current: dict[int, Claim | None] = {i: None for i in range(self.slots)}
        envs = self.slot_env or [{} for _ in range(self.slots)]
        self.children = [Child(self.redis_url, self.artifacts, self.worker_id,
                               {"TF_CPP_MIN_LOG_LEVEL": "2", **envs[i]})
                         for i in range(self.slots)]
        self.stats = {"trials": 0, "crashes": 0, "recycled": 0}

    def run(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
            signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        log.info("worker %s starting with %d slot(s)", self.worker_id, self.slots)
        for child in self.children:
            child.ensure()  # the trial processes import TensorFlow while we register
        self._heartbeat()
        threads = [threading.Thread(target=self._slot_loop, args=(i,), daemon=True,
                                    name=f"slot-{i}") for i in range(self.slots)]
        for t in threads:
            t.start()
        backoff = Backoff()
        while not self.stopping.wait(self.heartbeat_s):
            try:
                self._heartbeat()
                backoff.ok()
            except Exception as exc:  # noqa: BLE001
                if not retryable(exc):
                    raise
                backoff.failed(exc)
        for t in threads:
            t.join(30)
        for child in self.children:
            child.close()
        try:
            self.store.workers.remove(self.worker_id)
        except Exception:  # noqa: BLE001 - leaving is best effort; the chief prunes us
            pass
        log.info("worker %s stopped", self.worker_id)

    def _heartbeat(self) -> None:
        busy = [c for c in self.current.values() if c is not None]
        self.store.workers.heartbeat(self.worker_id, {
            "host": socket.gethostname(), "pid": os.getpid(), "slots": self.slots,
            "busy": len(busy), "trials": self.stats["trials"], "beat": now_ms(),
        }, ttl_s=self.lease_s)
        self.store.queue.renew(self.worker_id, [c.member for c in busy], self.lease_s)

    def _slot_loop(self, slot: int) -> None:
        backoff = Backoff()
        child = self.children[slot]
        while not self.stopping.is_set():
            try:
                claim = self.store.queue.claim(self.worker_id, self.lease_s)
                if claim is None:
                    self.store.queue.wait_for_work(1.0)
                    backoff.ok()
                    continue
                self.current[slot] = claim
                self._run(slot, child, claim)
                backoff.ok()
            except Exception as exc:  # noqa: BLE001 - a slot must survive Redis outages
                if retryable(exc):
                    backoff.failed(exc)
                else:
                    log.exception("slot %d: unexpected error", slot)
                    time.sleep(1)
            finally:
                self.current[slot] = None

    def _run(self, slot: int, child: Child, claim: Claim) -> None:
        try:
            outcome = child.run(claim, self.stopping)
        except ChildDied as exc:
            self.stats["crashes"] += 1
            log.warning("slot %d: %s during %s", slot, exc, claim.member)
            self.store.queue.release(claim.job, claim.trial, str(exc), worker=self.worker_id,
                                     attempt=claim.attempt)
            return
        except InterruptedError:
            self.store.queue.release(claim.job, claim.trial, "worker shut down",
                                     worker=self.worker_id, attempt=claim.attempt,
                                     count_attempt=False)
            return
        self.stats["trials"] += 1
        log.info("slot %d: %s %s", slot, claim.member, outcome.get("outcome"))
        if child.trials >= self.trials_per_child or outcome.get("rss_mb", 0) > self.max_rss_mb:
            self.stats["recycled"] += 1
            log.info("slot %d: recycling the trial process (%d trials, %.0f MB)", slot,
                     child.trials, outcome.get("rss_mb", 0))
            child.close()
