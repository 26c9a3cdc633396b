"""A state move the chief makes on what it read a moment ago, refused because the job
moved meanwhile (another chief took over, a client deleted it, Redis rolled back), is a
stale view: the chief reloads from Redis and goes on. It never ends the chief."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_schedulers import Recorder, _job, _leading_chief  # the same leading chief

from tunecluster.chief.loop import Chief
from tunecluster.states import JobState
from tunecluster.store import Store
from tunecluster.store.connection import Backoff


def _active_chief(store: Store, tmp_path: Path) -> tuple[Chief, str]:
    job = _job(store)
    chief = _leading_chief(store, tmp_path, Recorder("ray"))  # the job is native: not its
    chief.leader, chief._resync = True, False
    return chief, job


@pytest.mark.parametrize("moved_to", [JobState.RUNNING, JobState.DELETING])
def test_a_job_that_moved_between_the_read_and_the_move_costs_a_reload_not_the_chief(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        moved_to: JobState) -> None:
    """Soak seed 14 found it: a chief whose Redis link was slow read a job queued; a
    standby took over meanwhile and started it; the first chief's move (queued ->
    running) was refused, "cannot move from running to running", and the chief exited."""
    chief, job = _active_chief(store, tmp_path)
    real = store.jobs.get

    def moved_meanwhile(job_id: str):  # noqa: ANN202 - what Jobs.get returns
        record = real(job_id)
        store.client.hset(store.keys.job(job_id), "state", moved_to.value)
        return record

    monkeypatch.setattr(store.jobs, "get", moved_meanwhile)

    chief.round(Backoff(first=0.01, cap=0.01))

    assert chief._resync  # the next round reloads from Redis
    assert job not in chief.jobs
    assert store.jobs.field([job], "state") == [moved_to.value]  # nothing written


def test_a_finalize_of_a_job_deleted_meanwhile_costs_a_reload_not_the_chief(
        store: Store, tmp_path: Path) -> None:
    chief, job = _active_chief(store, tmp_path)
    hosted = chief._job(job)
    assert hosted is not None
    hosted.exhausted = True  # the search is over: the round finalizes it
    store.client.hset(store.keys.job(job), "state", JobState.DELETING.value)  # a client

    chief.round(Backoff(first=0.01, cap=0.01))

    assert chief._resync
    assert store.jobs.field([job], "state") == [JobState.DELETING.value]
    assert not (tmp_path / job / "results.json").exists()
