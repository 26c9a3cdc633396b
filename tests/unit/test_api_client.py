"""``tunecluster.Client`` and ``Job`` against a real Redis (no chief: the tests play it)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

import tunecluster
from tunecluster.api import Client, Job
from tunecluster.errors import JobFailed, SpecError, StoreError
from tunecluster.store.results import build_results

ROOT = Path(__file__).resolve().parents[2]
SPEC = {"name": "api-job", "data": {"dataset": "digits"},
        "model": {"builtin": "mlp", "hyperparameters": {"n_hidden": {"int": [1, 2]}}},
        "search": {"objective": "val_accuracy", "max_trials": 2}}


def test_client_is_exported_lazily_and_reads_the_url_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert tunecluster.Client is Client
    monkeypatch.setenv("TUNECLUSTER_REDIS_URL", "redis://127.0.0.1:1/0")
    assert Client().url == "redis://127.0.0.1:1/0"
    assert Client("redis://h:6379/2").url == "redis://h:6379/2"  # no connection yet


def test_submit_a_mapping_then_status_results_and_jobs(client: Client) -> None:
    job = client.submit(SPEC, ["search.max_trials=3"])
    assert isinstance(job, Job) and job.id.startswith("api-job")
    status = job.status()
    assert status["state"] == "queued" and status["name"] == "api-job"
    assert status["objective"] == {"name": "val_accuracy", "direction": "max"}
    assert job.results() == build_results(client.store.jobs, job.id)
    assert job.record().spec["search"]["max_trials"] == 3
    assert job.record().space["space"]  # discovered from the spec's hyperparameters
    assert client.jobs() == [job]
    assert client.job(job.id).state == "queued"


def test_submit_a_path_and_a_spec_object(client: Client) -> None:
    from tunecluster.spec import load_spec_file

    by_path = client.submit(ROOT / "examples" / "digits.yaml", ["search.max_trials=1"])
    spec = load_spec_file(ROOT / "examples" / "digits.yaml")
    by_spec = client.submit(spec)
    assert {j.id for j in client.jobs()} == {by_path.id, by_spec.id}
    assert by_spec.record().spec["name"] == spec.name


def test_an_invalid_spec_queues_nothing(client: Client) -> None:
    with pytest.raises(SpecError, match="search.max_trials"):
        client.submit(SPEC, ["search.max_trials=0"])
    with pytest.raises(SpecError, match="unknown key 'colour'"):
        client.submit({**SPEC, "colour": "red"})
    with pytest.raises(TypeError, match="got int"):
        client.submit(3)
    assert client.jobs() == []


def test_data_no_worker_could_use_is_refused_at_submit(client: Client, tmp_path) -> None:
    """The data files are read once at submit, as every worker would read them: a job
    whose every trial would fail on its data is refused in one line, nothing queued."""
    (tmp_path / "d.csv").write_text("a,b,label\n" + "".join(
        f"{i},{'' if i == 5 else i},{i % 2}\n" for i in range(30)))
    job = {**SPEC, "data": {"path": str(tmp_path / "d.csv"), "target": "label"}}
    with pytest.raises(SpecError, match=r"^data: d\.csv:7: column 'b' has a missing value$"):
        client.submit(job)
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps({**job, "data": {"path": "d.csv", "target": "labels"}}))
    with pytest.raises(SpecError, match=r"^data: d\.csv: no target column 'labels'"):
        client.submit(path)
    assert client.jobs() == []


def test_a_bad_job_id_is_refused_before_redis() -> None:
    with pytest.raises(StoreError):
        Client("redis://127.0.0.1:1/0").job("../etc")


def _finish_later(client: Client, job: Job, state: str, after_s: float) -> threading.Thread:
    def finish() -> None:
        time.sleep(after_s)
        if state in ("completed", "failed", "cancelled"):
            client.store.jobs.set_state(job.id, "finalizing")  # a job ends through finalize
        client.store.jobs.set_state(job.id, state)

    thread = threading.Thread(target=finish)
    thread.start()
    return thread


def test_events_are_live_and_end_when_the_job_is_final(client: Client) -> None:
    job = client.submit(SPEC)
    thread = _finish_later(client, job, "completed", 0.5)
    start = time.monotonic()
    types = [e.type for e in job.events(block_s=0.2)]
    thread.join()
    assert types[0] == "job_submitted" and types[-1] == "job_state"
    assert time.monotonic() - start < 5
    assert [e.type for e in job.events()] == types  # a final job: replays, then ends


def test_wait_times_out_then_returns_the_results(client: Client) -> None:
    job = client.submit(SPEC)
    with pytest.raises(TimeoutError, match="still queued"):
        job.wait(timeout=0.3, poll_s=0.1)
    thread = _finish_later(client, job, "failed", 0.3)
    with pytest.raises(JobFailed) as info:  # a job that did not complete raises
        job.wait(timeout=10, poll_s=0.1)
    assert info.value.state == "failed" and info.value.results["state"] == "failed"
    assert job.wait(timeout=10, raise_on_failure=False)["state"] == "failed"
    thread.join()


def test_cancel_asks_the_chief_and_leaves_a_final_job(client: Client) -> None:
    job = client.submit(SPEC)
    assert job.cancel() == "queued"
    assert job.record().cancel_requested
    client.store.jobs.set_state(job.id, "finalizing")  # a job ends through finalize
    client.store.jobs.set_state(job.id, "cancelled")
    assert job.cancel() == "cancelled"


def test_delete_removes_the_job(client: Client) -> None:
    job = client.submit(SPEC)
    with pytest.raises(StoreError, match="cancel it first"):
        job.delete()
    client.store.jobs.set_state(job.id, "finalizing")  # a job ends through finalize
    client.store.jobs.set_state(job.id, "completed")
    assert job.delete() == "completed"
    assert client.jobs() == []
    with pytest.raises(StoreError, match="no job"):
        job.status()


def test_best_model_errors_are_one_line(client: Client) -> None:
    job = client.submit(SPEC)
    with pytest.raises(StoreError, match="state queued"):
        job.best_model()
    client.store.jobs.set_state(job.id, "finalizing")  # a job ends through finalize
    client.store.jobs.set_state(job.id, "completed")
    with pytest.raises(StoreError) as info:
        job.best_model()
    assert "cannot read its model here" in str(info.value) and "\n" not in str(info.value)
    assert "is not published for download" in str(info.value)  # says where it is instead
    assert "does not exist here" in str(info.value)
