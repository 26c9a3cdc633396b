"""Records read from Redis, validated on read: one decoder per record kind.

Anyone who can write to Redis can put anything anywhere: a string where a job's hash
belongs, ``created=xyz``, a spec that is not JSON, a worker with ``slots=abc``. Such a
record is the error of that one job (or worker), never of the reader: the decoders here
either return a record whose fields have their types, or raise ``MalformedRecord`` (a
``StoreError``: one line naming the record and what is wrong). Callers do not parse
fields themselves.

- ``JobRecord.parse``: a job's hash; strict (a job that cannot be read is not run).
- ``trial_rows``: a job's trial hashes; a wrong-typed one is skipped, the trial's id is
  the one its index holds.
- ``worker_info``: a worker's hash; lenient (a garbled number is flagged, and offers no
  slot), so the census and the pages go on.
- ``read_hash`` / ``read_or``: Redis reads whose WRONGTYPE answer names the record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from tunecluster.errors import StoreError
from tunecluster.ids import is_trial_id
from tunecluster.states import ACTIVE_JOB_STATES, FINAL_JOB_STATES, JOB_STATES, JobState
from tunecluster.store import codec

ACTIVE_STATES = ACTIVE_JOB_STATES
FINAL_STATES = FINAL_JOB_STATES
DELETING = JobState.DELETING  # a job being deleted (the hash is removed last)
MALFORMED = "malformed"  # how readers that list jobs show one that cannot be read
WORKER_NUMBERS = ("slots", "busy", "beat", "trials")  # the numbers of a worker's record

T = TypeVar("T")


class MalformedRecord(StoreError):
    """A record in Redis has the wrong type, or a field that does not decode."""


def is_wrongtype(exc: BaseException) -> bool:
    return isinstance(exc, redis.ResponseError) and "WRONGTYPE" in str(exc)


def read_hash(r: redis.Redis, key: str, what: str) -> dict[str, str]:
    """HGETALL of ``key``; ``MalformedRecord`` naming ``what`` when it is no hash."""
    try:
        return r.hgetall(key)
    except redis.ResponseError as exc:
        if not is_wrongtype(exc):
            raise
        raise MalformedRecord(f"{what} is a Redis {r.type(key)}, expected a hash") from None


def read_or(default: T, call: Callable[..., T], *args: Any) -> T:
    """``call(*args)``, or ``default`` when Redis answers WRONGTYPE: for readers that
    go on without a record of the wrong type (delete, the trial list)."""
    try:
        return call(*args)
    except redis.ResponseError as exc:
        if not is_wrongtype(exc):
            raise
        return default


def hashes(r: redis.Redis, keys: Iterable[str]) -> list[dict[str, str] | None]:
    """HGETALL of each key in one round trip; None for a key that is no hash."""
    keys = list(keys)
    if not keys:
        return []
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    out: list[dict[str, str] | None] = []
    for reply in pipe.execute(raise_on_error=False):
        if isinstance(reply, Exception):
            if not is_wrongtype(reply):
                raise reply
            out.append(None)
        else:
            out.append(reply)
    return out


def _shown(value: str) -> str:
    return repr(value) if len(value) <= 40 else repr(value[:37] + "...")


def _int(value: str | None) -> int | None:
    """A decimal integer, or None (absent, empty, or garbled)."""
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > 30 or not text.lstrip("-").isdigit():
        return None
    return int(text)


def int_or(value: str | None, default: int) -> int:
    """A record's integer field, or ``default`` when it is absent or garbled."""
    number = _int(value)
    return default if number is None else number


@dataclass
class JobRecord:
    """A job's hash, decoded: every field a reader uses has its type."""

    id: str
    name: str
    state: JobState
    spec: dict[str, Any]
    space: dict[str, Any]
    created: int
    fields: dict[str, str]
    priority: int = 0
    started: int | None = None
    finished: int | None = None
    files: tuple[str, ...] = ()

    @property
    def cancel_requested(self) -> bool:
        return self.fields.get("cancel") == "1"

    @property
    def search(self) -> dict[str, Any]:
        """The spec's ``search`` section (an object: ``parse`` checked it)."""
        return self.spec.get("search") or {}

    @property
    def objective(self) -> tuple[str, str]:
        """(name, direction) of the search's objective, as the spec gives them."""
        objective = self.search.get("objective") or {}
        if isinstance(objective, str):
            return objective, "min"
        direction = objective.get("direction")
        return str(objective.get("name") or "val_loss"), direction if direction == "max" \
            else "min"

    @property
    def max_trials(self) -> int:
        value = self.search.get("max_trials")
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    @classmethod
    def parse(cls, job: str, fields: dict[str, str]) -> JobRecord:
        """Decode ``fields`` (job ``job``'s hash); ``MalformedRecord`` naming the field."""
        def bad(what: str) -> MalformedRecord:
            return MalformedRecord(f"job {job!r} has a malformed record: {what}")

        def number(name: str, required: bool = False) -> int | None:
            raw = fields.get(name)
            if raw in (None, "") and not required:
                return None
            value = _int(raw)
            if value is None:
                raise bad(f"{name}={_shown(raw or '')} is not an integer")
            return value

        try:
            spec = codec.loads_object(fields.get("spec"), "spec")
            space = codec.loads_object(fields.get("space") or "{}", "space")
            files = codec.loads(fields.get("files") or "[]", "files")
        except StoreError as exc:
            raise bad(str(exc)) from None
        state = fields.get("state", "")
        if state not in JOB_STATES:
            raise bad(f"state={_shown(state)} is not one of {', '.join(JOB_STATES)}")
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise bad("files is not a list of names")
        search = spec.get("search")
        if search is not None and not isinstance(search, dict):
            raise bad("spec.search is not an object")
        objective = (search or {}).get("objective")
        if objective is not None and not isinstance(objective, (str, dict)):
            raise bad("spec.search.objective is neither a name nor an object")
        return cls(id=job, name=fields.get("name") or job, state=JobState(state), spec=spec,
                   space=space, created=number("created", required=True) or 0,
                   fields=fields, priority=number("priority") or 0,
                   started=number("started"), finished=number("finished"),
                   files=tuple(files))


def trial_rows(ids: Iterable[str], rows: Iterable[dict[str, str] | None]) -> list[dict[str, str]]:
    """A job's trial hashes, read for ``ids`` (its trial index): those that are hashes
    of a trial id, each with ``trial`` set to its id (what the index says it is)."""
    out = []
    for trial, row in zip(ids, rows, strict=True):
        if row and is_trial_id(trial):
            out.append({**row, "trial": trial})
    return out


def worker_info(fields: dict[str, str]) -> dict[str, Any]:
    """A worker's hash with its numbers decoded (``WORKER_NUMBERS``); a garbled number
    is named in ``malformed`` and counts as 0 (a forged worker offers no slot)."""
    info: dict[str, Any] = dict(fields)
    wrong = []
    for name in WORKER_NUMBERS:
        raw = fields.get(name)
        value = _int(raw) if raw not in (None, "") else (1 if name == "slots" else 0)
        if value is None or value < 0:
            wrong.append(f"{name}={_shown(raw or '')}")
            value = 0
        info[name] = value
    if wrong:
        info["malformed"] = f"not a count: {', '.join(wrong)}"
    return info
