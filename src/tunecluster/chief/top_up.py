"""How many trials the chief creates each round, and for which jobs: the top-up.

The ready queue is kept to the free worker slots and no more, so each Bayesian
suggestion sees the latest results; random and grid searches keep a few more ready.
"""

from __future__ import annotations

import os

from tunecluster.chief.jobs import HostedJob, oracle_failed
from tunecluster.states import OracleStatus, TrialState
from tunecluster.store.fence import Writes
from tunecluster.store.queue import TrialQueue

# Random and grid searches keep this fraction of the worker slots (rounded down, at
# least one trial) ready beyond the free slots, so that a worker that ends a trial
# claims its next one at once instead of waiting on the chief's round. On 2 workers
# (bench/orchestration.py, 1,000 null trials): 3.4 ms per trial with none ready, 3.2
# with one, 2.8 with two. At 1,000 simulated workers with 1 s trials (bench/scale.py,
# 16 cores), where workers that end together ask for hundreds of trials at once: 0.84
# efficiency with a tenth of the slots, 0.91 with half. Since the ready queue is ordered
# by job priority (store/queue.py), trials kept ready for a job never delay a
# higher-priority job's. Bayesian and Hyperband keep none (each suggestion sees the
# latest results).
# $TUNECLUSTER_READY_AHEAD overrides it (a fraction; 0 turns it off).
READY_AHEAD = float(os.environ.get("TUNECLUSTER_READY_AHEAD", "0.5"))

# At most this many trials are created per round; the next round follows at once.
TOP_UP_CHUNK = 256


def top_up(queue: TrialQueue, jobs: list[HostedJob], slots: int, writes: Writes) -> bool:
    """Stage new trials of ``jobs`` (the active ones, highest priority first) into
    ``writes`` for the free ones of ``slots``, no more; True when it stopped at
    ``TOP_UP_CHUNK`` with more to create (the next round follows at once).

    A job with no trial in flight is asked once per round whether or not a slot is
    free: that is how a search that is over gets noticed (and the job finalized)
    while higher-priority jobs hold every slot or no worker is alive. Its trial, if
    the search is not over, waits in the ready queue for the next free slot.

    Random and grid searches, whose suggestions do not depend on results, keep a
    few more trials ready than slots are free (``READY_AHEAD``): a worker that ends
    a trial claims its next one at once instead of waiting for this round.

    The busy slots are counted from the oracles, not from Redis: every trial an
    oracle has not seen end (ready, forming or running) holds or waits for as many
    slots as its job's ``resources.workers_per_trial`` (a running gang of N holds N).
    Ends still in the inbox count until the chief reads them, which only errs
    towards creating fewer trials for a round.
    """
    hosts = [(hosted, hosted.host) for hosted in jobs if hosted.host is not None]
    busy = sum(host.ongoing() * hosted.spec.resources.workers_per_trial
               for hosted, host in hosts)
    free = slots - busy if slots > 0 else 0
    ahead = max(1, int(slots * READY_AHEAD)) if READY_AHEAD > 0 else 0
    created = 0
    for hosted, host in hosts:
        job_id = hosted.id
        if hosted.exhausted or hosted.failure or hosted.cancel:
            continue
        extra = ahead if hosted.spec.search.algorithm in ("random", "grid") else 0
        need = hosted.spec.resources.workers_per_trial  # slots one trial takes
        budget = free + extra if host.ongoing() > 0 else max(free + extra, 1)
        if not host.has_space():
            # a search whose code declares every hyperparameter as trials run (a black-box
            # run_trial): trials made before one ends would all draw the same empty values
            # (KerasTuner's oracle then ends the search); one at a time until one has ended
            if host.ongoing() > 0:
                continue
            budget = need
        while budget > 0:
            if created >= TOP_UP_CHUNK:
                # Commit these now and make the rest on the next round at once
                # (no wait on the inbox): the first trials start without waiting
                # for a thousand suggestions.
                return True
            try:
                status, trial, values = host.create_trial()
            except Exception as exc:  # noqa: BLE001 - one job's oracle, never the chief
                oracle_failed(hosted, "suggesting a trial", exc)
                break
            if status == TrialState.RUNNING and trial is not None:
                # The oracle that made it is written once per round (the chief's
                # _stage_oracles), later in this same step, not once per trial here.
                queue.enqueue(job_id, trial, values, hosted.spec.search.max_retries_per_trial,
                              None, pipe=writes, gang_size=need,
                              priority=hosted.spec.priority)
                hosted.dirty = True
                hosted.touched.add(trial)
                budget -= need
                free -= need
                created += 1
            elif status == OracleStatus.IDLE:
                break
            else:
                hosted.exhausted = True
                hosted.dirty = True
                break
    return False
