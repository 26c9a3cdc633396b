"""Job records: submit (all or nothing), read, list, state changes, cancellation, delete.

Retention: a job's uploaded data files are freed when it reaches a final state (the
test split was evaluated just before); everything else it created stays until
``delete``, which removes every key that names the job.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

import redis

from tunecluster.errors import RefusedMove, StoreError
from tunecluster.ids import check_job_id, is_job_id, new_job_id
from tunecluster.states import JOB_STATES, JobState
from tunecluster.store import codec
from tunecluster.store.fence import Fence, Writes
from tunecluster.store.keys import Keys, split_member
from tunecluster.store.queue import EVENTS_MAXLEN, now_ms, ready_entries
from tunecluster.store.records import (
    ACTIVE_STATES,
    DELETING,
    FINAL_STATES,
    MALFORMED,
    JobRecord,
    MalformedRecord,
    hashes,
    is_wrongtype,
    read_hash,
    read_or,
    trial_rows,
)

__all__ = ["ACTIVE_STATES", "DELETING", "FINAL_STATES", "JobRecord", "JobStore",
           "MalformedRecord"]


class JobStore:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.k = keys

    def submit(self, name: str, spec_json: str, space: Mapping[str, Any], priority: int,
               scheduler: str, files: Mapping[str, bytes] | None = None) -> str:
        """Queue a validated job: record, files and queue entry land in one transaction."""
        job = new_job_id(name)
        created = now_ms()
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.k.job(job), mapping={
            "id": job, "name": name, "state": JobState.QUEUED.value, "spec": spec_json,
            "space": codec.dumps(dict(space)), "created": created, "priority": priority,
            "scheduler": scheduler, "files": codec.dumps(sorted(files or {})),
        })
        for fname, data in (files or {}).items():
            pipe.set(self.k.job_file(job, fname), data)
        pipe.zadd(self.k.jobs_all, {job: created})
        pipe.zadd(self.k.jobs_active, {job: -priority * 1e13 + created})
        pipe.xadd(self.k.events(job), {"type": "job_submitted", "data": codec.dumps({"job": job})},
                  maxlen=EVENTS_MAXLEN, approximate=True)
        pipe.xadd(self.k.inbox, {"type": "submitted", "job": job})
        pipe.execute()
        return job

    def get(self, job: str) -> JobRecord:
        """The job's record, validated (``records.JobRecord.parse``); ``StoreError`` if
        there is none, ``MalformedRecord`` if it does not decode, ``InvalidId`` if its id
        is not one (whoever reads a record goes on to build paths from its id)."""
        check_job_id(job)
        fields = read_hash(self.r, self.k.job(job), f"the record of job {job!r}")
        if not fields:
            raise StoreError(f"no job {job!r}")
        return JobRecord.parse(job, fields)

    def quarantine(self, job: str, reason: str, fence: Fence = Fence.NONE) -> bool:
        """Take a job whose record cannot be read (or run) out of the active set, for
        good: marked ``failed`` with ``reason`` (its error) when its key is a hash (True;
        with a ``job_state`` event unless its stream has the wrong type), else only
        dropped from the active set (a key of the wrong type is left for ``delete``).
        Either way the chief stops reading it on every round."""
        if self.r.type(self.k.job(job)) != "hash":
            Writes().zrem(self.k.jobs_active, job).apply(self.r, fence)
            return False
        if self.r.type(self.k.events(job)) in ("stream", "none"):
            self.set_state(job, JobState.FAILED, fence=fence, unchecked=True,
                           error=reason[:2000])
        else:
            Writes().zrem(self.k.jobs_active, job).hset(self.k.job(job), mapping={
                "state": JobState.FAILED.value, "error": reason[:2000],
                "finished": now_ms()}).apply(self.r, fence)
        return True

    def exists(self, job: str) -> bool:
        return bool(self.r.exists(self.k.job(job)))

    def drop_active(self, job: str, fence: Fence = Fence.NONE) -> None:
        """Take ``job`` out of the active set (foreign, or no longer active)."""
        Writes().zrem(self.k.jobs_active, job).apply(self.r, fence)

    def stage_waiting(self, writes: Writes, job: str, why: str) -> Writes:
        """Why the job waits (for ``status``), or "" once it no longer does."""
        return writes.hset(self.k.job(job), "waiting", why)

    def stage_failure(self, writes: Writes, job: str, failure: str) -> Writes:
        """The search's failure, decided by its oracle (finalized once trials end)."""
        return writes.hset(self.k.job(job), "failure", failure)

    def stage_oracle(self, writes: Writes, job: str, state_json: str,
                     trials: Mapping[str, str]) -> Writes:
        """The oracle's state without its trials, and the trials that changed."""
        writes.set(self.k.oracle(job), state_json)
        if trials:
            writes.hset(self.k.oracle_trials(job), mapping=dict(trials))
        return writes

    def stage_publication(self, writes: Writes, publication: Any) -> Writes:
        """A job's downloads put in place (``downloads.Publication``) with ``writes``."""
        return publication.stage(writes, self.k)

    def stage_final(self, writes: Writes, job: str, final_json: str) -> Writes:
        """The final summary written when the job ends (``results`` reads it)."""
        return writes.hset(self.k.job(job), "final", final_json)

    def states(self, jobs: list[str]) -> list[str | None]:
        """Each job's state (None: no record), in one round trip."""
        return self.field(jobs, "state")

    def field(self, jobs: list[str], name: str) -> list[str | None]:
        """One raw field of each job's record (None: absent), in one round trip; the
        caller decodes it (``cancel``, ``scheduler``, ``spec``)."""
        pipe = self.r.pipeline(transaction=False)
        for job in jobs:
            pipe.hget(self.k.job(job), name)
        return list(pipe.execute()) if jobs else []

    def fields(self, job: str, names: list[str]) -> list[str | None]:
        """Some raw fields of one job's record (None: absent), in one round trip."""
        return list(self.r.hmget(self.k.job(job), names))

    def active(self) -> list[str]:
        """Active job ids, highest priority first, then oldest first."""
        return list(self.r.zrange(self.k.jobs_active, 0, -1))

    def all(self, limit: int = 100) -> list[str]:
        """Job ids, newest first; a foreign member that is no job id is not listed (it
        would fail ``get`` and with it the whole ``list``)."""
        return [j for j in self.r.zrevrange(self.k.jobs_all, 0, limit - 1) if is_job_id(j)]

    def set_state(self, job: str, state: JobState | str, *, fence: Fence = Fence.NONE,
                  unchecked: bool = False, **fields: Any) -> None:
        """Change a job's state (and fields) in one atomic step; the chief passes its
        ``fence`` so that a deposed chief's change is refused (``LostLeadership``).
        A move the lifecycle does not make (``JobState.can_move_to``) is refused with
        ``StoreError``; ``unchecked`` is for a record whose state cannot be trusted."""
        writes = Writes()
        self.stage_state(writes, job, state, unchecked=unchecked, **fields)
        writes.apply(self.r, fence)

    def stage_state(self, writes: Writes, job: str, state: JobState | str, *,
                    unchecked: bool = False, **fields: Any) -> None:
        """Add a state change to ``writes``, to be applied with other writes at once.
        The move is checked against the state read now: the chief, under its fence, is
        the only writer of a job's state (``delete`` and ``resume`` aside, which check
        their own)."""
        try:
            state = JobState(state)
        except ValueError:
            raise StoreError(f"job {job!r}: {state!r} is not a job state") from None
        if not unchecked:
            now = read_or(None, self.r.hget, self.k.job(job), "state")
            if now in JOB_STATES and not JobState(now).can_move_to(state):
                raise RefusedMove(f"job {job!r} cannot move from {now} to {state}")
        mapping = {"state": state.value, **{k: v if isinstance(v, str) else codec.dumps(v)
                                            for k, v in fields.items()}}
        if state.is_final:
            mapping["finished"] = str(now_ms())
            writes.zrem(self.k.jobs_active, job)
            # Uploads are needed no more (finalize evaluated the test split before this):
            # freed in the same step. Their names stay in the record's ``files``.
            writes.delete(*self._file_keys(job))
        elif state is JobState.RUNNING and "started" not in mapping:
            writes.hsetnx(self.k.job(job), "started", now_ms())
        writes.hset(self.k.job(job), mapping=mapping)
        writes.xadd(self.k.events(job), {"type": "job_state", "data": codec.dumps(
            {"state": state.value, **{k: v for k, v in fields.items() if k in ("error",)}})},
            maxlen=EVENTS_MAXLEN, approximate=True)

    def request_cancel(self, job: str) -> str:
        """Ask the chief to cancel; returns the job's state at the time of asking.

        WATCHed: a job deleted between the read and the write is not recreated as a
        hash holding only ``cancel``; the retry then finds no job."""
        key = self.k.job(job)
        while True:
            with self.r.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(key)
                    record = self.get(job)
                    if record.state in FINAL_STATES or record.state == DELETING:
                        return record.state
                    pipe.multi()
                    pipe.hset(key, "cancel", "1")
                    pipe.xadd(self.k.inbox, {"type": "cancel", "job": job})
                    pipe.execute()
                    return record.state
                except redis.WatchError:
                    continue

    def resume(self, job: str, max_trials: int | None = None,
               files: Mapping[str, bytes] | None = None) -> tuple[str, str | None]:
        """Put a final job back in the queue to continue its search up to ``max_trials``
        (None: the job's own); returns (the state it had, the id of the resume event,
        None when nothing was done).

        One WATCHed transaction, as ``submit``: the spec's ``search.max_trials``, the
        state ``queued``, the active set, uploads freed at finalize (``files``, which
        must hold every name the record lists) and a ``submitted`` inbox message. The
        chief then loads the job like a new one, with its persisted oracle, so the
        search goes on where it ended, under the chief's fenced writes. Idempotent: an
        active job already at ``max_trials`` is left as it is."""
        key = self.k.job(job)
        while True:
            with self.r.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(key)
                    record = self.get(job)
                    search = dict(record.spec.get("search") or {})
                    target = int(max_trials or search.get("max_trials") or 0)
                    if record.state in ACTIVE_STATES:
                        if target == int(search.get("max_trials") or 0):
                            return record.state, None
                        raise StoreError(f"job {job!r} is {record.state}: resume continues a"
                                         " finished job; wait for it or cancel it first")
                    if record.state not in FINAL_STATES:
                        raise StoreError(f"job {job!r} is {record.state}; it cannot resume")
                    if record.fields.get("scheduler", "native") != "native":
                        raise StoreError(f"job {job!r} runs on Ray: resume applies to"
                                         " native jobs")
                    ran = self.r.zcard(self.k.trials(job))
                    if target <= ran:
                        raise StoreError(f"search.max_trials={target} is not above the"
                                         f" {ran} trial(s) job {job!r} already ran")
                    names = [str(n) for n in codec.loads(record.fields.get("files", "[]"),
                                                         "uploaded files") or []]
                    missing = [n for n in names if n not in (files or {})]
                    if missing:
                        raise StoreError(f"job {job!r}'s uploaded data ({', '.join(missing)})"
                                         " was freed when it ended; give the files again")
                    search["max_trials"] = target
                    spec = {**record.spec, "search": search}
                    priority = record.priority
                    pipe.multi()
                    pipe.hdel(key, "finished", "failure", "error", "cancel", "final")
                    pipe.hset(key, mapping={"state": JobState.QUEUED.value,
                                            "spec": codec.dumps(spec)})
                    pipe.hincrby(key, "resumed", 1)
                    for name in names:
                        pipe.set(self.k.job_file(job, name), (files or {})[name])
                    pipe.zadd(self.k.jobs_active, {job: -priority * 1e13 + record.created})
                    pipe.xadd(self.k.events(job), {"type": "job_state", "data": codec.dumps(
                        {"state": JobState.QUEUED.value, "resumed": True,
                         "max_trials": target})},
                        maxlen=EVENTS_MAXLEN, approximate=True)
                    pipe.xadd(self.k.inbox, {"type": "submitted", "job": job})
                    replies = pipe.execute()
                    return record.state, str(replies[-2])
                except redis.WatchError:
                    continue

    # --- retention ---------------------------------------------------------------------

    def _file_keys(self, job: str) -> list[str]:
        """Keys of the job's uploaded files, as its record lists them."""
        try:
            names = codec.loads(read_or(None, self.r.hget, self.k.job(job), "files")
                                or "[]", "files")
        except StoreError:
            names = []
        if not isinstance(names, list):
            return []
        return [self.k.job_file(job, str(name)) for name in names]

    def delete(self, job: str, *, force: bool = False, wait_s: float = 120.0,
               poll_s: float = 0.2) -> str | None:
        """Remove every Redis key, zset member and queue entry that names the job.

        A final job goes at once; an active one needs ``force``: it is cancelled and
        deleted once final (``StoreError`` after ``wait_s``, nothing deleted). Returns
        the state the job had, None when only the leftovers of an interrupted delete
        were found, and raises ``StoreError`` for a job Redis knows nothing of.

        Races: the record is marked ``deleting`` and dropped from the job lists first,
        so ``list`` stops showing it and a chief's ``_job`` ignores it (not active);
        the job hash itself goes last, so an interrupted delete is finished by the next.
        Worker scripts write only to trials they own (a RUNNING record): once a trial's
        record is gone, no late report or finish can recreate it.
        """
        check_job_id(job)
        kind = self.r.type(self.k.job(job))
        if kind == "none" and not self._leftovers(job):
            raise StoreError(f"no job {job!r}")
        try:  # a record that cannot be read is no job the chief runs: it goes at once
            state: str | None = self.get(job).state if kind != "none" else None
        except MalformedRecord:
            state = MALFORMED
        if state in ACTIVE_STATES:
            if not force:
                raise StoreError(f"job {job!r} is {state}: cancel it first, or delete it"
                                 " with --force (cancels it, then deletes)")
            state = self._cancel_and_wait(job, wait_s, poll_s)
        self._mark_deleting(job, malformed=state == MALFORMED)
        for _ in range(3):  # a racing writer could add a key: sweep again
            self._purge(job)
            if not self._leftovers(job) and not self.r.exists(self.k.job(job)):
                return state
        raise StoreError(f"job {job!r}: keys keep reappearing while deleting; is a"
                         " deposed chief still running?")

    def _cancel_and_wait(self, job: str, wait_s: float, poll_s: float) -> str:
        self.request_cancel(job)
        deadline = time.monotonic() + wait_s
        while True:
            state = self.r.hget(self.k.job(job), "state")
            if state is None or state in FINAL_STATES or state == DELETING:
                return state or DELETING
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"job {job!r} is still {state} after {wait_s:g}s of waiting for its"
                    " cancel; the chief ends it (is a chief running?); nothing was deleted")
            time.sleep(poll_s)

    def _mark_deleting(self, job: str, malformed: bool = False) -> None:
        """Hide the job (lists, active set) and mark it, unless it became active again
        (``malformed``: its record could not be read, so no chief runs it)."""
        key = self.k.job(job)
        while True:
            with self.r.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(key)
                    is_hash = pipe.type(key) == "hash"
                    state = pipe.hget(key, "state") if is_hash else None
                    if state in ACTIVE_STATES and not malformed:
                        raise StoreError(f"job {job!r} became {state} again; not deleted")
                    pipe.multi()
                    if is_hash:  # no hash: leftovers, or a key of the wrong type
                        pipe.hset(key, "state", DELETING)
                    pipe.zrem(self.k.jobs_all, job)
                    pipe.zrem(self.k.jobs_active, job)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    def _purge(self, job: str) -> None:
        """Delete the job's keys: the known ones, queue entries, then a SCAN sweep, and
        the job hash last."""
        trials = set(self.trial_ids(job)) | set(read_or([], self.r.hkeys,
                                                        self.k.oracle_trials(job)))
        keys = [*self._file_keys(job), self.k.oracle(job), self.k.oracle_trials(job),
                self.k.trials(job), self.k.events(job)]
        for trial in trials:
            keys += [self.k.trial(job, trial), self.k.epochs(job, trial),
                     self.k.trial_errors(job, trial), self.k.trial_sync(job, trial)]
        for start in range(0, len(keys), 500):
            self.r.unlink(*keys[start:start + 500])
        for ready, m in ready_entries(self.r, self.k):
            if split_member(m)[0] == job:
                self.r.lrem(ready, 0, m)
        for zset in (self.k.leases, self.k.forming):
            ours = [m for m in self.r.zrange(zset, 0, -1) if split_member(m)[0] == job]
            if ours:
                self.r.zrem(zset, *ours)
        stray = list(self.r.scan_iter(match=self._pattern(job), count=1000))
        for start in range(0, len(stray), 500):
            self.r.unlink(*stray[start:start + 500])
        self.r.unlink(self.k.job(job))

    def _leftovers(self, job: str) -> bool:
        """Whether any key (besides the job hash) or list/zset entry still names the job."""
        if next(self.r.scan_iter(match=self._pattern(job), count=1000), None) is not None:
            return True
        if self.r.zscore(self.k.jobs_all, job) is not None:
            return True
        if self.r.zscore(self.k.jobs_active, job) is not None:
            return True
        return any(split_member(m)[0] == job for m in [
            *self.r.zrange(self.k.leases, 0, -1), *self.r.zrange(self.k.forming, 0, -1),
            *(m for _ready, m in ready_entries(self.r, self.k))])

    def _pattern(self, job: str) -> str:
        """SCAN pattern of every key under the job's prefix (glob characters escaped)."""
        return re.sub(r"([*?\[\]\\])", r"\\\1", self.k.job(job)) + ":*"

    def file(self, raw: redis.Redis, job: str, name: str) -> bytes:
        data = raw.get(self.k.job_file(job, name))
        if data is None:
            raise StoreError(f"job {job!r} has no uploaded file {name!r}")
        return bytes(data)

    def trial_ids(self, job: str) -> list[str]:
        """The job's trial ids (none when its index is not a sorted set)."""
        return list(read_or([], self.r.zrange, self.k.trials(job), 0, -1))

    def trials(self, job: str) -> list[dict[str, str]]:
        """The job's trial records (``records.trial_rows``: wrong-typed ones skipped)."""
        ids = self.trial_ids(job)
        return trial_rows(ids, hashes(self.r, [self.k.trial(job, t) for t in ids]))

    def trial_field(self, job: str, trial: str, name: str) -> str | None:
        """One raw field of a trial's record (None: absent)."""
        value = self.r.hget(self.k.trial(job, trial), name)
        return None if value is None else str(value)

    def trial(self, job: str, trial: str) -> dict[str, str]:
        return read_or({}, self.r.hgetall, self.k.trial(job, trial))

    def trial_errors(self, job: str, trial: str) -> list[str]:
        """Why each earlier attempt of the trial ended (none when the list is no list)."""
        return list(read_or([], self.r.lrange, self.k.trial_errors(job, trial), 0, -1))

    def epochs(self, job: str, trial: str) -> dict[int, dict[str, float]]:
        raw = read_or({}, self.r.hgetall, self.k.epochs(job, trial))
        out = {}
        for epoch, metrics in raw.items():
            try:
                out[int(epoch)] = codec.loads_object(metrics, f"epoch {epoch} of {trial}")
            except (ValueError, StoreError):
                continue
        return dict(sorted(out.items()))

    def oracle_state(self, job: str) -> tuple[str | None, dict[str, str]]:
        """The chief's persisted oracle: its own state and each trial's."""
        try:
            return self.r.get(self.k.oracle(job)), self.r.hgetall(self.k.oracle_trials(job))
        except redis.ResponseError as exc:
            if not is_wrongtype(exc):
                raise
            raise MalformedRecord(f"job {job!r}'s oracle state has the wrong Redis type"
                                  " (expected a string and a hash)") from None
