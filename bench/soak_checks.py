"""What the soak checks once its faults stopped (``soak.py``'s docstring lists them).

Each check is ``{"name", "ok", "detail"}``; a failed one names what broke, first few.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil

from tunecluster.artifacts import RESULTS, job_dir, trial_model
from tunecluster.store.audit import exactly_once

FINAL = ("completed", "failed", "cancelled")
WARM_UP_S = 30.0  # a role's first seconds: imports, not growth
# A role's RSS is judged over this much of its life at least: a standby chief imports
# what the algorithms need only once it leads (116 -> 220 MiB), which a short life
# shows as growth; a leak takes minutes to tell from that.
MIN_LIFE_S = 300.0


def _check(name: str, problems: list[str], passed: str) -> dict[str, Any]:
    detail = passed if not problems else f"{len(problems)}: " + " | ".join(problems[:5])
    return {"name": name, "ok": not problems, "detail": detail}


def check_roles(soak: Any) -> dict[str, Any]:
    """Every chief and worker that is gone was killed by a fault: none died by itself
    (healing started new ones in their place, so the jobs do not show it)."""
    died = [f"{role} {proc.pid} exited with {proc.returncode}"
            for role, procs in (("chief", soak.cluster.chiefs), ("worker", soak.cluster.workers))
            for proc in procs if proc.poll() is not None and proc.pid not in soak.killed]
    return _check("no_role_died", died, f"{len(soak.killed)} roles killed by faults, no other"
                                        " ended")


def check_jobs(soak: Any, store: Any) -> list[dict[str, Any]]:
    """Final states, exactly-once, models on disk and loadable, results.json agreeing."""
    unfinished, breaches, models, disagree, failed = [], [], [], [], []
    kept = [job for job in soak.jobs if not job.lost]
    lost = [job for job in soak.jobs if job.lost]
    trials = completed = 0
    for job in kept:
        record = store.jobs.get(job.id) if store.jobs.exists(job.id) else None
        if record is None:
            unfinished.append(f"{job.id} ({job.algorithm}) is gone, no rollback explains it")
            continue
        if record.state not in FINAL:
            unfinished.append(f"{job.id} ({job.algorithm}) is {record.state}")
            continue
        if record.state == "failed":
            failed.append(f"{job.id} ({job.algorithm}): {record.fields.get('error')}"[:300])
        problems, rows = exactly_once(store, job.id)
        breaches += [f"{job.id} ({job.algorithm}): {p}" for p in problems]
        trials += len(rows)
        for row in rows:
            if row.get("state") != "COMPLETED":
                continue
            completed += 1
            path = trial_model(soak.cluster.artifacts, job.id, row["trial"], row.get("model"))
            if not _loads(path):
                models.append(f"{job.id}/{row['trial']}: {path} missing or unloadable")
        disagree += _results_disagree(soak.cluster.artifacts, job.id, rows)
    return [
        _check("jobs_final", unfinished,
               f"{len(kept)} jobs final ({len(lost)} more lost with a rollback of Redis to"
               " a snapshot older than their submit)"),
        # The soak's jobs retry a trial 3 times and stop after 20 failed in a row: no
        # fault it injects fails a job; one that failed is a finding.
        _check("no_job_failed", failed, "no job failed"),
        _check("exactly_once", breaches, f"{trials} trials in {len(kept)} jobs, each final"
                                         " once, attempts within their budget"),
        _check("models", models, f"{completed} completed trials' models there and loading"),
        _check("results_json", disagree, "every results.json agrees with the trial records"),
    ]


def _loads(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    from tunecluster.quiet import import_tensorflow

    import_tensorflow()
    import keras

    try:
        keras.saving.load_model(path, compile=False)
    except Exception:  # noqa: BLE001 - any failure to load is the finding
        return False
    return True


def _results_disagree(root: Path, job: str, rows: list[dict[str, Any]]) -> list[str]:
    path = job_dir(root, job) / RESULTS
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return [f"{job}: {RESULTS} unreadable ({exc})"]
    written = {t["trial"]: t["state"] for t in results.get("trials", [])}
    recorded = {row["trial"]: row.get("state") for row in rows}
    if written != recorded:
        return [f"{job}: {RESULTS} says {written}, the records {recorded}"]
    return []


def check_redis_memory(soak: Any, store: Any, start_mb: float) -> dict[str, Any]:
    """Every job deleted: Redis's used memory is back near its start."""
    from soak import REDIS_MEMORY_MARGIN_MB

    for job in soak.jobs:
        if store.jobs.exists(job.id):
            store.jobs.delete(job.id, force=True, wait_s=30)
    time.sleep(1.0)
    client = store.client
    # Replay records of retried requests expire by themselves (store/fence.py's
    # REQUEST_TTL_MS): what they hold is not left behind.
    expiring = [key for key in client.keys("*") if client.pttl(key) > 0]
    transient_mb = sum(client.memory_usage(key) or 0 for key in expiring) / 2**20
    end_mb = float(client.info("memory")["used_memory"]) / 2**20 - transient_mb
    over = end_mb - start_mb
    problems = []
    if over > REDIS_MEMORY_MARGIN_MB:
        sizes = {key: store.client.memory_usage(key) or 0 for key in store.client.keys("*")}
        biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
        problems.append(f"{end_mb:.1f} MiB after deleting every job, {start_mb:.1f} at the"
                        f" start (margin {REDIS_MEMORY_MARGIN_MB} MiB); biggest keys:"
                        f" {biggest}")
    return _check("redis_memory", problems,
                  f"{end_mb:.1f} MiB after deleting every job, {start_mb:.1f} at the start"
                  f" ({client.dbsize() - len(expiring)} keys left; not counted:"
                  f" {len(expiring)} expiring replay records, {transient_mb:.1f} MiB)")


def check_after_stop(soak: Any) -> list[dict[str, Any]]:
    """After the cluster stopped: no process of it left; no role's RSS grew much."""
    from soak import RSS_MARGIN, RSS_MARGIN_MB

    time.sleep(1.0)
    left = []
    for pid in sorted(soak.seen_pids):
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid} {' '.join(proc.cmdline()[:4])}")
        except psutil.Error:
            continue
    # A leak grows on: a role's RSS at the end of its life against the middle of it (by
    # then it has loaded what its jobs' algorithms import), for roles that lived a
    # quarter of the soak and MIN_LIFE_S at least, their first WARM_UP_S left out.
    grew, measured = [], 0
    for pid, samples in soak.rss.items():
        life = [(at, rss) for at, rss in samples if at >= samples[0][0] + WARM_UP_S]
        if not life or life[-1][0] - samples[0][0] < max(soak.duration_s / 4, MIN_LIFE_S):
            continue  # too short a life to speak of growth
        measured += 1
        middle = (samples[0][0] + life[-1][0]) / 2
        mid = next(rss for at, rss in life if at >= middle)
        if life[-1][1] > mid * (1 + RSS_MARGIN) + RSS_MARGIN_MB:
            grew.append(f"{pid}: {mid:.0f} MiB mid-life -> {life[-1][1]:.0f} at its end")
    return [
        _check("no_process_left", left, f"none of the {len(soak.seen_pids)} processes of"
                                        " the cluster is left"),
        _check("rss_bounded", grew, f"{measured} roles' RSS within +{RSS_MARGIN:.0%}"
                                    f" +{RSS_MARGIN_MB:g} MiB from mid-life to end"),
    ]
