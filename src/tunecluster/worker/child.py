"""The trial process: a long-lived child of the worker that imports TensorFlow once,
keeps each job's data warm, runs the trials it is handed and records their outcome.

A crash here (segfault, OOM kill, ``os._exit``) only costs this process: the worker
notices, releases the trial for a retry and starts a fresh child.
Messages to and from the worker are JSON over a local pipe.
It dies with its worker: a worker killed alone (SIGKILL, OOM killer) must not leave a
process behind that trains on and holds memory (a GPU's) its replacement needs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any

from tunecluster.errors import TrialFailed, WorkerLost, fatal_kind, one_line
from tunecluster.states import TrialState
from tunecluster.testhook import stop_here
from tunecluster.worker.storage import (
    FREE_STORAGE_RETRIES,
    STORE_REFUSED,
    storage_error,
    storage_wait_s,
    wait_until_writable,
)

KEEP_JOBS = 2  # job runtimes (data + adapt statistics) kept warm per child
# Set in a gang member's process: its first message names the gang (``tf_config``).
GANG_MEMBER_ENV = "TUNECLUSTER_GANG_MEMBER"
WATCHDOG_S = 0.5  # how often the trial process checks that its worker still lives
PR_SET_PDEATHSIG = 1
# The outcomes of an attempt that did not finish (``outcome_of``): retried, or final.
LOST, FAILED = "lost", TrialState.FAILED.lower()

log = logging.getLogger("tunecluster.trial")


def die_with_parent(parent: int) -> None:
    """Exit (SIGKILL) as soon as the worker ``parent`` is gone.

    Linux's parent-death signal acts at once, but it fires when the *thread* that
    started this process ends, not the process; a watchdog thread that sees this
    process re-parented covers that and other platforms within ``WATCHDOG_S``.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watchdog alone
        pass
    if os.getppid() != parent:  # the worker died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCHDOG_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


