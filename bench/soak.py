"""A randomized soak: many faults at once, for a long time, then the invariants checked.

    .venv/bin/python bench/soak.py --seed 7 --minutes 30 [--faults worker_kill,...]
                                   [--mean-gap 6]

A real Redis with its AOF, two chiefs and three workers (``LocalCluster``: every role
its own process, as a deployment runs them) take a stream of small jobs of every native
algorithm (random, grid, Bayesian, Hyperband, ASHA, PBT, TPE on the embedded digits)
and gangs (random trials each trained by 2 workers at once), two at a time, while a
fault schedule drawn from the seed hits them (``KINDS``). The seed fixes the schedule
(each fault's kind, moment, length and victim by index) and the jobs' algorithms; what
the processes do between faults is not deterministic.

When the time is up the faults stop and everything is healed (paused processes
continued, Redis up, a chief and three workers alive); the jobs are waited for, then
checked: every submitted job reached a final state (or was lost with a rollback of
Redis to a snapshot older than its submit, and is counted so); each job holds the
exactly-once invariant (``store/audit.py``); every completed trial's model file is
there and loads; ``results.json`` agrees with the trial records; no process of the
cluster is left after it stops; Redis memory is back near its start once the jobs are
deleted; no role's RSS grew past ``RSS_MARGIN_MB`` plus ``RSS_MARGIN`` of itself. It
prints one line per check and the faults by kind, then one JSON line, and exits 1 when
a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# The roles' liveness, short (as the end-to-end tests run them): faults are found soon.
LIVENESS = {"TUNECLUSTER_LEASE_S": "4", "TUNECLUSTER_HEARTBEAT_S": "0.5",
            "TUNECLUSTER_CHIEF_LOCK_S": "4"}
LEASE_S = LOCK_S = 4.0
SNAPSHOT_EVERY_S = 15.0  # Redis SAVEs a snapshot this often: what a rollback goes back to
RSS_MARGIN_MB, RSS_MARGIN = 64.0, 0.25  # a role's RSS may grow this much over the soak
REDIS_MEMORY_MARGIN_MB = 2.0  # used_memory after deleting every job, over its start

SMALL = ("train.epochs=2", "search.max_retries_per_trial=3", "train.early_stopping=null",
         "search.max_consecutive_failed_trials=20",
         "model.hyperparameters.n_hidden={choice: [1, 2]}",
         "model.hyperparameters.n_neurons={choice: [16, 32]}",
         "model.hyperparameters.learning_rate={choice: [0.001, 0.01]}",
         "model.hyperparameters.optimizer={fixed: adam}")
ALGORITHMS = {
    "random": ("search.max_trials=3",),
    "grid": ("search.algorithm=grid", "search.max_trials=4"),
    "bayesian": ("search.algorithm=bayesian", "search.num_initial_points=2",
                 "search.max_trials=3"),
    "hyperband": ("search.algorithm=hyperband", "search.hyperband_factor=2",
                  "train.epochs=2"),
    "asha": ("search.algorithm=asha", "search.asha_factor=2", "search.asha_min_epochs=1",
             "search.max_trials=3", "search.objective=val_loss"),
    "pbt": ("search.algorithm=pbt", "search.pbt_population=2", "search.pbt_interval=1",
            "search.pbt_quantile=0.5", "search.objective=val_loss"),
    "tpe": ("search.algorithm=tpe", "search.tpe_startup_trials=2", "search.max_trials=3"),
    # a gang: each trial trained by 2 of the 3 workers at once (MultiWorkerMirroredStrategy)
    "gang": ("search.max_trials=2", "resources.workers_per_trial=2"),
}
KINDS = {
    "worker_kill": "SIGKILL of a worker's process group (its trial processes too); a new"
                   " worker starts",
    "worker_pause": "SIGSTOP of a worker's process group for 0.5-2 leases, then SIGCONT",
    "worker_skew": "a worker SIGKILLed and replaced by one whose clock is 30-600 s off"
                   " (ahead or behind)",
    "trial_kill": "SIGKILL of one trial process of a worker",
    "chief_kill": "SIGKILL of a chief; a new chief starts",
    "chief_pause": "SIGSTOP of a chief for 0.5-2 lock lifetimes, then SIGCONT",
    "redis_kill": "SIGKILL of Redis, started again from its AOF after 0.5-3 s",
    "redis_pause": "SIGSTOP of Redis for 1-6 s, then SIGCONT",
    "redis_rollback": "Redis killed and started from its last snapshot (SAVE), losing what"
                      " came after",
    "redis_full": "Redis maxmemory set just above what it holds, for 2-6 s",
    "link_drop": "every connection between the roles and Redis cut at the TCP proxy, new"
                 " ones refused for 1-6 s",
    "link_delay": "every chunk between the roles and Redis held 50-500 ms at the TCP"
                  " proxy, for 3-12 s",
    "artifacts_refuse": "the artifacts directory and all in it refuse writes (immutable,"
                        " chattr +i) for 2-8 s",
}


@dataclass(frozen=True)
class Fault:
    at_s: float  # seconds into the soak
    kind: str
    length_s: float  # how long a pause or a full Redis lasts; a restart's delay; a skew
    victim: int  # which process of its kind, as an index modulo how many there are


def schedule(seed: int, duration_s: float, kinds: list[str],
             mean_gap_s: float = 6.0) -> list[Fault]:
    """The faults of a soak: a Poisson stream of ``kinds``, the same for the same seed."""
    rng = random.Random(seed)
    faults, at = [], rng.expovariate(1 / mean_gap_s)
    while at < duration_s:
        kind = rng.choice(kinds)
        unit = {"worker_pause": LEASE_S, "chief_pause": LOCK_S}.get(kind, 1.0)
        low, high = {"worker_pause": (0.5, 2), "chief_pause": (0.5, 2), "redis_kill": (0.5, 3),
                     "redis_pause": (1, 6), "redis_full": (2, 6),
                     "worker_skew": (30, 600), "link_drop": (1, 6), "link_delay": (3, 12),
                     "artifacts_refuse": (2, 8)}.get(kind, (0, 0))
        faults.append(Fault(round(at, 2), kind, round(unit * rng.uniform(low, high), 2),
                            rng.randrange(1_000_000)))
        at += rng.expovariate(1 / mean_gap_s)
    return faults


def job_algorithms(seed: int, count: int) -> list[str]:
    """Which algorithm each submitted job runs, in order: every one, then at random."""
    rng = random.Random(seed + 1)
    names = list(ALGORITHMS)
    rng.shuffle(names)
    return (names + [rng.choice(list(ALGORITHMS)) for _ in range(count)])[:count]


@dataclass
class Submitted:
    id: str
    algorithm: str
    at: float  # monotonic
    lost: str = ""  # why it is gone, when a rollback took it
    # every state the soak saw it in: a completion a later rollback took back still
    # counts as work done (the report's ``jobs_seen_completed``)
    seen: set[str] = field(default_factory=set)


@dataclass
class Soak:
    seed: int
    duration_s: float
    workdir: Path
    kinds: list[str]
    concurrent_jobs: int = 2
    mean_gap_s: float = 6.0  # between faults
    faults_done: Counter[str] = field(default_factory=Counter)
    jobs: list[Submitted] = field(default_factory=list)
    seen_pids: set[int] = field(default_factory=set)
    killed: set[int] = field(default_factory=set)  # the roles a fault SIGKILLed
    rss: dict[int, list[tuple[float, float]]] = field(default_factory=dict)  # (s, MiB)
    # (monotonic time of the rollback, of the snapshot it went back to)
    rollbacks: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Redis's data (AOF, snapshots) in the work directory: removed with it
        self.cluster = _proxied_cluster(workers=3, artifacts=self.workdir / "artifacts",
                                        redis_dir=self.workdir / "redis",
                                        log_dir=self.workdir / "logs", env=LIVENESS)
        self.redis_lock = threading.RLock()
        self.paused: set[int] = set()
        self.refusing: set[Path] = set()  # artifacts roots made immutable by a fault
        self._client: Any = None  # _store()
        self.start = 0.0

    # --- the run ---------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from soak_checks import check_after_stop, check_jobs, check_redis_memory, check_roles
        from soak_faults import Injector

        self.cluster.start()
        self.cluster.start_chief()  # a standby
        store = self._store()
        _until(lambda: store.workers.census(LEASE_S)[0] >= 3, 120)
        redis_start_mb = _redis_mb(store)
        self.start = time.monotonic()
        injector = Injector(self, schedule(self.seed, self.duration_s, self.kinds,
                                           self.mean_gap_s))
        injector.start()
        algorithms = iter(job_algorithms(self.seed, 100_000))
        while time.monotonic() - self.start < self.duration_s:
            self._top_up(store, algorithms)
            self._sample()
            time.sleep(1.0)
        injector.stop()
        injector.heal()
        self._say(f"soak over after {time.monotonic() - self.start:.0f} s: faults stopped,"
                  " everything healed; waiting for the jobs")
        store = self._store()
        self._wait_for_jobs(store, timeout_s=max(300.0, self.duration_s))
        jobs = Counter(_state(store, j.id) for j in self.jobs)
        failed = {j.id: f"{j.algorithm}: " + str(store.jobs.get(j.id).fields.get("error"))[:200]
                  for j in self.jobs if _state(store, j.id) == "failed"}
        checks = [check_roles(self), *check_jobs(self, store)]
        checks.append(check_redis_memory(self, store, redis_start_mb))
        self.cluster.stop()  # SIGTERM, as an operator stops it
        checks += check_after_stop(self)
        return {"seed": self.seed, "duration_s": self.duration_s,
                "faults": dict(sorted(self.faults_done.items())), "jobs": dict(jobs),
                "lost_with_a_rollback": sum(bool(j.lost) for j in self.jobs),
                "jobs_seen_completed": sum("completed" in j.seen for j in self.jobs),
                "failed_jobs": failed,
                "checks": checks, "ok": all(c["ok"] for c in checks)}

    def _store(self) -> Any:
        """One client for the soak's own reads and the faults' Redis commands: Redis
        restarts on the same port and password, and the client reconnects."""
        if self._client is None:
            from tunecluster.store import Store

            self._client = Store.from_url(self.cluster.redis.url, retries=3)
        return self._client

    def _say(self, line: str) -> None:
        print(f"[{time.monotonic() - self.start:7.1f}s] {line}", flush=True)

    def _top_up(self, store: Any, algorithms: Any) -> None:
        """Keep ``concurrent_jobs`` jobs active (a Redis that is down is waited out)."""
        from tunecluster.api.submission import prepare_job, submit

        try:
            active = sum(self._observe(store, j) in ("queued", "running", "finalizing")
                         for j in self.jobs if not j.lost)
            for _ in range(self.concurrent_jobs - active):
                algorithm = next(algorithms)
                job = submit(store, prepare_job(EXAMPLES / "digits.yaml",
                                                (*SMALL, *ALGORITHMS[algorithm],
                                                 f"search.seed={len(self.jobs)}")))
                self.jobs.append(Submitted(job, algorithm, time.monotonic()))
                self._say(f"submitted {job} ({algorithm})")
        except Exception as exc:  # noqa: BLE001 - Redis down or full: the next round
            self._say(f"submit waits: {type(exc).__name__}: {exc}"[:160])

    def _sample(self) -> None:
        """Note every process of the cluster, and the roles' RSS."""
        import psutil

        for proc in list(self.cluster.chiefs) + list(self.cluster.workers):
            try:
                role = psutil.Process(proc.pid)
                if role.status() == psutil.STATUS_STOPPED:
                    continue
                self.seen_pids.add(role.pid)
                self.seen_pids.update(c.pid for c in role.children(recursive=True))
                self.rss.setdefault(role.pid, []).append(
                    (time.monotonic() - self.start, role.memory_info().rss / 2**20))
            except psutil.Error:
                continue

    def _wait_for_jobs(self, store: Any, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            open_jobs = []
            for job in self.jobs:
                state = self._observe(store, job)
                if state == "missing" and not job.lost:
                    job.lost = self._lost_reason(job)
                if not job.lost and state not in ("completed", "failed", "cancelled"):
                    open_jobs.append(job.id)
            if not open_jobs:
                return
            self._sample()
            time.sleep(2.0)
        self._say(f"jobs still open after {timeout_s:.0f} s: {open_jobs}")

    def _observe(self, store: Any, job: Submitted) -> str:
        """``job``'s state now, noted among those it was seen in."""
        state = _state(store, job.id)
        job.seen.add(state)
        return state

    def _lost_reason(self, job: Submitted) -> str:
        """Why ``job`` is gone from Redis: a rollback to a snapshot older than its
        submit, after it ("" when none explains it)."""
        for at, snapshot_at in self.rollbacks:
            if snapshot_at < job.at < at:
                return (f"Redis rolled back at {at - self.start:.0f} s to a snapshot of"
                        f" {snapshot_at - self.start:.0f} s")
        return ""


def _proxied_cluster(**kwargs: Any) -> Any:
    """A ``LocalCluster`` whose roles reach Redis through a TCP proxy (``cluster.proxy``,
    for the network's faults); ``cluster.redis.url`` is the direct way."""
    from soak_proxy import Proxy

    from tunecluster.cluster import LocalCluster

    class ProxiedCluster(LocalCluster):
        @property
        def url(self) -> str:
            assert self.redis is not None
            return self.proxy.url(self.redis.url)

    cluster = ProxiedCluster(**kwargs)
    cluster.proxy = Proxy(lambda: cluster.redis.port).start()
    return cluster


def _state(store: Any, job: str) -> str:
    try:
        if not store.jobs.exists(job):
            return "missing"
        return str(store.jobs.get(job).state)
    except Exception:  # noqa: BLE001 - Redis down, paused or full
        return "unknown"


def _redis_mb(store: Any) -> float:
    return float(store.client.info("memory")["used_memory"]) / 2**20


def _until(predicate: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the cluster did not come up")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--duration", type=float, default=600.0, help="seconds of faults")
    length.add_argument("--minutes", type=float, default=None, help="minutes of faults")
    parser.add_argument("--faults", default=",".join(KINDS),
                        help=f"comma-separated kinds, of: {', '.join(KINDS)}")
    parser.add_argument("--mean-gap", type=float, default=6.0,
                        help="mean seconds between faults (a Poisson stream)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.faults.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        parser.error(f"--faults: unknown kind {unknown}; allowed: {', '.join(KINDS)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tunecluster-soak-"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from soak_faults import Injector

    duration_s = args.minutes * 60 if args.minutes is not None else args.duration
    if args.mean_gap <= 0:
        parser.error("--mean-gap: a number of seconds above 0")
    soak = Soak(args.seed, duration_s, workdir, kinds, mean_gap_s=args.mean_gap)
    try:
        report = soak.run()
    finally:
        soak.cluster.stop(fast=True)
        soak.cluster.proxy.close()
        Injector.immutable(workdir, False)  # a fault cut short leaves none behind
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    for check in report["checks"]:
        print(f"{'ok  ' if check['ok'] else 'FAIL'} {check['name']}: {check['detail']}")
    print("faults: " + ", ".join(f"{k} {n}" for k, n in report["faults"].items()))
    print(json.dumps(report, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

