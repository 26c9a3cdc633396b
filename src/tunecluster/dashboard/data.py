"""What the dashboard's pages show, read from Redis through the store's own readers.

Everything here reads (``build_results``, ``JobStore.epochs``, the event stream,
``WorkerRegistry.live``, the downloads index) and returns JSON-ready dicts; nothing
writes, and nothing imports TensorFlow.

Load: a job's document (results, histories, charts, importance) is built once per change
of the job and shared by every page: it is kept while the job's event stream has no new
event (the hub's reader knows its last id, ``Hub.version``; without a reader one
XREVRANGE tells). The Jobs list is kept for ``ttl_s``.
Importance is recomputed only when the set of completed trials changes; a trial's
document (its attempts come from the whole event stream) is cached the same way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from tunecluster import defaults
from tunecluster.dashboard import pareto, plots, timeline
from tunecluster.dashboard.importance import hyperparameter_importance
from tunecluster.errors import StoreError
from tunecluster.render import failure_reason
from tunecluster.states import FINAL_TRIAL_STATES, TrialState
from tunecluster.store import FINAL_STATES, Store
from tunecluster.store.records import MalformedRecord, read_or
from tunecluster.store.results import build_results, objective_parts
from tunecluster.store.results import malformed_summary as malformed_row

ENDED = FINAL_TRIAL_STATES
DOWNLOADS = ("best_model.keras", "results.json", "results.csv")
MAX_CACHED_JOBS = 64


def summary(results: dict[str, Any], record: Any, now_ms: int) -> dict[str, Any]:
    """A row of the Jobs view: state, progress, best score, elapsed time and the
    estimate of the time left (mean time per ended trial times the trials left)."""
    total = record.max_trials
    done = sum(n for s, n in results["counts"].items() if s in ENDED)
    start = record.started or record.created or now_ms
    end = results.get("finished") or now_ms
    elapsed = max(0.0, (end - start) / 1000)
    active = results["state"] not in FINAL_STATES
    eta = elapsed / done * max(0, total - done) if active and done and total else None
    best = results.get("best")
    return {
        "job": results["job"], "name": results["name"], "state": results["state"],
        "objective": results["objective"],
        "best": best["score"] if best else None, "best_trial": best["trial"] if best else None,
        "done": done, "total": total, "trials": sum(results["counts"].values()),
        "counts": results["counts"], "elapsed_s": round(elapsed, 1),
        "eta_s": round(eta, 1) if eta is not None else None,
        "priority": record.priority,
        "scheduler": results.get("scheduler", "native"), "created": results["created"],
        "finished": results.get("finished"), "error": results.get("error"),
        "waiting": results.get("waiting"),  # why its trials cannot start (gangs)
    }


def malformed_summary(job: str, reason: str) -> dict[str, Any]:
    """The Jobs view's row of a job whose record cannot be read: state ``malformed``,
    the reason as its error (``delete`` removes it)."""
    return {**malformed_row(job, reason), "best_trial": None, "done": 0, "total": 0,
            "trials": 0, "elapsed_s": 0.0, "eta_s": None, "priority": 0,
            "scheduler": None}


def public_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The job spec as shown: without the model module's source text."""
    model = spec.get("model")
    model = {k: v for k, v in model.items() if k != "source"} if isinstance(model, dict) else {}
    return {**spec, "model": model}


