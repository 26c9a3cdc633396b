"""How fast a gang notices a lost member, and what its retry resumes from (issue 14).

A local cluster of 3 workers runs a gang trial of 2 (the course's MLP on digits, 12
epochs); once it has reported epoch 2, one member is SIGKILLed: its trial process alone
(``--kill process``: its worker sees the crash and releases the trial at once) or its
whole worker (``--kill worker``: the others see it silent for the peer timeout,
``TUNECLUSTER_GANG_PEER_TIMEOUT_S``, 6 s by default, or TensorFlow's own coordination
service sees it first). It prints, per run, how long the other member's process lived on
after the kill, and the trial's outcome: its attempts and the epoch the retry resumed
from. A killed worker is replaced before the next run.

    .venv/bin/python bench/gang_failures.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from gang import spec  # bench/: the same job file

from tunecluster.api.submission import prepare_job, submit, wait
from tunecluster.cluster import LocalCluster
from tunecluster.store import Store

LIVENESS = {"TUNECLUSTER_LEASE_S": "4", "TUNECLUSTER_HEARTBEAT_S": "0.5"}


def until(predicate: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise SystemExit("condition not reached in time")


def gang_process(store: Store, worker: str) -> psutil.Process:
    """The worker's newest trial process: its gang member (the warm one is older)."""
    pid = int(store.client.hget(store.keys.worker(worker), "pid"))
    children = [p for p in psutil.Process(pid).children()
                if "spawn_main" in " ".join(p.cmdline())]
    return max(children, key=lambda p: p.create_time())


def gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def one_run(cluster: LocalCluster, store: Store, directory: Path, kill: str) -> dict:
    path = spec(directory, 2, 12, [64], name=f"lost-{kill}", n_hidden=1, learning_rate=0.005)
    job = submit(store, prepare_job(path, []))

    def at_epoch_2() -> list[dict] | None:
        for row in store.jobs.trials(job):
            if row.get("state") == "RUNNING" and int(row.get("last_epoch") or 0) >= 2:
                return json.loads(row["gang"])
        return None

    members = until(at_epoch_2)
    other = gang_process(store, members[0]["worker"])
    killed_at = time.monotonic()
    if kill == "process":
        gang_process(store, members[1]["worker"]).send_signal(signal.SIGKILL)
    else:
        os.kill(int(store.client.hget(store.keys.worker(members[1]["worker"]), "pid")),
                signal.SIGKILL)
    until(lambda: gone(other), timeout=400)
    lived_on = time.monotonic() - killed_at
    (trial,) = wait(store, job, timeout_s=300)["trials"]
    errors = store.client.lrange(store.keys.trial_errors(job, trial["trial"]), 0, -1)
    if kill == "worker":
        cluster.start_worker()
        until(lambda: len(store.workers.live(4)) == 3)
    return {"killed": kill, "other_member_stopped_after_s": round(lived_on, 2),
            "state": trial["state"], "attempts": trial["attempts"],
            "resumed_from_epoch": trial["resumed_from_epoch"],
            "why": (errors[0] if errors else "")[:120]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        with LocalCluster(workers=3, artifacts=directory / "artifacts",
                          log_dir=directory / "logs", env=LIVENESS) as cluster:
            store = Store.from_url(cluster.url)
            until(lambda: len(store.workers.live(4)) == 3)
            for _ in range(args.rounds):
                for kill in ("process", "worker"):
                    print(json.dumps(one_run(cluster, store, directory, kill)), flush=True)


if __name__ == "__main__":
    main()
