"""The worker: registers, heartbeats, and runs one claim loop per trial slot.

The worker process itself never imports TensorFlow. Each slot owns a long-lived child
process (``child.py``) that trains; the slot hands it one claimed trial at a time,
keeps the trial's lease alive through the heartbeat, and recycles the child when it
crashes, after ``trials_per_child`` trials, or past ``max_rss_mb``.
A trial that cannot stop itself (stuck inside an epoch) is stopped from here: each
heartbeat reads whether the jobs of the running trials were cancelled, and a trial whose
job was cancelled and that has not ended within ``CANCEL_GRACE_S``, or that runs longer
than its job's ``train.trial_timeout``, has its process killed; the trial is recorded
CANCELLED or FAILED (ownership-checked) and the slot starts a fresh process.
SIGTERM/SIGINT: kill the trial processes, stop claiming, release the trials (their
attempt is not counted, and the next worker resumes them from their last checkpoint),
then exit; within ``shutdown.STOP_S`` even if Redis does not answer (the leases expire).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunecluster import defaults
from tunecluster.artifact_store import is_url
from tunecluster.shutdown import STOP_S, kill_children, on_stop_signal
from tunecluster.states import TrialState
from tunecluster.store import Claim, Store, codec, now_ms
from tunecluster.store.connection import Backoff, retryable
from tunecluster.store.workers import default_worker_id
from tunecluster.worker import gang
from tunecluster.worker.aborts import ChildDied, GangEnded, TrialAborted
from tunecluster.worker.child import GANG_MEMBER_ENV, child_main, die_with_parent, reported_error
from tunecluster.worker.slots import GPU_MEMORY_ENV

log = logging.getLogger("tunecluster.worker")

# A cancelled trial that is still healthy sees the cancel at its next epoch report and
# ends by itself, keeping its warm process; one that has not ended this long after the
# worker saw the cancel is killed.
CANCEL_GRACE_S = 2.0
KEEP_TIMEOUTS = 64  # jobs whose train.trial_timeout a worker remembers
GANG_POLL_S = 0.1  # how often a place in a forming gang looks whether it runs
# A gang trial starts its slot's next member only on this many cores (or more).
PREWARM_MIN_CPUS = int(os.environ.get("TUNECLUSTER_GANG_PREWARM_MIN_CPUS", "4"))


def trial_process(conn: Any, redis_url: str, artifacts: str, worker: str,
                  env: dict[str, str], parent: int | None = None) -> None:
    """The trial process's entry point: ``child_main``, after capping its GPU memory
    when its slot shares a GPU with others (``--trials-per-gpu``): TensorFlow takes
    that cap only before anything touches the GPU."""
    if env.get(GPU_MEMORY_ENV):
        from tunecluster.worker.strategy import limit_gpu_memory

        if parent is not None:
            die_with_parent(parent)
        os.environ.update(env)
        limit_gpu_memory()
        parent = None  # armed above
    child_main(conn, redis_url, artifacts, worker, env, parent)


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

    @property
    def on_gpu(self) -> bool:
        """Whether this slot's process sees a GPU (``CUDA_VISIBLE_DEVICES`` names one)."""
        return self.env.get("CUDA_VISIBLE_DEVICES") not in (None, "", "-1")

    def ensure(self) -> None:
        if self.process is not None and self.process.is_alive():
            return
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self.process = ctx.Process(
            target=trial_process,
            args=(child, self.redis_url, self.artifacts, self.worker, self.env, os.getpid()),
            daemon=True, name="tunecluster-trial")
        self.process.start()
        child.close()
        self.conn, self.trials = parent, 0

    def run(self, claim: Claim, stopping: threading.Event,
            abort: Callable[[], TrialAborted | None] = lambda: None) -> dict[str, Any]:
        """Hand ``claim`` to the trial process and wait for its outcome.

        ``abort`` is asked on every poll; when it answers, the process is killed and the
        answer raised (the caller records the trial and starts a fresh process).
        """
        self.ensure()
        self.conn.send_bytes(json.dumps({"job": claim.job, "trial": claim.trial,
                                         "attempt": claim.attempt,
                                         "started": claim.started,
                                         "values": claim.values,
                                         "resume": claim.resume,
                                         "claimed_at": claim.claimed_at,
                                         "gang": claim.gang, "rank": claim.rank,
                                         "tf_config": gang.tf_config(claim.gang, claim.rank)
                                         if claim.gang else None}).encode())
        self.trials += 1
        return json.loads(self._next_message(stopping, abort))

    def await_ready(self, stopping: threading.Event) -> None:
        """Start the process if needed and wait for its ready message (a gang member's,
        once TensorFlow is imported); ``ChildDied`` if it dies first."""
        self.ensure()
        self._next_message(stopping)

    def _next_message(self, stopping: threading.Event,
                      abort: Callable[[], TrialAborted | None] = lambda: None) -> bytes:
        """The process's next message; ``ChildDied`` when it dies first,
        ``InterruptedError`` (killed) when the worker stops, ``abort``'s answer (killed)
        when it has one."""
        while True:
            if self.conn.poll(0.2):
                try:
                    return self.conn.recv_bytes()
                except (EOFError, OSError):
                    pass
            if stopping.is_set():  # first: the stop signal's handler killed the process
                self.kill()
                raise InterruptedError("worker shutting down")
            if not self.process.is_alive():
                self.process.join(1)
                code = self.process.exitcode
                self.process = None
                raise ChildDied(code)
            aborted = abort()
            if aborted is not None:
                self.kill()
                raise aborted

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
    # Gang trials: where this worker's gang trial processes listen (worker/gang.py).
    advertise_host: str | None = None
    gang_ports: tuple[int, int] = field(
        default_factory=lambda: gang.parse_ports(gang.DEFAULT_PORTS))
    gang_peer_timeout_s: float = gang.PEER_TIMEOUT_S

    def __post_init__(self) -> None:
        if not is_url(self.artifacts):  # a URL is mounted by each trial process
            self.artifacts = str(Path(self.artifacts).resolve())
        self.stopping = threading.Event()
        self.current: dict[int, Claim | None] = {i: None for i in range(self.slots)}
        envs = self.slot_env or [{} for _ in range(self.slots)]
        # TF_CONFIG is the gang's alone (_run_gang): one inherited from the worker's own
        # environment would make every warm trial process wait for a cluster.
        self.children = [Child(self.redis_url, self.artifacts, self.worker_id,
                               {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": "", **envs[i]})
                         for i in range(self.slots)]
        self.stats = {"trials": 0, "crashes": 0, "recycled": 0, "killed": 0}
        # slot -> (the claim whose job was cancelled, when the worker saw it)
        self.cancelled: dict[int, tuple[Claim, float]] = {}
        self._timeouts: dict[str, float | None] = {}
        host = gang.advertise_host(self.redis_url, self.advertise_host)
        self.ports = [gang.PortReservation(host, self.gang_ports) for _ in range(self.slots)]
        # slot -> a gang member's process started ahead (TensorFlow imported), for the
        # slot's next gang trial: started while a gang forms and (PREWARM_MIN_CPUS) while
        # a gang trial trains; stopped when the slot runs a trial of one worker again.
        self.spares: dict[int, Child] = {}

    def run(self) -> None:
        if threading.current_thread() is threading.main_thread():
            on_stop_signal("worker", self._stop_now, before_exit=kill_children)
        self.store.for_role()
        log.info("worker %s starting with %d slot(s)", self.worker_id, self.slots)
        for child in self.children:
            child.ensure()  # the trial processes import TensorFlow while we register
        threads = [threading.Thread(target=self._slot_loop, args=(i,), daemon=True,
                                    name=f"slot-{i}") for i in range(self.slots)]
        backoff = Backoff(stop=self.stopping)
        while not self.stopping.is_set():
            try:
                self._heartbeat()  # registered before the first claim
                backoff.ok()
            except Exception as exc:  # noqa: BLE001
                if not retryable(exc):
                    raise
                backoff.failed(exc)
            for t in threads:
                if t.ident is None:
                    t.start()
            self.stopping.wait(self.heartbeat_s)
        # The slots hand their trials back (Redis answering) within the stop deadline;
        # slot threads stuck in Redis calls are left behind (daemons).
        until = time.monotonic() + STOP_S / 2
        for t in threads:
            if t.ident is not None:
                t.join(max(0.0, until - time.monotonic()))
        for child in [*self.children, *self.spares.values()]:
            child.close()
        try:
            self.store.workers.remove(self.worker_id)
        except Exception:  # noqa: BLE001 - leaving is best effort; the chief prunes us
            pass
        log.info("worker %s stopped", self.worker_id)

    def _stop_now(self) -> None:
        """SIGTERM/SIGINT: trial processes first, then the loops; Redis calls that fail
        from now on are not retried (an outage is not waited out)."""
        self.stopping.set()
        self.store.stop_retrying()
        kill_children()

    def _heartbeat(self) -> None:
        busy = [c for c in self.current.values() if c is not None]
        self.store.workers.heartbeat(self.worker_id, {
            "host": socket.gethostname(), "pid": os.getpid(), "slots": self.slots,
            "busy": len(busy), "trials": self.stats["trials"], "beat": now_ms(),
            "devices": self._devices(), "rss_mb": self._children_rss_mb(),
        }, ttl_s=self.lease_s)
        self.store.queue.renew(self.worker_id, [c.member for c in busy], self.lease_s)
        self._read_cancels()

    def _devices(self) -> str:
        """What each slot trains on, as the dashboard's Workers view shows it:
        ``cpu`` or ``gpu:<ids>`` per slot (a GPU shared by several slots repeats)."""
        def one(child: Child) -> str:
            return f"gpu:{child.env['CUDA_VISIBLE_DEVICES']}" if child.on_gpu else "cpu"

        return " ".join(one(c) for c in self.children)

    def _children_rss_mb(self) -> int:
        """The trial processes' resident memory together (MB), read with psutil."""
        import psutil

        total = 0
        for child in [*self.children, *self.spares.values()]:
            pid = getattr(child.process, "pid", None)
            if pid is None:
                continue
            try:
                total += psutil.Process(pid).memory_info().rss
            except (psutil.Error, OSError):  # exited between the two lines
                continue
        return round(total / 2**20)

    def _read_cancels(self) -> None:
        """Note the running trials whose job was cancelled (the ``cancel`` flag that
        ``request_cancel`` sets): a trial stuck inside an epoch never reads it itself."""
        busy = [(slot, c) for slot, c in list(self.current.items()) if c is not None]
        if not busy:
            return
        flags = self.store.jobs.field([claim.job for _slot, claim in busy], "cancel")
        for (slot, claim), flag in zip(busy, flags, strict=True):
            seen = self.cancelled.get(slot)
            if flag == "1" and (seen is None or seen[0] is not claim):
                log.info("slot %d: job of %s cancelled", slot, claim.member)
                self.cancelled[slot] = (claim, time.monotonic())

    def _trial_timeout(self, job: str) -> float | None:
        """The job's ``train.trial_timeout`` (None: no limit), read once per job.

        The worker does not parse the whole spec (the trial process validates it); an
        unreadable value means no limit here.
        """
        if job not in self._timeouts:
            try:
                spec = codec.loads_object(self.store.jobs.field([job], "spec")[0],
                                          "job spec")
                value = spec.get("train", {}).get("trial_timeout")
                limit = float(value) if value is not None else None
            except (ValueError, TypeError, AttributeError):
                limit = None
            if len(self._timeouts) >= KEEP_TIMEOUTS:
                self._timeouts.pop(next(iter(self._timeouts)))
            self._timeouts[job] = limit
        return self._timeouts[job]

    def _abort_check(self, slot: int, claim: Claim) -> Callable[[], TrialAborted | None]:
        """What ``Child.run`` asks while ``claim`` runs: kill it now, and why?"""
        limit = self._trial_timeout(claim.job)
        deadline = None if limit is None else time.monotonic() + limit
        gang_checked = time.monotonic()

        def check() -> TrialAborted | None:
            nonlocal gang_checked
            if claim.gang and time.monotonic() - gang_checked >= gang.CHECK_S:
                gang_checked = time.monotonic()
                ended = self._gang_check(claim)
                if ended is not None:
                    return ended
            seen = self.cancelled.get(slot)
            if (seen is not None and seen[0] is claim
                    and time.monotonic() - seen[1] >= CANCEL_GRACE_S):
                return TrialAborted(TrialState.CANCELLED, "job cancelled")
            if deadline is not None and time.monotonic() >= deadline:
                return TrialAborted(TrialState.FAILED,
                                    f"trial exceeded train.trial_timeout ({limit:g} s)")
            return None

        return check

    def _gang_check(self, claim: Claim) -> GangEnded | None:
        """A running gang member's check on the others (``TrialQueue.gang_check``)."""
        try:
            state, why = self.store.queue.gang_check(claim, self.worker_id,
                                                     self.gang_peer_timeout_s)
        except Exception as exc:  # noqa: BLE001 - Redis away: the lease logic decides
            if not retryable(exc):
                raise
            return None
        if state == "GONE":
            return GangEnded("the gang's attempt ended")
        if state == "RELEASED":
            return GangEnded(why)
        return None

    def _address(self, slot: int) -> str:
        """Where this slot's gang trial process would listen ('' if no port is free:
        the slot then takes only trials of one worker)."""
        try:
            return self.ports[slot].address
        except RuntimeError as exc:
            log.warning("slot %d: %s; this slot joins no gang", slot, exc)
            return ""

    def _await_gang(self, place: Claim) -> Claim | None:
        """Hold a place in a forming gang until it runs (its ``Claim``) or is gone."""
        while True:
            if self.stopping.is_set():
                self.store.queue.gang_wait(place, self.worker_id, leave=True)
                return None
            got = self.store.queue.gang_wait(place, self.worker_id)
            if got is None or not got.forming:
                return got
            time.sleep(GANG_POLL_S)

    def _slot_loop(self, slot: int) -> None:
        backoff = Backoff(stop=self.stopping)
        child = self.children[slot]
        while not self.stopping.is_set():
            try:
                claim = self.store.queue.claim(self.worker_id, self.lease_s,
                                               address=self._address(slot))
                if claim is not None and claim.forming:
                    self._prewarm(slot, child)  # its import overlaps the wait
                    claim = self._await_gang(claim)
                if claim is None:
                    self.store.queue.wait_for_work(1.0)
                    backoff.ok()
                    continue
                self.current[slot] = claim
                if claim.gang:
                    self._run_gang(slot, child, claim)
                else:
                    spare = self.spares.pop(slot, None)
                    if spare is not None:
                        spare.kill()  # its memory is the trials' again
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
                self.cancelled.pop(slot, None)

    def _run_gang(self, slot: int, child: Child, claim: Claim) -> None:
        """One member's part of a gang trial, in a fresh trial process that listens on
        the slot's advertised port (TensorFlow configures its collectives once per
        process); a slot on a GPU first stops its warm process, whose memory the gang's
        process needs."""
        assert claim.gang is not None
        if child.on_gpu:
            child.close()
        member = self.spares.pop(slot, None) or self._gang_member(child)
        log.info("slot %d: %s as rank %d of %d (%s)", slot, claim.member, claim.rank,
                 len(claim.gang), ", ".join(m["worker"] for m in claim.gang))
        try:
            try:
                member.await_ready(self.stopping)
            except (ChildDied, InterruptedError) as exc:
                self.store.queue.release(
                    claim.job, claim.trial, str(exc), worker=self.worker_id,
                    attempt=claim.attempt, count_attempt=isinstance(exc, ChildDied))
                return
            # The port goes to the member only now that it listens within milliseconds:
            # freed earlier, another worker on this host could reserve it meanwhile.
            self.ports[slot].release()
            # The next gang trial's member imports TensorFlow while this one trains, where
            # the host has cores to spare for it (on 2 cores it slowed the trial as much
            # as it saved the next one: bench/gang.py).
            if (os.cpu_count() or 1) >= PREWARM_MIN_CPUS:
                self._prewarm(slot, child)
            self._run(slot, member, claim)
        finally:
            member.kill()

    def _gang_member(self, child: Child) -> Child:
        """A gang member's process for the slot of ``child``: its environment, and the
        gang named by its first message (``child.GANG_MEMBER_ENV``)."""
        return Child(self.redis_url, self.artifacts, self.worker_id,
                     {**child.env, GANG_MEMBER_ENV: "1"})

    def _prewarm(self, slot: int, child: Child) -> None:
        """Start the slot's next gang member's process now, so that its TensorFlow
        import is not paid when the gang starts."""
        spare = self.spares.get(slot)
        if spare is None:
            spare = self.spares[slot] = self._gang_member(child)
        spare.ensure()

    def _run(self, slot: int, child: Child, claim: Claim) -> None:
        try:
            outcome = child.run(claim, self.stopping, self._abort_check(slot, claim))
        except GangEnded as exc:
            self.stats["killed"] += 1
            log.info("slot %d: stopped its member of %s: %s", slot, claim.member, exc.reason)
            return
        except TrialAborted as exc:
            # Final, not released: a timeout is deterministic and a cancelled job wants
            # nothing retried. Refused if the attempt lost its lease meanwhile.
            self.stats["killed"] += 1
            recorded = self.store.queue.finish(claim, self.worker_id, exc.state,
                                               {"error": exc.reason})
            log.warning("slot %d: killed the trial process of %s: %s%s", slot, claim.member,
                        exc.reason, "" if recorded else " (no longer ours: not recorded)")
            if not claim.gang:  # a gang member's process is not reused
                child.ensure()  # a warm process for the next claim
            return
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
        if (error := reported_error(outcome)) is not None and error.retryable:  # lost
            log.warning("slot %d: %s lost: %s", slot, claim.member, error)
        else:
            log.info("slot %d: %s %s", slot, claim.member, outcome.get("outcome"))
        if child.trials >= self.trials_per_child or outcome.get("rss_mb", 0) > self.max_rss_mb:
            self.stats["recycled"] += 1
            log.info("slot %d: recycling the trial process (%d trials, %.0f MB)", slot,
                     child.trials, outcome.get("rss_mb", 0))
            child.close()

