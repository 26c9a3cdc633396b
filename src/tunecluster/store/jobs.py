"""Job records: submit (all or nothing), read, list, state changes, cancellation."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from tunecluster.errors import StoreError
from tunecluster.store import codec
from tunecluster.store.fence import Fence, Writes
from tunecluster.store.keys import Keys
from tunecluster.store.queue import EVENTS_MAXLEN, now_ms

ACTIVE_STATES = ("queued", "running", "finalizing")
FINAL_STATES = ("completed", "failed", "cancelled")


@dataclass
class JobRecord:
    id: str
    name: str
    state: str
    spec: dict[str, Any]
    space: dict[str, Any]
    created: int
    fields: dict[str, str]

    @property
    def cancel_requested(self) -> bool:
        return self.fields.get("cancel") == "1"


class JobStore:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.k = keys

    def submit(self, name: str, spec_json: str, space: Mapping[str, Any], priority: int,
               scheduler: str, files: Mapping[str, bytes] | None = None) -> str:
        """Queue a validated job: record, files and queue entry land in one transaction."""
        job = f"{name}-{secrets.token_hex(3)}"
        created = now_ms()
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.k.job(job), mapping={
            "id": job, "name": name, "state": "queued", "spec": spec_json,
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
        fields = self.r.hgetall(self.k.job(job))
        if not fields:
            raise StoreError(f"no job {job!r}")
        try:
            return JobRecord(
                id=job,
                name=fields.get("name", job),
                state=fields.get("state", "unknown"),
                spec=codec.loads_object(fields.get("spec"), f"spec of job {job}"),
                space=codec.loads_object(fields.get("space", "{}"), f"space of job {job}"),
                created=int(fields.get("created", 0)),
                fields=fields,
            )
        except ValueError as exc:
            raise StoreError(f"job {job!r} has a malformed record: {exc}") from None

    def exists(self, job: str) -> bool:
        return bool(self.r.exists(self.k.job(job)))

    def active(self) -> list[str]:
        """Active job ids, highest priority first, then oldest first."""
        return list(self.r.zrange(self.k.jobs_active, 0, -1))

    def all(self, limit: int = 100) -> list[str]:
        return list(self.r.zrevrange(self.k.jobs_all, 0, limit - 1))

    def set_state(self, job: str, state: str, *, fence: Fence = Fence.NONE,
                  **fields: Any) -> None:
        """Change a job's state (and fields) in one atomic step; the chief passes its
        ``fence`` so that a deposed chief's change is refused (``LostLeadership``)."""
        writes = Writes()
        self.stage_state(writes, job, state, **fields)
        writes.apply(self.r, fence)

    def stage_state(self, writes: Writes, job: str, state: str, **fields: Any) -> None:
        """Add a state change to ``writes``, to be applied with other writes at once."""
        mapping = {"state": state, **{k: v if isinstance(v, str) else codec.dumps(v)
                                      for k, v in fields.items()}}
        if state in FINAL_STATES:
            mapping["finished"] = str(now_ms())
            writes.zrem(self.k.jobs_active, job)
        elif state == "running" and "started" not in mapping:
            writes.hsetnx(self.k.job(job), "started", now_ms())
        writes.hset(self.k.job(job), mapping=mapping)
        writes.xadd(self.k.events(job), {"type": "job_state", "data": codec.dumps(
            {"state": state, **{k: v for k, v in fields.items() if k in ("error",)}})},
            maxlen=EVENTS_MAXLEN, approximate=True)

    def request_cancel(self, job: str) -> str:
        """Ask the chief to cancel; returns the job's state at the time of asking."""
        record = self.get(job)
        if record.state in FINAL_STATES:
            return record.state
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.k.job(job), "cancel", "1")
        pipe.xadd(self.k.inbox, {"type": "cancel", "job": job})
        pipe.execute()
        return record.state

    def file(self, raw: redis.Redis, job: str, name: str) -> bytes:
        data = raw.get(self.k.job_file(job, name))
        if data is None:
            raise StoreError(f"job {job!r} has no uploaded file {name!r}")
        return bytes(data)

    def trial_ids(self, job: str) -> list[str]:
        return list(self.r.zrange(self.k.trials(job), 0, -1))

    def trials(self, job: str) -> list[dict[str, str]]:
        ids = self.trial_ids(job)
        pipe = self.r.pipeline(transaction=False)
        for trial in ids:
            pipe.hgetall(self.k.trial(job, trial))
        return [row for row in pipe.execute() if row]

    def trial(self, job: str, trial: str) -> dict[str, str]:
        return self.r.hgetall(self.k.trial(job, trial))

    def epochs(self, job: str, trial: str) -> dict[int, dict[str, float]]:
        raw = self.r.hgetall(self.k.epochs(job, trial))
        out = {}
        for epoch, metrics in raw.items():
            try:
                out[int(epoch)] = codec.loads_object(metrics, f"epoch {epoch} of {trial}")
            except (ValueError, StoreError):
                continue
        return dict(sorted(out.items()))

    def oracle_state(self, job: str) -> tuple[str | None, dict[str, str]]:
        """The chief's persisted oracle: its own state and each trial's."""
        return self.r.get(self.k.oracle(job)), self.r.hgetall(self.k.oracle_trials(job))
