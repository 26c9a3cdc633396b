"""The trial process: a long-lived child of the worker that imports TensorFlow once,
keeps each job's data warm, runs the trials it is handed and records their outcome.

A crash here (segfault, OOM kill, ``os._exit``) only costs this process: the worker
notices, releases the trial for a retry and starts a fresh child.
Messages to and from the worker are JSON over a local pipe.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections import OrderedDict
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any

KEEP_JOBS = 2  # job runtimes (data + adapt statistics) kept warm per child


class RedisReporter:
    """Reports each epoch to Redis; the answer says whether to stop."""

    def __init__(self, store: Any, claim: Any, worker: str) -> None:
        self.store, self.claim, self.worker = store, claim, worker
        self.cancelled = False

    def epoch(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        from tunecluster.store.queue import CANCEL

        answer = self.store.queue.report_epoch(self.claim, self.worker, epoch, metrics)
        self.cancelled = self.cancelled or answer == CANCEL
        return answer != 0


def child_main(conn: Connection, redis_url: str, artifacts: str, worker: str,
               env: Mapping[str, str]) -> None:
    os.environ.update(env)  # e.g. CUDA_VISIBLE_DEVICES, before TensorFlow is imported
    import gc

    import keras  # noqa: F401 - warm: paid once when the process starts, not per trial
    import tensorflow

    # Each trial builds new tf.functions; TensorFlow warns about "retracing" for every
    # one of them, which is expected here and would flood the worker's log.
    tensorflow.get_logger().setLevel("ERROR")

    from tunecluster.store import Store

    # TensorFlow's import leaves a huge object graph; frozen, it is never rescanned,
    # which keeps the collector's pauses between trials small.
    gc.collect()
    gc.freeze()

    store = Store.from_url(redis_url)
    runtimes: OrderedDict[str, Any] = OrderedDict()
    while True:
        try:
            message = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if message.get("exit"):
            return
        outcome = run_one(store, runtimes, artifacts, worker, message)
        outcome["rss_mb"] = rss_mb()
        conn.send_bytes(json.dumps(outcome).encode())


def run_one(store: Any, runtimes: OrderedDict[str, Any], artifacts: str, worker: str,
            message: Mapping[str, Any]) -> dict[str, Any]:
    from tunecluster.errors import TrialFailed
    from tunecluster.store import Claim, LostLease
    from tunecluster.worker.trial import TrialRequest, run_trial

    claim = Claim(message["job"], message["trial"], int(message["attempt"]),
                  dict(message.get("values") or {}))
    reporter = RedisReporter(store, claim, worker)
    try:
        rt = _runtime(store, runtimes, artifacts, claim.job)
        request = TrialRequest(claim.trial, claim.values, claim.attempt,
                               resume=bool(message.get("resume", claim.attempt > 1)))
        result = run_trial(rt, request, reporter)
    except LostLease as exc:
        return {"outcome": "lost", "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - any failure of the trial is the trial's
        kind = "" if isinstance(exc, TrialFailed) else f"{type(exc).__name__}: "
        message_text = kind + (str(exc).strip().splitlines() or [""])[0][:500]
        store.queue.finish(claim, worker, "FAILED", {
            "error": message_text, "traceback": traceback.format_exc()[-4000:]})
        return {"outcome": "failed", "error": message_text}
    state = "CANCELLED" if reporter.cancelled else "COMPLETED"
    claimed_at = float(message.get("claimed_at") or result.timings["build_at"])
    overhead = {
        # from the claim to the model's build: queue hand-off, pipe, runtime lookup, setup
        "claim_to_build_ms": 1000 * (result.timings["build_at"] - claimed_at),
    }
    fields = {
        "score": repr(result.score),
        "metrics": result.metrics,
        "best_epoch": str(result.best_epoch),
        "resumed_from_epoch": str(result.resumed_from_epoch),
        "result": {**{k: v for k, v in result.to_json().items() if k != "epochs"},
                   "process": os.getpid()},
    }
    # from the last epoch's report to the trial recorded finished (model save included)
    overhead["last_epoch_to_finished_ms"] = 1000 * (time.time() - result.timings["last_epoch_at"])
    fields["overhead"] = overhead
    store.queue.finish(claim, worker, state, fields)
    return {"outcome": state.lower(), "timings": result.timings, "overhead": overhead}


def _runtime(store: Any, runtimes: OrderedDict[str, Any], artifacts: str, job: str) -> Any:
    from tunecluster import defaults
    from tunecluster.artifacts import file_resolver, prune_file_caches
    from tunecluster.errors import TrialFailed
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
