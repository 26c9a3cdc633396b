"""Resume of a final job (the store's transition, the Client, the CLI) against a real
Redis; the chief's part runs through real processes in tests/e2e/test_resume.py."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tunecluster.api import Client
from tunecluster.errors import StoreError
from tunecluster.spec import parse_spec

SPEC = {"name": "resumable", "data": {"dataset": "digits"},
        "model": {"builtin": "mlp", "hyperparameters": {
            "n_hidden": {"int": [1, 3]}, "learning_rate": {"float": [1e-3, 1e-1]}}},
        "search": {"objective": "val_accuracy", "max_trials": 2}}


def _finished(client: Client, spec: dict = SPEC, files: dict | None = None,
              trials: int = 2, state: str = "completed"):
    job = client.submit(parse_spec(spec) if files else spec, files=files)
    store = client.store
    store.client.zadd(store.keys.trials(job.id), {str(i): i for i in range(trials)})
    if state in ("completed", "failed", "cancelled"):
        store.jobs.set_state(job.id, "finalizing")  # a job ends through finalize
    store.jobs.set_state(job.id, state, error="x" if state == "failed" else "")
    return job


# --- resume -------------------------------------------------------------------------------


def test_resume_puts_a_final_job_back_in_the_queue_once(client: Client) -> None:
    job = _finished(client, state="cancelled")
    store = client.store
    assert job.id not in store.jobs.active()
    assert job.resume(5) == "cancelled"
    record = job.record()
    assert record.state == "queued" and record.spec["search"]["max_trials"] == 5
    assert "finished" not in record.fields and record.fields["resumed"] == "1"
    assert job.id in store.jobs.active()
    inbox = store.client.xrange(store.keys.inbox)
    assert inbox[-1][1] == {"type": "submitted", "job": job.id}
    assert job.resumed_after is not None
    events = store.events.read(job.id, "0-0", block_ms=None, count=100)
    assert events[-1].id == job.resumed_after and events[-1].data["resumed"] is True
    # idempotent: the same resume again does nothing
    assert job.resume(5) == "queued" and job.resumed_after is None
    assert int(job.record().fields["resumed"]) == 1
    with pytest.raises(StoreError, match="resume continues a finished job"):
        job.resume(6)


def test_resume_needs_more_trials_than_ran_and_the_freed_uploads(client: Client) -> None:
    spec = {**SPEC, "data": {"files": {"train": "t.npz", "valid": "v.npz",
                                       "test": "v.npz"}}}
    spec["model"] = {**SPEC["model"], "task": "classification"}
    job = _finished(client, spec, files={"t.npz": b"T", "v.npz": b"V"}, trials=3)
    store = client.store
    assert store.client.get(store.keys.job_file(job.id, "t.npz")) is None  # freed
    with pytest.raises(StoreError, match="max_trials=3 is not above the 3 trial"):
        job.resume(3)
    with pytest.raises(StoreError, match=r"uploaded data \(t.npz, v.npz\) was freed"):
        job.resume(4)
    assert job.state == "completed"  # nothing written
    job.resume(4, files={"t.npz": b"T", "v.npz": b"V"})
    assert store.client.get(store.keys.job_file(job.id, "t.npz")) == "T"


def test_resume_on_the_cli(client: Client) -> None:
    from tunecluster.cli import cli

    job = _finished(client)
    runner = CliRunner()
    bad = runner.invoke(cli, ["resume", job.id, "--redis", client.url,
                              "--set", "train.epochs=3"])
    assert bad.exit_code == 2 and "resume takes search.max_trials=N only" in bad.output
    ok = runner.invoke(cli, ["resume", job.id, "--redis", client.url,
                             "--set", "search.max_trials=4"])
    assert ok.exit_code == 0, ok.output
    assert f"resuming {job.id} (was completed)" in ok.output
    assert job.record().spec["search"]["max_trials"] == 4
    again = runner.invoke(cli, ["resume", job.id, "--redis", client.url,
                                "--set", "search.max_trials=4"])
    assert again.exit_code == 0 and "already queued" in again.output


def test_resume_sends_no_file_a_forged_record_names(client: Client, tmp_path) -> None:
    """The uploaded names a job record lists come from Redis: resume reads back only
    data files, never a key or a password file that a forged record names."""
    job = _finished(client)
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN PRIVATE KEY-----")
    store = client.store
    store.client.hset(store.keys.job(job.id), "files", f'["{secret}"]')
    try:
        job.resume(5)
    except StoreError:
        pass  # refused or not: the file must not have travelled
    for key in store.client.scan_iter(match=f"{store.keys.p}:job:{job.id}:*"):
        if store.client.type(key) == "string":
            assert "PRIVATE KEY" not in (store.client.get(key) or ""), key
