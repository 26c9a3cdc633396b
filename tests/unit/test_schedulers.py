"""The chief loads every active job once, for both schedulers, and hands each
scheduler its own (engine/scheduling.py): a Ray job reaches the Ray scheduler already
running, a job that cannot load is quarantined by the loader and reaches none. And the
chief finalizes every job a scheduler says has ended, under its fence, as it does a
native one."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from tunecluster.api.submission import prepare_job, submit
from tunecluster.chief.loop import Chief
from tunecluster.engine.scheduling import JobEnd, LoadedJob, Scheduler
from tunecluster.ray.jobs import RayJobs
from tunecluster.states import JobState
from tunecluster.store import Store

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class Recorder:
    """A scheduler that runs nothing and notes what the chief hands it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ticks: list[list[LoadedJob]] = []
        self.stopped = 0
        self.ends: dict[str, JobEnd] = {}

    def tick(self, jobs: Sequence[LoadedJob]) -> None:
        self.ticks.append(list(jobs))

    def stop_all(self) -> None:
        self.stopped += 1

    def ended(self) -> Mapping[str, JobEnd]:
        return self.ends


def _job(store: Store, *overrides: str) -> str:
    return submit(store, prepare_job(EXAMPLES / "digits.yaml",
                                     ("search.max_trials=2", *overrides), discover=False))


def test_the_ray_scheduler_is_a_scheduler(store: Store, tmp_path: Path) -> None:
    assert isinstance(RayJobs(store, tmp_path, "chief-1"), Scheduler)


def test_each_scheduler_gets_its_loaded_jobs_and_only_those(store: Store,
                                                            tmp_path: Path) -> None:
    native = _job(store)
    ray = _job(store, "scheduler=ray")
    broken = _job(store, "scheduler=ray")
    store.client.hset(store.keys.job(broken), "spec",  # readable, but no valid job
                      '{"scheduler": "ray", "search": {"algorithm": "no-such"}}')
    chief = Chief(store, tmp_path, chief_id="chief-1")
    recorder = Recorder("ray")
    chief.schedulers = [recorder]
    assert store.control.hold(chief.fence, 10_000)
    chief._active = store.jobs.active()

    chief._tick_schedulers()

    [handed] = recorder.ticks
    assert [job.id for job in handed] == [ray]
    assert handed[0].spec.scheduler == "ray" and handed[0].space == store.jobs.get(ray).space
    # one loader: the Ray job is running before its scheduler starts a run, as the
    # native one is; the one that cannot load is failed with the reason, by the loader
    assert store.jobs.get(ray).state == JobState.RUNNING
    assert store.jobs.get(native).state == JobState.RUNNING
    failed = store.jobs.get(broken)
    assert failed.state == JobState.FAILED and "cannot be loaded" in failed.fields["error"]

    chief._step_down()
    assert recorder.stopped == 1


def _leading_chief(store: Store, tmp_path: Path, scheduler: Recorder) -> Chief:
    chief = Chief(store, tmp_path, chief_id="chief-1")
    chief.schedulers = [scheduler]
    assert store.control.hold(chief.fence, 10_000)
    chief._active = store.jobs.active()
    return chief


def test_a_recorder_is_a_scheduler() -> None:
    assert isinstance(Recorder("ray"), Scheduler)


def test_the_chief_finalizes_the_jobs_a_scheduler_says_ended(store: Store,
                                                            tmp_path: Path) -> None:
    cancelled, failed, running = (_job(store, "scheduler=ray") for _ in range(3))
    recorder = Recorder("ray")
    chief = _leading_chief(store, tmp_path, recorder)
    chief._tick_schedulers()  # loaded: running
    recorder.ends = {cancelled: JobEnd(JobState.CANCELLED),
                     failed: JobEnd(JobState.FAILED, "ray: the head refused the chief")}

    chief._finish_jobs()

    assert store.jobs.get(cancelled).state == JobState.CANCELLED
    record = store.jobs.get(failed)
    assert record.state == JobState.FAILED
    assert record.fields["error"] == "ray: the head refused the chief"
    # finalized as a native job is: the results file, and out of the active set
    results = json.loads((tmp_path / failed / "results.json").read_text())
    assert results["state"] == JobState.FAILED
    assert set(store.jobs.active()) == {running}
    assert chief._active == [running]
    assert store.jobs.get(running).state == JobState.RUNNING


