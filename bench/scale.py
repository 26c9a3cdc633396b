"""Scale: N simulated workers against one real Redis and the real chief process.

    .venv/bin/python bench/scale.py --workers 1000 --trial-seconds 1 --trials 10000 --json
    .venv/bin/python bench/scale.py --bayesian-latency 100 1000 5000
    .venv/bin/python bench/scale.py --round-cost 100 1000 10000

Each simulated worker is the real ``tunecluster.worker.loop.Worker`` (its claim loop,
heartbeat and lease renewal, cancel reads, through the real Lua scripts of
``store/queue.py``) with its trial process replaced by an in-thread trial that sleeps
``--trial-seconds``, reports one epoch and finishes. Workers are threads spread over a
few processes (``--procs``, default one per 250 workers). The chief is the real
``Chief`` in its own process, timed around each round (inbox read returned -> commit
applied). The job is a random search over a large space, submitted once everything is
up.

Printed (``--json``): ``{"workers", "trials", "trial_seconds", "wall_s", "ideal_s",
"efficiency", "trials_per_s", "chief_round_ms_p50", "chief_round_ms_p99"}`` where
wall_s = submit -> last trial recorded finished (Redis time of the record),
ideal_s = ceil(trials / workers) x trial_seconds (what N workers need with zero
overhead), efficiency = ideal_s / wall_s. A line on stderr adds the chief's bytes
committed per round (all of it, and the oracle's share) and the AOF growth with
``--aof``, and the CPU seconds the chief, the simulated workers and Redis used from
submit to the last trial (on a machine of few cores, the simulation's own share).
The run fails (exit 1) unless every trial completed exactly once (its record COMPLETED,
never two ``trial_completed`` events); a trial retried after a lost lease is reported
on stderr.

``--bayesian-latency N...`` instead times the Bayesian oracle's ``create_trial`` after
N completed trials, with and without ``search.bayesian_max_fit_trials``.
``--round-cost N...`` times the oracle's part of a chief round (one trial's epoch and
end, the next suggestion, the state and the records the round commits) after N
completed trials of a random search.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SPACE = {
    "n_hidden": {"int": [0, 50]},
    "n_neurons": {"int": [1, 100000]},
    "learning_rate": {"float": [1e-5, 1.0], "sampling": "log"},
    "optimizer": {"choice": ["sgd", "adam", "rmsprop"]},
}
WORKERS_PER_PROC = 250
KEYS_OUT = ("workers", "trials", "trial_seconds", "wall_s", "ideal_s", "efficiency",
            "trials_per_s", "chief_round_ms_p50", "chief_round_ms_p99")


# --- the simulated workers (one process holds many) ----------------------------------


class SleepTrial:
    """Stands in for a worker's trial process: sleeps the trial's length, reports one
    epoch and finishes, through the same store calls the trial process makes."""

    def __init__(self, store: Any, worker: str, seconds: float) -> None:
        self.store, self.worker, self.seconds, self.trials = store, worker, seconds, 0
        self.env: dict[str, str] = {}  # what the Worker's heartbeat reads of a Child
        self.on_gpu = False
        self.process = None  # no process: its memory is the worker's own

    def run(self, claim: Any, stopping: threading.Event, abort: Any = None) -> dict[str, Any]:
        self.trials += 1
        if stopping.wait(self.seconds):
            raise InterruptedError("worker shutting down")
        score = (hash(claim.trial) % 1000) / 1000.0
        metrics = {"loss": score, "val_loss": score}
        self.store.queue.report_epoch(claim, self.worker, 1, metrics)
        self.store.queue.finish(claim, self.worker, "COMPLETED",
                                {"score": repr(score), "metrics": metrics, "best_epoch": "1"})
        return {"outcome": "completed"}

    def ensure(self) -> None:
        pass

    def close(self) -> None:
        pass


def workers_main(url: str, artifacts: str, n: int, trial_s: float, tag: str) -> None:
    from tunecluster.store import Store, connect
    from tunecluster.worker.loop import Worker

    threading.stack_size(512 * 1024)  # 2 threads per worker: keep the process small
    workers = []
    for i in range(n):
        store = Store(connect(url, check=False))  # its own connections, as a worker has
        w = Worker(store, url, artifacts, slots=1, worker_id=f"sim-{tag}-{i}")
        w.children = [SleepTrial(store, w.worker_id, trial_s)]  # type: ignore[list-item]
        workers.append(w)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    for t in threads:
        t.start()
    done.wait()
    for w in workers:
        w.stopping.set()
    for t in threads:
        t.join(5)


# --- the chief, timed round by round ----------------------------------------------------


def chief_main(url: str, artifacts: str, stats_path: str) -> None:
    from tunecluster.chief.loop import Chief
    from tunecluster.store import Store
    from tunecluster.store.fence import Writes
    from tunecluster.store.inbox import ChiefInbox

    store = Store.from_url(url)
    chief = Chief(store, artifacts)
    rounds: list[tuple[float, int, int, int]] = []  # ms, entries, bytes, oracle bytes
    mark = {"t": time.perf_counter(), "entries": 0}
    read = ChiefInbox.read

    def timed_read(self: ChiefInbox, pending: bool, block_ms: int | None) -> list[Any]:
        entries = read(self, pending, block_ms)
        mark["t"] = time.perf_counter()
        mark["entries"] = len(entries)
        return entries

    apply = Writes.apply

    def timed_apply(self: Writes, client: Any, fence: Any = None, request_key: str = "",
                    sequence: Any = None) -> int:
        kwargs: dict[str, Any] = {"request_key": request_key, "sequence": sequence}
        answer = apply(self, client, fence, **kwargs) if fence is not None else apply(
            self, client, **kwargs)
        if sequence is not None:  # the round's commit (other fenced writes have none)
            size = len(json.dumps(self.ops))
            oracle = sum(len(json.dumps(op)) for op in self.ops
                         if len(op) > 1 and ":oracle" in op[1])
            rounds.append(((time.perf_counter() - mark["t"]) * 1000, int(mark["entries"]),
                           size, oracle))
        return answer

    ChiefInbox.read = timed_read  # type: ignore[method-assign]
    Writes.apply = timed_apply  # type: ignore[method-assign]
    signal.signal(signal.SIGTERM, lambda *_: chief.stop())
    profile = os.environ.get("SCALE_CHIEF_PROFILE")  # a path: where the chief's cProfile goes
    if profile:
        import cProfile

        cProfile.runctx("chief.run()", globals(), {"chief": chief}, profile)
    else:
        chief.run()
    Path(stats_path).write_text(json.dumps(rounds))


# --- the driver --------------------------------------------------------------------------


def _until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"scale: {what} not reached within {timeout:.0f} s")
        time.sleep(0.1)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(math.ceil(q * len(ordered))) - 1)]


def run_scale(workers: int, trial_s: float, trials: int, procs: int | None = None,
              redis_url: str | None = None, aof: bool = False,
              timeout_s: float = 1800) -> tuple[dict[str, Any], dict[str, Any]]:
    """One run; returns (the figures printed, details for stderr)."""
    from tunecluster.cluster import RedisServer

    if redis_url:
        return _run(redis_url, workers, trial_s, trials, procs, timeout_s, aof=False)
    extra = ["--auto-aof-rewrite-percentage", "0", "--maxclients", "10000"]
    with RedisServer(appendonly=aof, extra=extra) as server:
        return _run(server.url, workers, trial_s, trials, procs, timeout_s, aof=aof)


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process used so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _aof_bytes(store: Any) -> int:
    info = store.client.info("persistence")
    return int(info.get("aof_current_size", 0) or 0)


def _run(url: str, workers: int, trial_s: float, trials: int, procs: int | None,
         timeout_s: float, aof: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    from tunecluster.api.submission import PreparedJob, search_space, submit
    from tunecluster.spec import parse_spec
    from tunecluster.store import Store

    spec = parse_spec({"name": "scale", "data": {"dataset": "digits"},
                       "model": {"builtin": "mlp", "hyperparameters": SPACE},
                       "search": {"algorithm": "random", "objective": "val_loss",
                                  "max_trials": trials}})
    job = PreparedJob(spec, search_space(spec))
    procs = procs or max(1, math.ceil(workers / WORKERS_PER_PROC))
    shares = [workers // procs + (1 if i < workers % procs else 0) for i in range(procs)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    me = str(Path(__file__).resolve())
    store = Store.from_url(url)
    children: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="tc-scale-") as tmp:
        stats = Path(tmp) / "chief.json"
        try:
            children.append(subprocess.Popen(
                [sys.executable, me, "--_chief", url, tmp, str(stats)], env=env,
                # its log says only that null trials left no model to finalize
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for i, n in enumerate(shares):
                children.append(subprocess.Popen(
                    [sys.executable, me, "--_workers", url, tmp, str(n), str(trial_s), str(i)],
                    env=env, stdout=subprocess.DEVNULL))
            _until(lambda: store.client.get(store.keys.chief_beat) is not None,
                   300, "the chief's first heartbeat")
            _until(lambda: len(store.workers.live(10)) >= workers, 300,
                   f"{workers} live workers")
            time.sleep(2.5)  # the chief's worker census (once a second) sees them all
            aof_before = _aof_bytes(store) if aof else 0
            cpu_before = [_cpu_s(p.pid) for p in children]  # the chief first
            info = store.client.info("cpu")
            redis_cpu = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
            t_submit = time.time()
            job_id = submit(store, job)
            seen = _follow(store, job_id, trials, timeout_s)
            wall_end_ms = _verify(store, job_id, trials, seen)
            idle = where_slots_idle(store, job_id, t_submit, trial_s)
            aof_after = _aof_bytes(store) if aof else 0
            cpu_after = [_cpu_s(p.pid) for p in children]
            info = store.client.info("cpu")
            redis_cpu = float(info["used_cpu_sys"]) + float(info["used_cpu_user"]) - redis_cpu
        finally:
            for p in children:
                p.send_signal(signal.SIGTERM)
            for p in children:
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
        rounds = json.loads(stats.read_text()) if stats.exists() else []
    cpu = {"chief_cpu_s": round(cpu_after[0] - cpu_before[0], 1),
           "workers_cpu_s": round(sum(cpu_after[1:]) - sum(cpu_before[1:]), 1),
           "redis_cpu_s": round(redis_cpu, 1)}
    wall = wall_end_ms / 1000 - t_submit
    ideal = math.ceil(trials / workers) * trial_s
    busy = [r for r in rounds if r[1] > 0]  # rounds that had inbox messages to handle
    ms = [r[0] for r in busy]
    out = {"workers": workers, "trials": trials, "trial_seconds": trial_s,
           "wall_s": round(wall, 3), "ideal_s": round(ideal, 3),
           "efficiency": round(ideal / wall, 4), "trials_per_s": round(trials / wall, 1),
           "chief_round_ms_p50": round(_percentile(ms, 0.5), 2),
           "chief_round_ms_p99": round(_percentile(ms, 0.99), 2)}
    detail = {"job": job_id, "rounds": len(busy),
              "entries_per_round_mean": round(statistics.mean([r[1] for r in busy]), 1)
              if busy else 0,
              "commit_bytes_total": sum(r[2] for r in rounds),
              "commit_bytes_p50": _percentile([float(r[2]) for r in busy], 0.5),
              "oracle_bytes_total": sum(r[3] for r in rounds),
              "oracle_bytes_per_trial": round(sum(r[3] for r in rounds) / trials),
              "last_rounds_oracle_bytes": [r[3] for r in busy[-3:]], **cpu, **idle}
    if aof:
        detail["aof_growth_bytes"] = aof_after - aof_before
    return out, detail


def _follow(store: Any, job_id: str, trials: int, timeout_s: float) -> dict[str, int]:
    """Block on the job's event stream until every trial ended; returns how many
    ``trial_completed`` events each trial had (raw reads, only those events decoded:
    the observer shares the cores with what it measures)."""
    key, after, ended = store.keys.events(job_id), "0-0", 0
    completed: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    next_check = time.monotonic() + 5
    while ended < trials:
        if time.monotonic() > deadline:
            raise TimeoutError(f"scale: {ended}/{trials} trials ended after {timeout_s:.0f} s")
        rows = store.client.xread({key: after}, count=5000, block=500)
        for _stream, items in rows or []:
            for entry_id, fields in items:
                after = entry_id
                kind = fields.get("type")
                ended += kind in ("trial_completed", "trial_failed", "trial_cancelled")
                if kind == "trial_completed":
                    trial = str(json.loads(fields.get("data", "{}")).get("trial"))
                    completed[trial] = completed.get(trial, 0) + 1
        if time.monotonic() > next_check:  # events trimmed away (MAXLEN) would hang us
            next_check = time.monotonic() + 5
            record = store.jobs.get(job_id)
            if record.state in ("failed", "cancelled"):
                raise SystemExit(f"scale: the job {record.state}: "
                                 f"{record.fields.get('error', '')[:300]}")
            states = _states(store, job_id)
            if sum(s in ("COMPLETED", "FAILED", "CANCELLED") for s in states) >= trials:
                break
    return completed


def _states(store: Any, job_id: str) -> list[str]:
    ids = store.jobs.trial_ids(job_id)
    pipe = store.client.pipeline(transaction=False)
    for tid in ids:
        pipe.hget(store.keys.trial(job_id, tid), "state")
    return [s or "" for s in pipe.execute()]


def _verify(store: Any, job_id: str, trials: int, completed: dict[str, int]) -> int:
    """Every trial completed exactly once (its record, and the completion events seen);
    returns the last one's finish time (ms)."""
    rows = store.jobs.trials(job_id)
    problems = []
    if len(rows) != trials:
        problems.append(f"{len(rows)} trials created, expected {trials}")
    bad = [r["trial"] for r in rows if r.get("state") != "COMPLETED"]
    if bad:
        problems.append(f"{len(bad)} trials not completed: {bad[:5]}")
    twice = [t for t, n in completed.items() if n > 1]
    if twice:
        problems.append(f"trials completed more than once: {twice[:5]}")
    if problems:
        raise SystemExit("scale: " + "; ".join(problems))
    retried = sum(int(r.get("attempts", "1")) > 1 for r in rows)
    if retried:  # a lease lost (the worker starved past it): retried, still counted once
        print(f"scale: {retried} trials needed a second attempt", file=sys.stderr)
    return max(int(r["finished"]) for r in rows)


