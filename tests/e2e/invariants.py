"""The exactly-once invariant that every fault scenario asserts (docs/reliability.md),
as ``store/audit.py`` checks it: the job ends; each trial it created was created once
and is final (COMPLETED, FAILED with its reason, or CANCELLED), with one completion
event in the job's event stream; none is left READY, RUNNING or holding a lease; its
attempts are the runs that were started (one number per start, a released run's number
given out again) and within its retry budget."""

from __future__ import annotations

from tunecluster.store import Store
from tunecluster.store.audit import exactly_once


def assert_exactly_once(store: Store, job: str, trials: int | None = None) -> list[dict]:
    """Assert the invariant for ``job`` from what Redis holds (its record, its trials,
    its event stream, the leases); ``trials``: how many it must have created. Returns
    the trial records."""
    problems, rows = exactly_once(store, job, trials)
    assert not problems, "\n".join(problems)
    return rows
