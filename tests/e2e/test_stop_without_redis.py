"""Stop means stop, with or without Redis: a chief and a worker told to stop (SIGTERM)
while their Redis is unreachable exit within seconds, the worker's trial processes
first, and each logs the outage while it lasts (one line as it starts, one as it ends).

Redis is made unreachable two ways: SIGSTOP (it accepts connections and never answers,
as a host behind a broken network would) and SIGKILL (connections are refused).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tunecluster.api.submission import prepare_job, submit
from tunecluster.cluster import RedisServer
from tunecluster.store import Store

from .conftest import EXAMPLES, FAST_LIVENESS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

STOP_WITHIN_S = 5.0  # the promise: SIGTERM to exit, Redis or not
OUTAGE_SEEN_S = 15.0  # the first outage line, once Redis stops answering
# A Redis that accepts and never answers is noticed after this (the roles' socket
# timeout; their default is longer): the test waits for the outage line no longer.
ENV = {**FAST_LIVENESS, "TUNECLUSTER_REDIS_TIMEOUT_S": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _until(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout:g} s")


@dataclass
class Roles:
    redis: RedisServer
    store: Store
    chief: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    logs: Path
    job: str

    def log(self, role: str) -> str:
        return (self.logs / f"{role}.log").read_text(errors="replace")


@pytest.fixture()
def roles(tmp_path: Path) -> Iterator[Roles]:
    """Redis, a chief and a worker (one slot) as real processes, a trial running."""
    server = RedisServer(password="stop-test-" + os.urandom(8).hex()).start()
    env = {**os.environ, **ENV, "TUNECLUSTER_REDIS_URL": server.url}
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = []
    for role, args in (("chief", ()), ("worker", ("--slots", "1"))):
        with open(logs / f"{role}.log", "wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tunecluster", role, "--artifacts",
                 str(tmp_path / "art"), *args],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True))
    store = Store.from_url(server.url)
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", (
        "search.max_trials=1", "train.epochs=200")))
    r = Roles(server, store, procs[0], procs[1], logs, job)
    try:
        _until(lambda: any(t.get("state") == "RUNNING" and int(t.get("last_epoch") or 0) >= 1
                           for t in store.jobs.trials(job)), 150, "a trial running")
        yield r
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)
        server.close()


def _trial_processes(worker: subprocess.Popen[bytes]) -> list[psutil.Process]:
    return psutil.Process(worker.pid).children(recursive=True)


def _stop_both(r: Roles) -> None:
    """SIGTERM each role; each exits within STOP_WITHIN_S, code 0, its children gone."""
    trials = _trial_processes(r.worker)
    assert trials, "the worker has no trial process"
    evaluators = psutil.Process(r.chief.pid).children(recursive=True)
    sent = time.monotonic()
    for p in (r.worker, r.chief):
        p.send_signal(signal.SIGTERM)
    for name, p in (("worker", r.worker), ("chief", r.chief)):
        try:
            p.wait(max(0.1, sent + STOP_WITHIN_S - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the {name} still runs {STOP_WITHIN_S:g} s after SIGTERM:"
                                 f"\n{r.log(name)[-3000:]}") from None
        assert p.returncode == 0, (name, p.returncode, r.log(name)[-3000:])
    gone = _until(lambda: not [c for c in trials + evaluators if c.is_running()
                               and c.status() != psutil.STATUS_ZOMBIE], 5, "children gone")
    assert gone


def _outage_lines(text: str) -> list[str]:
    """The role process's own lines (its log format names the logger; a trial process
    may log the outage too)."""
    return [line for line in text.splitlines()
            if "tunecluster.store.connection" in line and "redis unreachable" in line]


def _assert_outage_logged(r: Roles) -> None:
    for role in ("chief", "worker"):
        _until(lambda role=role: _outage_lines(r.log(role)), OUTAGE_SEEN_S,
               f"the {role} logging the outage")


def test_sigterm_while_redis_is_frozen(roles: Roles) -> None:
    """Redis SIGSTOPped: logged; back (SIGCONT): logged once; frozen again: SIGTERM
    ends both roles at once, and the outage was not logged line after line."""
    pid = roles.redis.process.pid  # type: ignore[union-attr]
    os.kill(pid, signal.SIGSTOP)
    _assert_outage_logged(roles)
    os.kill(pid, signal.SIGCONT)
    for role in ("chief", "worker"):
        _until(lambda role=role: "redis answers again" in roles.log(role), 30,
               f"the {role} logging that Redis is back")
    os.kill(pid, signal.SIGSTOP)
    time.sleep(0.5)  # the roles are inside Redis calls that will not return
    _stop_both(roles)
    for role in ("chief", "worker"):
        lines = _outage_lines(roles.log(role))
        assert 1 <= len(lines) <= 8, (role, lines)  # a line per outage, not per retry


def test_sigterm_while_redis_is_gone(roles: Roles) -> None:
    """Redis SIGKILLed: each role logs the outage, then exits at once on SIGTERM."""
    roles.redis.stop(kill=True)
    _assert_outage_logged(roles)
    _stop_both(roles)
    for role in ("chief", "worker"):  # a connection's set-up is no answer
        assert "answers again" not in roles.log(role), roles.log(role)[-2000:]
    assert "stopped" in roles.log("worker"), roles.log("worker")[-2000:]  # not cut short


def test_sigterm_with_redis_up_hands_the_trial_back(roles: Roles) -> None:
    """The ordinary stop, Redis answering: quick too, and the running trial is released
    for another worker (READY again), not left to its lease."""
    _stop_both(roles)
    trials = roles.store.jobs.trials(roles.job)
    assert [t.get("state") for t in trials] == ["READY"], trials