def where_slots_idle(store: Any, job_id: str, t_submit: float, trial_s: float) -> dict:
    """Where the wall time beyond the ideal went, from the trial records (Redis time,
    ms): the first trial's start after the submit, a trial's time beyond its sleep
    (claim to finish: the trial process's hops, the epoch report, the finish), and the
    gap between a worker's trial end and its next claim."""
    rows = store.jobs.trials(job_id)
    starts = [int(r["started"]) / 1000 for r in rows]
    beyond = [(int(r["finished"]) - int(r["started"])) / 1000 - trial_s for r in rows]
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        by_worker.setdefault(r["worker"], []).append(
            (int(r["started"]) / 1000, int(r["finished"]) / 1000))
    gaps = [nxt[0] - prev[1] for spans in map(sorted, by_worker.values())
            for prev, nxt in zip(spans, spans[1:], strict=False)]

    def ms(xs: list[float], q: float) -> float:
        return round(_percentile(xs, q) * 1000, 1)

    firsts = [min(spans)[0] - t_submit for spans in by_worker.values()]
    return {"first_start_s": round(min(starts) - t_submit, 3),
            "workers_first_start_s_p50": round(_percentile(firsts, 0.5), 3),
            "workers_first_start_s_max": round(max(firsts), 3),
            "trial_beyond_sleep_ms_p50": ms(beyond, 0.5),
            "trial_beyond_sleep_ms_p99": ms(beyond, 0.99),
            "worker_gap_ms_p50": ms(gaps, 0.5), "worker_gap_ms_p90": ms(gaps, 0.9),
            "worker_gap_ms_p99": ms(gaps, 0.99)}