def test_a_deposed_chief_finalizes_no_ended_job(store: Store, tmp_path: Path) -> None:
    from tunecluster.store.fence import LostLeadership

    job = _job(store, "scheduler=ray")
    recorder = Recorder("ray")
    chief = _leading_chief(store, tmp_path, recorder)
    chief._tick_schedulers()
    recorder.ends = {job: JobEnd(JobState.CANCELLED)}
    store.client.set(store.keys.chief_lock, "chief-2")  # another chief took the lock

    with pytest.raises(LostLeadership):
        chief._finish_jobs()
    assert store.jobs.get(job).state == JobState.RUNNING
    assert not (tmp_path / job / "results.json").exists()


def test_a_finalize_whose_state_redis_lost_reloads_instead_of_failing_the_job(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A soak found it: Redis rolled back (to a copy from before the job turned
    finalizing) while the chief finalized; the final move was refused (running ->
    completed) and the chief failed the job. Redis no longer holds what the chief wrote:
    it must reload, as after any lost write, and the job stays as Redis has it."""
    from tunecluster.engine import finalize as finalizing
    from tunecluster.store.fence import StaleState

    job = _job(store, "scheduler=ray")
    recorder = Recorder("ray")
    chief = _leading_chief(store, tmp_path, recorder)
    chief._tick_schedulers()
    recorder.ends = {job: JobEnd(JobState.COMPLETED)}
    real = finalizing.build_results

    def rolled_back_meanwhile(jobs: object, job_id: str) -> dict:
        store.client.hset(store.keys.job(job), "state", "running")  # the older copy
        return real(jobs, job_id)

    monkeypatch.setattr(finalizing, "build_results", rolled_back_meanwhile)
    with pytest.raises(StaleState):
        chief._finish_jobs()
    assert store.jobs.get(job).state == JobState.RUNNING
    assert "error" not in store.jobs.get(job).fields


def test_a_search_whose_last_ends_are_still_in_the_inbox_is_finalized_after_its_oracle_has_them(
        store: Store, tmp_path: Path) -> None:
    """Found under load: the trials' records turned final between the chief's inbox read
    and its check for finished searches, and the chief finalized the job with an oracle
    that still held them running. Its persisted oracle (what ``tuner.oracle`` reads) then
    missed their scores: ``get_best_hyperparameters`` named a worse trial. The oracle
    takes those ends from the records first; the job is finalized on the next round, its
    oracle state holding every trial's end."""
    from keras_tuner.engine.trial import Trial

    job = _job(store)  # random search, max_trials=2
    chief = _leading_chief(store, tmp_path, Recorder("ray"))
    for _ in range(2):  # loads the job; makes its trials (one a round: no worker yet)
        chief._drain(pending=False, block_ms=10)
    hosted = chief._job(job)
    assert hosted is not None and hosted.host is not None and hosted.host.ongoing() == 2
    hosted.exhausted = True  # as once the oracle says STOPPED
    for score in (0.25, 0.75):  # a worker trains both; its end messages wait in the inbox
        claim = store.queue.claim("w1", 30)
        assert claim is not None
        metrics = json.dumps({"val_accuracy": score, "accuracy": score})
        assert store.queue.finish(claim, "w1", "COMPLETED", {
            "score": repr(score), "metrics": metrics, "best_epoch": "1",
            "model": ""})  # no model file to look for: a trial that trained none

    chief._finish_jobs()  # the records are final; the oracle has not seen the ends

    assert store.jobs.get(job).state == JobState.RUNNING  # not finalized on a stale oracle
    assert hosted.host.ongoing() == 0
    chief._drain(pending=False, block_ms=10)  # commits the oracle; the late ends are no-ops
    chief._finish_jobs()
    assert store.jobs.get(job).state == JobState.COMPLETED
    _state, trials = store.jobs.oracle_state(job)
    ended = {tid: Trial.from_state(json.loads(raw)) for tid, raw in trials.items()}
    assert sorted(t.status for t in ended.values()) == ["COMPLETED", "COMPLETED"]
    assert sorted(t.score for t in ended.values()) == [0.25, 0.75]
