"""Hostile records end to end: while a real job runs, malformed records of every kind
are written into Redis (wrong Redis types for each per-job and per-worker key, garbled
numbers, bad JSON, ~1 MB values, forged ids in the job and worker indexes). The real
job completes; the chief never falls over; every CLI command answers one line or
succeeds, never a traceback; every dashboard JSON route answers, never with a 5xx; and
``delete`` removes each forged job."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from tunecluster.api.submission import prepare_job, submit, wait
from tunecluster.cluster import LocalCluster
from tunecluster.dashboard.app import create_app
from tunecluster.store import Store
from tunecluster.store.queue import server_ms

from .conftest import EXAMPLES, FAST_LIVENESS, cli

pytestmark = pytest.mark.e2e

HUGE = "x" * 1_000_000
FAR = 9e15  # a score in the far future: "alive" for the worker index, never reaped


def _forge(store: Store, real: str) -> list[str]:
    """Write the hostile records; returns the ids of the forged jobs."""
    r, k = store.client, store.keys
    bad: dict[str, object] = {}
    # the job record of the wrong Redis type
    r.set(k.job("bad-string"), "x")
    r.rpush(k.job("bad-list"), "x")
    r.zadd(k.job("bad-zset"), {"x": 1})
    r.xadd(k.job("bad-stream"), {"x": "1"})
    r.sadd(k.job("bad-set"), "x")
    bad.update(dict.fromkeys(["bad-string", "bad-list", "bad-zset", "bad-stream",
                              "bad-set"]))
    # hashes with garbled fields (active: the chief must read, and refuse, them)
    good = r.hgetall(k.job(real))
    garbled = {
        "bad-created": {"created": "xyz"},
        "bad-json": {"spec": "{oops", "state": "running"},
        "bad-huge": {"spec": HUGE, "name": HUGE},
        "bad-state": {"state": "bogus"},
        "bad-number": {"priority": "high", "finished": "1e999", "files": "{oops"},
        "bad-spec": {"spec": json.dumps({"search": {"max_trials": "abc"}})},
        "bad-search": {"spec": json.dumps({"search": [1, 2]})},
        "bad-keys": {},  # a readable record whose other keys have the wrong types
    }
    for job, fields in garbled.items():
        r.hset(k.job(job), mapping={**good, "id": job, "state": "queued", **fields})
        bad[job] = None
    for job in ("bad-keys", "bad-string"):
        r.hset(k.trials(job), "x", "1")  # the trial index as a hash
        r.hset(k.events(job), "x", "1")  # the event stream as a hash
        r.hset(k.oracle(job), "x", "1")
        r.set(k.oracle_trials(job), "x")
        r.set(k.trial(job, "00"), "x")
        r.set(k.epochs(job, "00"), "x")
        r.hset(k.trial_errors(job, "00"), "x", "1")
        r.rpush(k.trial_sync(job, "00"), "x")
        r.set(k.downloads(job), "x")
        r.hset(k.download_blob(job, "ab"), "x", "1")
        r.hset(k.download_part(job, "ab"), "x", "1")
        r.hset(k.job_file(job, "data.csv"), "x", "1")
    # a readable record whose trials are garbled
    r.hset(k.job("bad-trials"), mapping={**good, "id": "bad-trials", "state": "completed"})
    r.zadd(k.trials("bad-trials"), {"00": 1, "01": 2, "../x": 3, HUGE[:5000]: 4})
    r.hset(k.trial("bad-trials", "00"), mapping={
        "trial": "../../etc", "state": "COMPLETED", "attempts": "abc", "score": HUGE,
        "values": "{oops", "metrics": "[1]", "last_epoch": "-1", "best_epoch": "x",
        "gang": "{", "resumed_from_epoch": "1e400", "overhead": HUGE})
    r.set(k.trial("bad-trials", "01"), "x")
    r.hset(k.epochs("bad-trials", "00"), mapping={"x": "{", "1": "[1]", "2": HUGE})
    bad["bad-trials"] = None
    jobs = list(bad)
    # the job indexes: every forged job, ids that are not job ids, ids with no record
    for index in (k.jobs_active, k.jobs_all):
        r.zadd(index, {**dict.fromkeys(jobs, 1), "../etc": 1, HUGE[:10000]: 1,
                       "ghost-1": 1, "": 1})
    # workers: garbled numbers, a record of the wrong type, a huge one
    r.zadd(k.workers, {"evil-slots": FAR, "evil-type": FAR, "evil-huge": FAR, "": FAR})
    r.hset(k.worker("evil-slots"), mapping={"slots": "abc", "busy": "-3", "beat": "zzz",
                                            "trials": "1e9", "host": "h"})
    r.set(k.worker("evil-type"), "x")
    r.hset(k.worker("evil-huge"), mapping={"host": HUGE, "slots": HUGE[:100]})
    # running trials nobody runs, of a job with no record (never reaped: far future)
    r.zadd(k.leases, {"ghost-1/00": FAR, "no-slash": FAR, "bad-string/00": FAR})
    # inbox messages about the forged jobs
    for job in (*jobs, "../etc", "ghost-1"):
        r.xadd(k.inbox, {"type": "submitted", "job": job})
        r.xadd(k.inbox, {"type": "cancel", "job": job})
    return jobs


def _one_line_or_ok(args: list[str], url: str) -> str:
    """Run the CLI in a process: success, or exit 1 with one line on stderr."""
    done = cli(*args, "--redis", url, timeout=60)
    text = done.stdout + done.stderr
    assert "Traceback" not in text, (args, text[-3000:])
    assert done.returncode in (0, 1), (args, done.returncode, text[-3000:])
    if done.returncode:
        assert len(done.stderr.strip().splitlines()) == 1, (args, done.stderr[-3000:])
    return done.stdout


def _in_process(args: list[str], url: str) -> None:
    """The same check with the CLI run in this process (dozens of commands: no process
    start-up each); an exception other than the CLI's own exit is a traceback."""
    from tunecluster.cli import cli as main

    result = CliRunner().invoke(main, [*args, "--redis", url])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        (args, repr(result.exception))
    assert result.exit_code in (0, 1), (args, result.exit_code, result.output[-3000:])
    if result.exit_code:
        assert len(result.output.strip().splitlines()) == 1, (args, result.output[-3000:])