# --- Bayesian suggestion latency -----------------------------------------------------------


def bayesian_latency(counts: list[int], bound: int | None, repeats: int = 3) -> list[dict]:
    """Time ``create_trial`` of the hosted Bayesian oracle after n completed trials."""
    out = []
    for n in counts:
        host = _seeded_host(n, {"algorithm": "bayesian", "max_trials": n + repeats + 1,
                                # 0: every trial (KerasTuner's way)
                                "bayesian_max_fit_trials": bound or 0})
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            status, trial, _values = host.create_trial()
            times.append((time.perf_counter() - t0) * 1000)
            assert status == "RUNNING" and trial is not None
            host.update(trial, 1, {"val_loss": 0.5})
            host.end(trial, completed=True)
        out.append({"completed_trials": n, "bayesian_max_fit_trials": bound or 0,
                    "create_trial_ms": round(statistics.median(times), 1)})
    return out


def round_cost(counts: list[int], repeats: int = 200) -> list[dict]:
    """The oracle's part of a chief round that ends one random-search trial and creates
    the next (its epoch, its end, a suggestion, the state and the two trials' records the
    round commits), after n completed trials: it should not grow with n."""
    out = []
    for n in counts:
        host = _seeded_host(n, {"algorithm": "random", "max_trials": n + repeats + 2})
        running = host.create_trial()[1]
        rounds, states = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            host.update(running, 1, {"val_loss": 0.5})
            host.end(running, completed=True)
            _status, new, _values = host.create_trial()
            t1 = time.perf_counter()
            host.state_json()
            t2 = time.perf_counter()
            host.trials_json([running, new])
            rounds.append((time.perf_counter() - t0) * 1000)
            states.append((t2 - t1) * 1e6)
            running = new
        out.append({"completed_trials": n, "round_oracle_ms": round(statistics.median(rounds), 3),
                    "state_json_us": round(statistics.median(states), 1)})
    return out


