"""The exactly-once invariant, checked on what Redis holds about one job.

Every fault test asserts it (``tests/e2e/invariants.py``) and the soak checks it for
every job it ran (``bench/soak.py``): the job ended; each trial it created was created
once and is final (COMPLETED, FAILED with its reason, or CANCELLED), with one completion
event in the job's event stream; none is left READY, RUNNING or holding a lease; its
attempts are the runs that were started (one number per start, a released run's number
given out again) and within its retry budget. Read-only: it reports, it repairs nothing.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from tunecluster.states import FINAL_JOB_STATES, TrialState
from tunecluster.store import Store

FINAL_TRIAL_STATES = (TrialState.COMPLETED, TrialState.FAILED, TrialState.CANCELLED)
# The event a trial's final state is announced with.
COMPLETION_EVENTS = {f"trial_{state.lower()}": state.value for state in FINAL_TRIAL_STATES}


def exactly_once(store: Store, job: str,
                 trials: int | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """What breaks the invariant for ``job`` (one line each; empty: it holds) and the
    job's trial records. ``trials``: how many trials it must have created."""
    problems: list[str] = []
    state = store.jobs.get(job).state
    if state not in FINAL_JOB_STATES:
        problems.append(f"job {job} did not end: {state}")
    ids = store.jobs.trial_ids(job)
    if len(ids) != len(set(ids)):
        problems.append(f"a trial is listed twice: {ids}")
    if trials is not None and len(ids) != trials:
        problems.append(f"{len(ids)} trials, expected {trials}: {ids}")
    events = store.events.read(job, count=1_000_000)
    created = Counter(e.data.get("trial") for e in events if e.type == "trial_created")
    if created != Counter(ids):
        problems.append(f"trials created (events) {dict(created)} != listed {ids}")
    ended: dict[str, list[str]] = defaultdict(list)
    started: dict[str, set[int]] = defaultdict(set)
    for e in events:
        if e.type in COMPLETION_EVENTS:
            ended[str(e.data.get("trial"))].append(COMPLETION_EVENTS[e.type])
        elif e.type == "trial_started":
            started[str(e.data.get("trial"))].add(int(e.data.get("attempt", -1)))
    rows = []
    for tid in ids:
        row = store.jobs.trial(job, tid)
        rows.append(row)
        problems += _trial_problems(store, job, tid, row, ended[tid], started[tid])
    return problems, rows


def _trial_problems(store: Store, job: str, tid: str, row: dict[str, Any],
                    ended: list[str], started: set[int]) -> list[str]:
    final = row.get("state")
    if final not in FINAL_TRIAL_STATES:
        return [f"trial {tid} left {final}: {row}"]
    problems = []
    if final == TrialState.FAILED and not row.get("error"):
        problems.append(f"trial {tid} FAILED without a reason: {row}")
    if ended != [final]:
        problems.append(f"trial {tid} is {final}; its completion events: {ended} (exactly"
                        f" one trial_{final.lower()} expected)")
    if store.client.zscore(store.keys.leases, f"{job}/{tid}") is not None:
        problems.append(f"trial {tid} is {final} but still holds a lease")
    attempts = int(row.get("attempts") or 0)
    budget = int(row.get("max_retries") or 0) + 1
    if not 0 <= attempts <= budget:
        problems.append(f"trial {tid}: {attempts} attempts, budget {budget}")
    if started != set(range(1, attempts + 1)):
        problems.append(f"trial {tid} counts {attempts} attempts; runs started:"
                        f" {sorted(started)}")
    if final == TrialState.COMPLETED and attempts < 1:
        problems.append(f"trial {tid} COMPLETED without a run: {row}")
    return problems