def test_hostile_records_are_each_one_jobs_error(tmp_path: Path) -> None:
    with LocalCluster(workers=1, artifacts=tmp_path / "artifacts", log_dir=tmp_path / "logs",
                      env=FAST_LIVENESS) as cluster:
        store = Store.from_url(cluster.url)
        real = submit(store, prepare_job(EXAMPLES / "digits.yaml", (
            "search.max_trials=3", "train.epochs=2", "name=real")))
        deadline = time.monotonic() + 60
        while store.jobs.get(real).state == "queued" and time.monotonic() < deadline:
            time.sleep(0.2)
        bad = _forge(store, real)

        results = wait(store, real, timeout_s=120)
        assert results["state"] == "completed", results.get("error")
        assert results["counts"] == {"COMPLETED": 3}
        assert all(p.poll() is None for p in cluster.chiefs + cluster.workers)
        beat = store.client.get(store.keys.chief_beat)
        assert beat is not None and server_ms(store.client) - int(beat) < 10_000
        # the chief took each forged active job out of its rounds
        active = set(store.jobs.active())
        assert not active & set(bad), active

        listed = {row["job"]: row for row in json.loads(
            _one_line_or_ok(["list", "--json"], cluster.url))}
        assert listed[real]["state"] == "completed"
        states = {j: listed[j]["state"] for j in bad}
        assert set(states.values()) <= {"malformed", "failed", "completed"}, states
        assert all(listed[j]["error"] for j in bad if j != "bad-trials")
        for args in (["list"], ["status"], ["status", "--json"], ["results", real, "--csv"],
                     ["report", real, "-o", str(tmp_path / "real.html")]):
            _one_line_or_ok(args, cluster.url)
        for args in (["status", "bad-string"], ["results", "bad-created"],
                     ["report", "bad-keys", "-o", str(tmp_path / "bad-keys.html")]):
            _one_line_or_ok(args, cluster.url)
        for job in bad:
            for args in (["status", job], ["status", job, "--json"], ["results", job],
                         ["results", job, "--csv"], ["results", job, "--json"],
                         ["report", job, "-o", str(tmp_path / f"{job}.html")]):
                _in_process(args, cluster.url)

        api = TestClient(create_app(cluster.url), base_url="http://127.0.0.1")
        for route in ("/api/jobs", "/api/workers", f"/api/jobs/{real}",
                      f"/api/jobs/{real}/trials/{results['trials'][0]['trial']}",
                      f"/api/compare?jobs={real}",
                      "/healthz"):
            answer = api.get(route)
            assert answer.status_code == 200, (route, answer.text[:2000])
        shown = {row["job"]: row["state"] for row in api.get("/api/jobs").json()}
        assert shown[real] == "completed" and set(bad) <= set(shown)
        for job in bad:
            for route in (f"/api/jobs/{job}", f"/api/jobs/{job}/trials/00",
                          f"/api/jobs/{job}/trials/01", f"/api/compare?jobs={real},{job}"):
                answer = api.get(route)
                assert answer.status_code < 500, (route, answer.text[:2000])

        _one_line_or_ok(["delete", "bad-string"], cluster.url)
        for job in [*bad[1:], "ghost-1"]:
            _in_process(["delete", job], cluster.url)
        for job in bad:
            assert not store.client.keys(f"{store.keys.job(job)}*"), job
        assert not set(store.jobs.all()) & {*bad, "ghost-1"}
        assert store.jobs.get(real).state == "completed"
        chief_log = "".join(p.read_text(errors="replace")
                            for p in (tmp_path / "logs").glob("chief-*.log"))
        assert "Traceback" not in chief_log, chief_log[-5000:]