class RedisReporter:
    """Reports each epoch to Redis; the answer says whether to stop.

    Non-finite metrics (a side metric that is -inf or NaN) go out as JSON null
    (``codec.dumps``); a refused report raises ``LostLease``, which stops the trial.
    """

    def __init__(self, store: Any, claim: Any, worker: str) -> None:
        self.store, self.claim, self.worker = store, claim, worker
        self.cancelled = False

    def epoch(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        from tunecluster.store.queue import CANCEL

        answer = self.store.queue.report_epoch(self.claim, self.worker, epoch, metrics)
        self.cancelled = self.cancelled or answer == CANCEL
        return answer != 0


def child_main(conn: Connection, redis_url: str, artifacts: str, worker: str,
               env: Mapping[str, str], parent: int | None = None) -> None:
    if parent is not None:
        die_with_parent(parent)
    os.environ.update(env)  # e.g. CUDA_VISIBLE_DEVICES, before TensorFlow is imported
    import gc

    from tunecluster.quiet import import_tensorflow

    import_tensorflow()  # warm: paid once when the process starts, not per trial
    import tensorflow

    from tunecluster.worker.strategy import multi_worker_strategy

    # A gang member's process is started ahead, with TensorFlow imported, and learns its
    # gang (TF_CONFIG) from its first message: TensorFlow takes its collective
    # configuration only before anything else runs, so it trains that one trial.
    first = None
    if os.environ.get(GANG_MEMBER_ENV):
        # Ready: the worker frees the port it advertised for this process only now, so
        # that no other worker on the host takes it before TensorFlow listens there.
        conn.send_bytes(b'{"ready": true}')
        first = _receive(conn)
        if first is None or first.get("exit"):
            return
        os.environ["TF_CONFIG"] = str(first.get("tf_config") or "")
    multi_worker_strategy()

    # Each trial builds new tf.functions; TensorFlow warns about "retracing" for every
    # one of them, which is expected here and would flood the worker's log.
    tensorflow.get_logger().setLevel("ERROR")

    from tunecluster.store import Store

    # TensorFlow's import leaves a huge object graph; frozen, it is never rescanned,
    # which keeps the collector's pauses between trials small.
    gc.collect()
    gc.freeze()

    from tunecluster.artifact_store import local_root

    # An object store URL becomes its staging directory here; open_store maps it back.
    artifacts = str(local_root(artifacts))
    store = Store.from_url(redis_url)
    runtimes: OrderedDict[str, Any] = OrderedDict()
    while True:
        message, first = first or _receive(conn), None
        if message is None or message.get("exit"):
            return
        outcome = run_one(store, runtimes, artifacts, worker, message)
        outcome["rss_mb"] = rss_mb()
        conn.send_bytes(json.dumps(outcome).encode())


def _receive(conn: Connection) -> dict[str, Any] | None:
    """The worker's next message (None: the pipe is closed, the worker is gone)."""
    try:
        return json.loads(conn.recv_bytes())
    except (EOFError, OSError):
        return None


def run_one(store: Any, runtimes: OrderedDict[str, Any], artifacts: str, worker: str,
            message: Mapping[str, Any]) -> dict[str, Any]:
    """Run the claim ``message`` names; its outcome as the worker is told it."""
    from tunecluster.store import Claim

    claim = Claim(message["job"], message["trial"], int(message["attempt"]),
                  dict(message.get("values") or {}), gang=message.get("gang"),
                  rank=int(message.get("rank") or 0),
                  started=str(message.get("started") or ""))
    try:
        return _run_claim(store, runtimes, artifacts, worker, claim, message)
    except (WorkerLost, TrialFailed) as exc:
        return outcome_of(exc)


def outcome_of(exc: WorkerLost | TrialFailed) -> dict[str, Any]:
    """An attempt that did not finish, as the worker is told it: ``lost`` when the
    error is retryable (a ``WorkerLost``: the trial runs again elsewhere), else
    ``failed``. The one place that tells the two apart; ``reported_error`` reads it."""
    return {"outcome": LOST if exc.retryable else FAILED, "error": str(exc)}


def reported_error(outcome: Mapping[str, Any]) -> WorkerLost | TrialFailed | None:
    """The error of an outcome that ``outcome_of`` wrote (None: the attempt finished)."""
    kind = {LOST: WorkerLost, FAILED: TrialFailed}.get(outcome.get("outcome"))
    return None if kind is None else kind(str(outcome.get("error") or ""))


def _run_claim(store: Any, runtimes: OrderedDict[str, Any], artifacts: str, worker: str,
               claim: Any, message: Mapping[str, Any]) -> dict[str, Any]:
    """Train ``claim`` and record it; ``WorkerLost`` or ``TrialFailed`` when it did not
    finish (recorded, or released, as each says)."""
    from tunecluster.artifacts import relative_to_root
    from tunecluster.worker.trial import TrialRequest, run_trial

    reporter: Any = RedisReporter(store, claim, worker)
    if claim.gang:
        from tunecluster.worker.gang import GangFollower, GangLeader

        reporter = (GangLeader(reporter, store, claim) if claim.rank == 0
                    else GangFollower(store, claim))
    try:
        rt = _runtime(store, runtimes, artifacts, claim.job)
        request = TrialRequest(claim.trial, claim.values, claim.attempt,
                               resume=bool(message.get("resume", claim.attempt > 1)),
                               isolated=True, started=claim.started,
                               parent_model=_parent_model(store, artifacts, claim),
                               rank=claim.rank)
        result = run_trial(rt, request, reporter)
    except WorkerLost:
        raise  # LostLease: this attempt was reaped; the chief retries the trial
    except Exception as exc:  # noqa: BLE001 - any failure of the trial is the trial's
        refused_write = storage_error(exc, artifacts)
        if refused_write is not None:  # ... unless its artifacts store ended it
            raise _storage_fault(store, claim, worker, artifacts, refused_write) from exc
        raise _failure(store, claim, worker, exc) from exc
    if claim.rank > 0:  # rank 0 records the trial
        return {"outcome": "member", "timings": result.timings}
    state = TrialState.CANCELLED if reporter.cancelled else TrialState.COMPLETED
    claimed_at = float(message.get("claimed_at") or result.timings["build_at"])
    overhead = {
        # from the claim to the model's build: queue hand-off, pipe, runtime lookup, setup
        "claim_to_build_ms": 1000 * (result.timings["build_at"] - claimed_at),
    }
    fields = {
        "score": repr(result.score),
        # this attempt's own model file, which finalize and Hyperband's promotions read
        "model": relative_to_root(artifacts, result.model_path) if result.model_path else "",
        "metrics": result.metrics,
        "best_epoch": str(result.best_epoch),
        "resumed_from_epoch": str(result.resumed_from_epoch),
        "result": {**{k: v for k, v in result.to_json().items()
                      if k not in ("epochs", "hyperparameters")},
                   "process": os.getpid()},
    }
    if result.hyperparameters is not None:
        # build_model declared hyperparameters the space lacked: the values it used are
        # the trial's, and the chief adds the new ones to the search space (the inbox
        # message carries this field).
        fields["values"] = result.hyperparameters["values"]
        fields["hyperparameters"] = result.hyperparameters
    # from the last epoch's report to the trial recorded finished (model save included)
    overhead["last_epoch_to_finished_ms"] = 1000 * (time.time() - result.timings["last_epoch_at"])
    fields["overhead"] = overhead
    stop_here("finish")  # a test hook, inert unless set (tunecluster/testhook.py)
    if not store.queue.finish(claim, worker, state, fields):
        raise lost_finish(claim, state.lower())
    return {"outcome": state.lower(), "timings": result.timings, "overhead": overhead}


def _failure(store: Any, claim: Any, worker: str, exc: Exception) -> WorkerLost | TrialFailed:
    """What the exception ``exc`` that ended the trial makes of the attempt, once
    recorded: called inside its ``except`` (the traceback is recorded)."""
    from tunecluster.worker.strategy import lost_a_peer
    from tunecluster.worker.trial import GROWN_SPACE_ATTR

    kind = "" if isinstance(exc, TrialFailed) else f"{type(exc).__name__}: "
    message_text = kind + (str(exc).strip().splitlines() or [""])[0][:500]
    if claim.gang and lost_a_peer(exc):
        # TensorFlow saw a member go before the worker's own check did: the attempt
        # is retried from its checkpoint, as for a lost worker (refused, and harmless,
        # when the check or the crashed member's worker already released it).
        from tunecluster.worker.gang import release_lost_peer

        release_lost_peer(store, claim, worker,
                          f"rank {claim.rank}: a gang member was lost: {message_text}")
        return WorkerLost(message_text)
    if claim.rank > 0:
        # Only rank 0 records the trial; a member that failed ends the attempt for
        # every member (rank 0 would wait on it in its next collective).
        store.queue.release(claim.job, claim.trial, f"rank {claim.rank}: {message_text}",
                            worker=worker, attempt=claim.attempt)
        return TrialFailed(message_text)
    fields: dict[str, Any] = {"error": message_text,
                              "traceback": traceback.format_exc()[-4000:]}
    fatal = fatal_kind(exc)
    if fatal:  # KerasTuner's fatal error: the chief ends the search (chief/loop.py)
        fields["fatal"] = fatal
    grown = getattr(exc, GROWN_SPACE_ATTR, None)
    if isinstance(grown, dict):  # as for a completed trial: the chief grows the space
        fields["values"], fields["hyperparameters"] = grown.get("values") or {}, grown
    if not store.queue.finish(claim, worker, TrialState.FAILED, fields):
        return lost_finish(claim, FAILED)
    return TrialFailed(message_text)


def _storage_fault(store: Any, claim: Any, worker: str, artifacts: str,
                   exc: OSError) -> WorkerLost:
    """Release an attempt its artifacts store ended (``worker/storage.py``): once the
    store takes writes again, without spending a retry; if it still refuses them after
    ``storage_wait_s``, spending one."""
    from tunecluster.artifacts import job_dir

    reason = f"{STORE_REFUSED}: {one_line(exc)}"
    wait_s = storage_wait_s()
    log.warning("trial %s of job %s: %s; waiting up to %.0f s for it to take writes"
                " again", claim.trial, claim.job, reason, wait_s)
    back = wait_until_writable(job_dir(artifacts, claim.job), wait_s)
    # A write that fails again and again while the probe succeeds (one directory of
    # the trial's that refuses) must not loop for ever: only the first few are free.
    earlier = sum(e.startswith(STORE_REFUSED)
                  for e in store.jobs.trial_errors(claim.job, claim.trial))
    free = back and earlier < FREE_STORAGE_RETRIES
    log.warning("trial %s of job %s: %s", claim.trial, claim.job,
                "the artifacts store takes writes again: the trial is retried without"
                " spending an attempt" if free else "the attempt is spent (the store still"
                f" refuses writes after {wait_s:.0f} s, or refused this trial"
                f" {earlier + 1} times)")
    store.queue.release(claim.job, claim.trial, reason, worker=worker,
                        attempt=claim.attempt, count_attempt=not free)
    return WorkerLost(reason)


def lost_finish(claim: Any, outcome: str) -> WorkerLost:
    """A finish the queue refused: another attempt owns the trial now (this one's lease
    expired and it was reaped). Nothing of this run counts; its files are its own."""
    error = (f"trial {claim.member} attempt {claim.attempt} lost its lease before it"
             f" could record its outcome ({outcome})")
    log.warning(error)
    return WorkerLost(error)


def refused(claim: Any, outcome: str) -> dict[str, Any]:
    """The outcome message of a finish the queue refused (``lost_finish``): ``lost``."""
    return outcome_of(lost_finish(claim, outcome))


def _parent_model(store: Any, artifacts: str, claim: Any) -> str | None:
    """Hyperband: the model file of the trial this one continues, as its record names it."""
    from tunecluster.artifacts import trial_model

    parent = claim.values.get("tuner/trial_id")
    if parent is None:
        return None
    recorded = store.jobs.trial(claim.job, str(parent)).get("model")
    return str(trial_model(artifacts, claim.job, str(parent), recorded))


def _runtime(store: Any, runtimes: OrderedDict[str, Any], artifacts: str, job: str) -> Any:
    from tunecluster import defaults
    from tunecluster.artifacts import file_resolver, prune_file_caches
    from tunecluster.spec import parse_spec
    from tunecluster.store import codec
    from tunecluster.worker.runtime import JobRuntime

    if job in runtimes:
        runtimes.move_to_end(job)
        return runtimes[job]
    record = store.jobs.get(job)
    spec = parse_spec(record.spec)
    if not spec.model.is_builtin and os.environ.get(defaults.ALLOW_CODE_UPLOAD_ENV, "1") == "0":
        raise TrialFailed(
            f"this worker refuses jobs that carry model code ({defaults.ALLOW_CODE_UPLOAD_ENV}=0)")
    uploaded = codec.loads(record.fields.get("files", "[]"), "uploaded files")
    prune_file_caches(artifacts, store.jobs.active())  # bounded: ended jobs' caches go
    resolve = file_resolver(store, job, artifacts, list(uploaded or []))
    rt = JobRuntime.prepare(job, spec, record.space, artifacts, resolve)
    runtimes[job] = rt
    while len(runtimes) > KEEP_JOBS:
        runtimes.popitem(last=False)
    return rt


def rss_mb() -> float:
    """This process's resident memory in MiB (0 when it cannot be read)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # noqa: BLE001 - memory reporting is best effort
        return 0.0
