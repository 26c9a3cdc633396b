"""The chief loads every active job once, for both schedulers, and hands each
scheduler its own (engine/scheduling.py): a Ray job reaches the Ray scheduler already
running, a job that cannot load is quarantined by the loader and reaches none."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tunecluster.api.submission import prepare_job, submit
from tunecluster.chief.loop import Chief
from tunecluster.engine.scheduling import LoadedJob, Scheduler
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

    def tick(self, jobs: Sequence[LoadedJob]) -> None:
        self.ticks.append(list(jobs))

    def stop_all(self) -> None:
        self.stopped += 1


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
