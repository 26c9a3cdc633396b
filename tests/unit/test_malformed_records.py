"""Nothing read from Redis is trusted: a malformed record (wrong Redis type, garbled
field, bad JSON, bad id) is one job's (or one worker's) error, never the cluster's.
Against a real Redis on a free loopback port."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunecluster.cluster import RedisServer
from tunecluster.errors import StoreError
from tunecluster.render import results_csv
from tunecluster.store import Store
from tunecluster.store.results import build_results

SPEC = {"name": "job", "data": {"dataset": "digits"}, "model": {"builtin": "mlp"},
        "search": {"objective": {"name": "val_accuracy", "direction": "max"}}}


def _good(store: Store) -> str:
    job = store.jobs.submit("job", json.dumps(SPEC), {}, 0, "native")
    store.queue.enqueue(job, "00", {"x": 1}, 1, "{}")
    return job


def _forge_index(store: Store, job: str) -> None:
    store.client.zadd(store.keys.jobs_active, {job: 5})
    store.client.zadd(store.keys.jobs_all, {job: 5})


def _wrong_type_job(store: Store, job: str = "bad-wrongtype") -> str:
    store.client.set(store.keys.job(job), "x")
    store.client.set(store.keys.trials(job), "x")  # a string where a zset belongs
    store.client.set(store.keys.events(job), "x")  # a string where a stream belongs
    store.client.hset(store.keys.trial(job, "00"), "state", "RUNNING")
    _forge_index(store, job)
    return job


def _garbled_job(store: Store, job: str, **fields: str) -> str:
    base = {"id": job, "name": "bad", "state": "queued", "spec": json.dumps(SPEC),
            "space": "{}", "created": "1"}
    store.client.hset(store.keys.job(job), mapping={**base, **fields})
    _forge_index(store, job)
    return job


def test_a_wrong_type_job_record_is_that_jobs_error(store: Store) -> None:
    job = _wrong_type_job(store)
    with pytest.raises(StoreError, match=f"{job}.*string.*hash"):
        store.jobs.get(job)
    with pytest.raises(StoreError, match=job):
        build_results(store.jobs, job)
    assert store.jobs.trials(job) == []  # a wrong-typed trial index: no trials, no crash


@pytest.mark.parametrize("fields, why", [
    ({"created": "xyz"}, "created"), ({"spec": "{not json"}, "spec"),
    ({"spec": "[1]"}, "spec"), ({"state": "bogus"}, "state"),
    ({"priority": "high"}, "priority"), ({"finished": "soon"}, "finished"),
])
def test_a_garbled_job_record_names_the_field(store: Store, fields: dict[str, str],
                                              why: str) -> None:
    job = _garbled_job(store, "bad-garbled", **fields)
    with pytest.raises(StoreError, match=f"job 'bad-garbled'.*{why}"):
        build_results(store.jobs, job)


def test_list_flags_malformed_jobs_and_shows_the_others(store: Store) -> None:
    good = _good(store)
    wrong = _wrong_type_job(store)
    garbled = _garbled_job(store, "bad-created", created="xyz")
    store.client.zadd(store.keys.jobs_all, {"../etc": 9, "x" * 1000: 9})  # not job ids
    from tunecluster.store.results import job_summaries

    rows = {r["job"]: r for r in job_summaries(store.jobs)}
    assert set(rows) == {good, wrong, garbled}
    assert rows[good]["state"] == "queued"
    for bad in (wrong, garbled):
        assert rows[bad]["state"] == "malformed" and bad in rows[bad]["error"]
        assert rows[bad]["counts"] == {} and rows[bad]["best"] is None
    assert "created" in rows[garbled]["error"]


def test_delete_removes_every_key_of_a_malformed_job(store: Store) -> None:
    good = _good(store)
    job = _wrong_type_job(store)
    store.client.set(store.keys.oracle_trials(job), "x")
    store.client.hset(store.keys.job_file(job, "f"), "a", "b")
    store.jobs.delete(job)
    assert not store.client.keys(f"{store.keys.job(job)}*")
    assert store.client.zscore(store.keys.jobs_all, job) is None
    assert store.client.zscore(store.keys.jobs_active, job) is None
    garbled = _garbled_job(store, "bad-files", files="{oops", state="failed")
    store.jobs.delete(garbled)
    assert not store.client.keys(f"{store.keys.job(garbled)}*")
    assert store.jobs.get(good).state == "queued"  # the other job is untouched


def test_trial_rows_with_garbled_numbers_still_make_results(store: Store) -> None:
    job = _good(store)
    key = store.keys.trial(job, "00")
    store.client.hset(key, mapping={"attempts": "abc", "resumed_from_epoch": "1e999",
                                    "score": "nan", "values": "[1,2]", "metrics": "{bad",
                                    "gang": "{bad", "state": "COMPLETED"})
    store.client.hset(store.keys.trial(job, "01"), "state", "COMPLETED")  # no trial field
    store.client.zadd(store.keys.trials(job), {"01": 2, "02": 3})
    store.client.set(store.keys.trial(job, "02"), "x")  # a wrong-typed trial record
    store.client.set(store.keys.epochs(job, "00"), "x")
    data = build_results(store.jobs, job)
    row = next(t for t in data["trials"] if t["trial"] == "00")
    assert row["attempts"] == 0 and row["resumed_from_epoch"] == 0
    assert row["score"] is None and row["hyperparameters"] == {} and row["metrics"] == {}
    assert {t["trial"] for t in data["trials"]} <= {"00", "01"}
    assert "00" in results_csv(data)
    assert store.jobs.epochs(job, "00") == {}


def test_workers_with_garbled_records_are_flagged_not_fatal(store: Store) -> None:
    from tunecluster.dashboard.data import Reader

    store.workers.heartbeat("good", {"host": "h", "slots": 2, "busy": 1}, 5)
    store.workers.heartbeat("bad-slots", {"host": "h", "slots": "abc", "busy": "x"}, 5)
    store.client.zadd(store.keys.workers, {"wrong-type": 9e15})
    store.client.set(store.keys.worker("wrong-type"), "x")
    store.client.zadd(store.keys.leases, {"nojob/00": 9e15, "noslash": 9e15})
    store.client.set(store.keys.trial("nojob", "00"), "x")
    live = store.workers.live(30)
    assert live["good"]["slots"] == 2 and live["good"]["busy"] == 1
    assert live["bad-slots"]["slots"] == 0 and "slots" in live["bad-slots"]["malformed"]
    assert "wrong-type" not in live or live["wrong-type"]["slots"] == 0
    assert store.workers.census(30)[1] == 2
    rows = {r["worker"]: r for r in Reader(store).workers()}
    assert rows["good"]["slots"] == 2 and rows["bad-slots"]["slots"] == 0


def test_the_chief_skips_a_malformed_job_and_keeps_serving(store: Store,
                                                           tmp_path: Path) -> None:
    from tunecluster.chief.loop import Chief

    chief = Chief(store, tmp_path, chief_id="chief-test")
    store.client.set(store.keys.chief_lock, chief.id)
    wrong = _wrong_type_job(store)
    garbled = _garbled_job(store, "bad-spec", spec="{oops")
    assert chief._job(wrong) is None
    assert chief._job(garbled) is None
    # no longer active: the chief does not read them again on every round
    assert store.client.zscore(store.keys.jobs_active, wrong) is None
    assert store.client.zscore(store.keys.jobs_active, garbled) is None
    # a hash it could safely write: failed, with the reason
    assert store.client.hget(store.keys.job(garbled), "state") == "failed"
    assert "spec" in store.client.hget(store.keys.job(garbled), "error")
    assert store.client.type(store.keys.job(wrong)) == "string"  # left for `delete`


def _cli(server: RedisServer, *args: str) -> tuple[int, str]:
    from tunecluster.cli import cli

    result = CliRunner().invoke(cli, [*args, "--redis", server.url])
    out = result.output  # stdout and stderr, as a terminal shows them
    assert "Traceback" not in out, out
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    return result.exit_code, out


def test_cli_commands_answer_one_line_for_malformed_jobs(store: Store, server: RedisServer,
                                                         tmp_path: Path) -> None:
    good = _good(store)
    wrong = _wrong_type_job(store)
    garbled = _garbled_job(store, "bad-created", created="xyz", state="failed")
    store.workers.heartbeat("bad-slots", {"host": "h", "slots": "abc"}, 5)
    code, out = _cli(server, "list", "--json")
    assert code == 0, out
    states = {r["job"]: r["state"] for r in json.loads(out)}
    assert states == {good: "queued", wrong: "malformed", garbled: "malformed"}
    assert _cli(server, "list")[0] == 0
    for args in (["status"], ["status", "--json"]):
        code, out = _cli(server, *args)
        assert code == 0 and good in out, out
    for bad in (wrong, garbled):
        for args in (["status", bad], ["results", bad], ["results", bad, "--csv"],
                     ["report", bad, "-o", str(tmp_path / "r.html")]):
            code, out = _cli(server, *args)
            assert code == 1 and bad in out and len(out.strip().splitlines()) == 1, out
        code, out = _cli(server, "delete", bad)
        assert code == 0 and f"deleted {bad}" in out, out
        assert not store.client.keys(f"{store.keys.job(bad)}*")
    assert _cli(server, "results", good, "--csv")[0] == 0