class Reader:
    """The dashboard's reads (see the module's docstring on caching)."""

    def __init__(self, store: Store, hub: Any = None, ttl_s: float = 1.0) -> None:
        self.store = store
        self.hub = hub
        self.ttl_s = ttl_s
        self._jobs: dict[str, tuple[str | None, float, dict[str, Any]]] = {}
        self._importance: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self._list: tuple[float, list[dict[str, Any]]] | None = None
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.builds = 0  # job documents built (tests and the bench read it)

    def _job_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())

    # --- Jobs ------------------------------------------------------------------------

    def jobs(self, state: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Rows of the Jobs view, newest first (``state``: only that state)."""
        with self._job_lock("__list__"):
            cached = self._list
            if cached is None or time.monotonic() - cached[0] > self.ttl_s:
                now = int(time.time() * 1000)
                rows = []
                for job in self.store.jobs.all(limit):
                    try:
                        record = self.store.jobs.get(job)
                        rows.append(summary(build_results(self.store.jobs, job), record, now))
                    except MalformedRecord as exc:  # one job's error: shown, flagged
                        rows.append(malformed_summary(job, str(exc)))
                    except StoreError:  # deleted meanwhile
                        continue
                cached = self._list = (time.monotonic(), rows)
        return [r for r in cached[1] if state in (None, "", r["state"])]

    # --- Job -------------------------------------------------------------------------

    def job(self, job: str) -> dict[str, Any]:
        """The Job view's document: the results, each trial's epochs, the search space,
        progress, downloads, importance and every chart (``plots.job_figures``)."""
        return self._cached(job, job, lambda: self._build(job))

    def version(self, job: str) -> str:
        """The id of the job's last event: the hub's reader knows it without asking
        Redis; with no reader, one XREVRANGE tells."""
        seen = self.hub.version(job) if self.hub is not None else None
        if seen is not None:
            return seen
        return self.store.events.last_id(job)

    def _cached(self, key: str, job: str, build: Any) -> dict[str, Any]:
        """``build()``'s document for ``key``, rebuilt only when the job has a new event
        (every change of a job or its trials writes one)."""
        with self._job_lock(key):
            version = self.version(job)
            hit = self._jobs.get(key)
            if hit is not None and hit[0] == version:
                return hit[2]
            doc = build()
            if len(self._jobs) >= MAX_CACHED_JOBS:
                self._jobs.pop(next(iter(self._jobs)))
            self._jobs[key] = (version, time.monotonic(), doc)
            return doc

    def _build(self, job: str) -> dict[str, Any]:
        self.builds += 1
        last = self.store.events.last_id(job)
        record = self.store.jobs.get(job)
        results = build_results(self.store.jobs, job)
        histories = {t["trial"]: self.store.jobs.epochs(job, t["trial"])
                     for t in results["trials"]}
        space = plots.space_info(record.space, record.spec)
        importance = self._importance_of(job, results, space)
        parts = objective_parts(record.search.get("objective"))
        return {
            **results,
            # the trial table's reason column: why a FAILED trial failed, one short line
            "trials": [{**t, "reason": failure_reason(t["error"]) if t["state"] == TrialState.FAILED
                        else None} for t in results["trials"]],
            "summary": summary(results, record, int(time.time() * 1000)),
            "spec": public_spec(record.spec),
            "space": space,
            "histories": {t: {str(e): m for e, m in h.items()} for t, h in histories.items()},
            "importance": importance,
            "figures": {**plots.job_figures(results, histories, space, importance),
                        "timeline": timeline.timeline(results, time.time() * 1000),
                        "best_time": timeline.best_over_time(results),
                        **({"pareto": pareto.pareto(results, parts)} if parts else {})},
            "downloads": self.downloads(job, results["state"]),
            "last_event": last,
        }

    def _importance_of(self, job: str, results: dict[str, Any],
                       space: dict[str, Any]) -> dict[str, Any]:
        key = tuple(sorted((t["trial"], t["score"]) for t in results["trials"]
                           if t["state"] == TrialState.COMPLETED))
        hit = self._importance.get(job)
        if hit is not None and hit[0] == key:
            return hit[1]
        found = hyperparameter_importance(results, space)
        if len(self._importance) >= MAX_CACHED_JOBS:
            self._importance.pop(next(iter(self._importance)))
        self._importance[job] = (key, found)
        return found

    def downloads(self, job: str, state: str) -> list[dict[str, Any]]:
        """The job view's downloads: the results document (JSON, CSV) at any time, the
        best model once the chief published it (``store.downloads.index``)."""
        from tunecluster.artifacts import BEST_MODEL
        from tunecluster.store import downloads

        # a downloads key of the wrong type (foreign data): no downloads, not a 5xx
        meta = read_or({}, downloads.index, self.store, job).get(BEST_MODEL) or {}
        if meta.get("published"):
            model = {"available": True, "size": meta.get("size")}
        elif meta:
            model = {"available": False, "note": f"not published: {meta.get('reason')}"
                     if "malformed" not in meta else f"malformed entry: {meta['malformed']}"}
        elif state in FINAL_STATES:
            model = {"available": False, "note": f"no exported model (job {state})"}
        else:
            model = {"available": False, "note": "exported when the job completes"}
        return [{"name": BEST_MODEL, **model},
                {"name": "results.json", "available": True},
                {"name": "results.csv", "available": True}]

    # --- Trial -----------------------------------------------------------------------

    def trial(self, job: str, trial: str) -> dict[str, Any]:
        """One trial: its row, every metric per epoch, its attempts (from the event
        stream: worker, start, end, how it ended) and the reasons earlier ones ended."""
        return self._cached(f"{job}/{trial}", job, lambda: self._build_trial(job, trial))

    def _build_trial(self, job: str, trial: str) -> dict[str, Any]:
        results = build_results(self.store.jobs, job)
        row = next((t for t in results["trials"] if t["trial"] == trial), None)
        if row is None:
            raise StoreError(f"job {job!r} has no trial {trial!r}")
        history = self.store.jobs.epochs(job, trial)
        reasons = self.store.jobs.trial_errors(job, trial)
        return {
            "job": job, "name": results["name"], "objective": results["objective"],
            "trial": row, "epochs": {str(e): m for e, m in history.items()},
            "attempts": attempts(self._trial_events(job, trial)),
            "ended_attempts": list(reasons), "figure": plots.trial_metrics(trial, history),
            "best": (results.get("best") or {}).get("trial") == trial,
        }

    def _trial_events(self, job: str, trial: str) -> list[Any]:
        out, after = [], "0-0"
        while True:
            events = self.store.events.read(job, after, count=2000)
            if not events:
                return out
            after = events[-1].id
            out += [e for e in events if e.data.get("trial") == trial]

    # --- Workers and Compare ---------------------------------------------------------

    def workers(self) -> list[dict[str, Any]]:
        """Live workers: host, slots, busy slots, current trials (from the leases),
        heartbeat age, and devices / trial-process memory where the worker reports them."""
        live = self.store.workers.live(defaults.LEASE_S)  # decoded: numbers are ints
        now = self.store.now_ms()
        current = self.store.workers.current_trials()
        rows = []
        for worker, info in sorted(live.items()):
            beat = info["beat"]
            rows.append({
                "worker": worker, "host": info.get("host"), "pid": info.get("pid"),
                "slots": info["slots"], "busy": info["busy"], "trials_run": info["trials"],
                "current": current.get(worker, []),
                "heartbeat_age_s": round(max(0, now - beat) / 1000, 1) if beat else None,
                "devices": info.get("devices"), "rss_mb": info.get("rss_mb"),
                "malformed": info.get("malformed"),  # why its record does not decode
            })
        return rows

    def compare(self, jobs: Iterable[str]) -> dict[str, Any]:
        """Several jobs' histories overlaid (best score so far by trial)."""
        docs = [build_results(self.store.jobs, j) for j in jobs]
        return {"jobs": [{k: d[k] for k in ("job", "name", "state", "objective", "best")}
                         for d in docs],
                "figure": plots.compare_histories(docs)}


def attempts(events: list[Any]) -> list[dict[str, Any]]:
    """A trial's attempts from its events: who ran it, from when to when, how it ended
    (completed, failed with the error, retried: lost lease / crash, with the reason)."""
    out: list[dict[str, Any]] = []
    for e in events:
        at = int(e.id.split("-")[0])
        if e.type == "trial_started":
            out.append({"attempt": e.data.get("attempt"), "worker": e.data.get("worker"),
                        # a gang's members in rank order (None: one worker)
                        "workers": e.data.get("workers"),
                        "start": at, "end": None, "ended": "running", "reason": None})
            continue
        if not out or out[-1]["end"] is not None:
            if e.type in ("trial_retry", "trial_failed") and e.data.get("attempt"):
                out.append({"attempt": e.data.get("attempt"), "worker": e.data.get("worker"),
                            "start": None, "end": None, "ended": "", "reason": None})
            else:
                continue
        current = out[-1]
        if e.type == "trial_retry":
            current.update(end=at, ended="retried", reason=e.data.get("reason"))
        elif e.type.startswith("trial_") and e.type not in ("trial_created",
                                                              "trial_stopped_early"):
            current.update(end=at, ended=e.type.removeprefix("trial_"),
                           reason=e.data.get("error") or e.data.get("reason"))
    return out