def _seeded_host(n: int, search: dict[str, Any]) -> Any:
    """A hosted oracle over ``SPACE`` (``search`` on top of val_loss and seed 1) with n
    completed trials (``_seed_completed``)."""
    import random

    from tunecluster.api.submission import search_space
    from tunecluster.engine.oracle_host import OracleHost
    from tunecluster.spec import parse_spec

    spec = parse_spec({"name": "oracle", "data": {"dataset": "digits"},
                       "model": {"builtin": "mlp", "hyperparameters": SPACE},
                       "search": {"objective": "val_loss", "seed": 1, **search}})
    host = OracleHost.create(spec, search_space(spec))
    _seed_completed(host, n, random.Random(0))
    return host


def _seed_completed(host: Any, n: int, rng: Any) -> None:
    """n completed trials with random values and scores, without asking the oracle
    (which would fit its model n times): what a long search leaves behind."""
    from keras_tuner.engine.trial import Trial, TrialStatus

    oracle = host.oracle
    for i in range(n):
        hp = oracle.hyperparameters.copy()
        hp.values = {"n_hidden": rng.randint(0, 50), "n_neurons": rng.randint(1, 100000),
                     "learning_rate": 10 ** rng.uniform(-5, 0),
                     "optimizer": rng.choice(["sgd", "adam", "rmsprop"])}
        trial = Trial(hp, trial_id=f"{i:06d}", status=TrialStatus.COMPLETED)
        trial.metrics.register("val_loss", "min")
        trial.metrics.update("val_loss", rng.random(), step=1)
        trial.score, trial.best_step = trial.metrics.get_best_value("val_loss"), 1
        oracle.trials[trial.trial_id] = trial
        oracle.start_order.append(trial.trial_id)
        oracle.end_order.append(trial.trial_id)
        oracle._record_values(trial)


# --- command line ------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--_chief", "--_workers"):
        from tunecluster.worker.child import die_with_parent

        die_with_parent(os.getppid())  # a driver killed outright takes these along
    if len(sys.argv) > 1 and sys.argv[1] == "--_chief":
        chief_main(*sys.argv[2:5])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--_workers":
        url, art, n, secs, tag = sys.argv[2:7]
        workers_main(url, art, int(n), float(secs), tag)
        return
    # A SIGTERM (timeout, Ctrl-C's cousin) unwinds like an exception, so the Redis server,
    # the chief and the workers this run started are stopped, not left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--trial-seconds", type=float, default=1.0)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=None,
                        help=f"worker processes (default: one per {WORKERS_PER_PROC} workers)")
    parser.add_argument("--redis", default=None,
                        help="a running Redis (default: start one on a free port)")
    parser.add_argument("--aof", action="store_true",
                        help="run Redis with appendonly and report the AOF's growth")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--bayesian-latency", type=int, nargs="*", default=None,
                        metavar="N", help="time Bayesian suggestions after N trials instead")
    parser.add_argument("--bound", type=int, default=None,
                        help="with --bayesian-latency: search.bayesian_max_fit_trials"
                             " (default: 0, every trial, KerasTuner's own way)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="with --bayesian-latency: suggestions timed per size (median)")
    parser.add_argument("--round-cost", type=int, nargs="*", default=None, metavar="N",
                        help="time the oracle's part of a chief round after N trials instead")
    args = parser.parse_args()
    if args.round_cost is not None:
        for row in round_cost(args.round_cost or [100, 1000, 10000]):
            print(json.dumps(row), flush=True)
        return
    if args.bayesian_latency is not None:
        counts = args.bayesian_latency or [100, 1000, 5000]
        for row in bayesian_latency(counts, args.bound, repeats=args.repeats):
            print(json.dumps(row), flush=True)
        return
    for name in ("workers", "trials"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: {getattr(args, name)} must be at least 1")
    if args.trial_seconds < 0:
        parser.error(f"--trial-seconds: {args.trial_seconds} must be >= 0")
    out, detail = run_scale(args.workers, args.trial_seconds, args.trials, args.procs,
                            args.redis, args.aof)
    print(json.dumps(detail), file=sys.stderr)
    if args.json:
        print(json.dumps({k: out[k] for k in KEYS_OUT}))
    else:
        print(f"{out['workers']} workers x {out['trial_seconds']} s trials x "
              f"{out['trials']} trials: wall {out['wall_s']} s, ideal {out['ideal_s']} s, "
              f"efficiency {out['efficiency']:.3f}, {out['trials_per_s']} trials/s, "
              f"chief round p50 {out['chief_round_ms_p50']} ms / "
              f"p99 {out['chief_round_ms_p99']} ms")


if __name__ == "__main__":
    main()
