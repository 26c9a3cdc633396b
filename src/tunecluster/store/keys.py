"""Every Redis key tunecluster uses, built in one place (tests pin this schema).

    {p}:jobs                        ZSET  active job ids, scored by (priority, age)
    {p}:jobs:all                    ZSET  every job id, scored by creation time (ms)
    {p}:job:{job}                   HASH  job record: state, spec, space, timestamps, results
    {p}:job:{job}:file:{name}       STRING bytes of a data file uploaded with the job
    {p}:job:{job}:oracle            STRING the KerasTuner oracle's own state (JSON), chief only
    {p}:job:{job}:oracle:trials     HASH  trial id -> the oracle's state of that trial (JSON)
    {p}:job:{job}:trials            ZSET  trial ids, scored by creation order
    {p}:job:{job}:trial:{trial}     HASH  trial record: state, values, attempts, worker, result
    {p}:job:{job}:trial:{trial}:epochs HASH epoch number -> metrics (JSON)
    {p}:job:{job}:trial:{trial}:errors LIST why each earlier attempt ended (crash, lost lease)
    {p}:job:{job}:trial:{trial}:sync HASH a gang's rank 0 -> the others: "{attempt}:{epoch}" ->
                                          stop after that epoch? ("1"/"0")
    {p}:job:{job}:events            STREAM the job's event log (what `watch` tails)
    {p}:job:{job}:downloads         HASH  artifact name -> size, sha256, where, published? (JSON)
    {p}:job:{job}:download:{sha256} LIST  an artifact's bytes for download (~1 MiB chunks)
    {p}:job:{job}:download:{sha256}:part LIST the same while the chief pushes its chunks
    {p}:ready                       LIST  "{job}/{trial}" ready to claim, claimed from the left
                                          (jobs of priority 0; the queue: store/queue.py)
    {p}:ready:{priority}            LIST  the same for the jobs of another priority
    {p}:ready:bands                 ZSET  those lists' keys, scored by -priority
    {p}:leases                      ZSET  "{job}/{trial}" of running trials, scored by expiry (ms)
    {p}:forming                     ZSET  "{job}/{trial}" of gangs still forming, scored by deadline
    {p}:inbox                       STREAM reports for the chief (epochs, ends, submits, cancels)
    {p}:wake                        LIST  tokens that wake idle workers when trials are queued
    {p}:workers                     ZSET  worker ids, scored by last heartbeat (ms)
    {p}:worker:{worker}             HASH  worker info: host, pid, slots, busy
    {p}:chief:lock                  STRING id of the active chief (expires unless renewed)
    {p}:chief:lock:beat             STRING Redis time (ms) of the active chief's last tick (probes)
    {p}:chief:seq                   STRING the chief's committed rounds (detects lost commits)
    {p}:reaper:last                 STRING Redis time (ms) of the reaper's last pass (stalls)
    {p}:reaper:grace                STRING Redis time (ms) before which nothing is reaped
    {p}:req:{request}               STRING the reply of a non-idempotent call, kept for its retries
    {p}:telemetry:counts            HASH  cluster-wide totals: trials started/completed/failed/
                                          cancelled/retried, leases reaped (never per job)
    {p}:telemetry:hist:{name}       HASH  a histogram's fixed buckets: bound -> count, count, sum

Times that two hosts compare (leases, heartbeats, the reaper's clock) are Redis server
time, read with TIME inside the scripts, never a host's wall clock.
"""

from __future__ import annotations

from tunecluster import defaults

CHIEF_GROUP = "chief"  # consumer group of the inbox stream


class Keys:
    def __init__(self, prefix: str = defaults.KEY_PREFIX) -> None:
        self.p = prefix

    # jobs
    @property
    def jobs_active(self) -> str:
        return f"{self.p}:jobs"

    @property
    def jobs_all(self) -> str:
        return f"{self.p}:jobs:all"

    def job(self, job: str) -> str:
        return f"{self.p}:job:{job}"

    def job_file(self, job: str, name: str) -> str:
        return f"{self.p}:job:{job}:file:{name}"

    def oracle(self, job: str) -> str:
        return f"{self.p}:job:{job}:oracle"

    def oracle_trials(self, job: str) -> str:
        return f"{self.p}:job:{job}:oracle:trials"

    def trials(self, job: str) -> str:
        return f"{self.p}:job:{job}:trials"

    def trial(self, job: str, trial: str) -> str:
        return f"{self.p}:job:{job}:trial:{trial}"

    def epochs(self, job: str, trial: str) -> str:
        return f"{self.p}:job:{job}:trial:{trial}:epochs"

    def trial_errors(self, job: str, trial: str) -> str:
        return f"{self.p}:job:{job}:trial:{trial}:errors"

    def trial_sync(self, job: str, trial: str) -> str:
        return f"{self.p}:job:{job}:trial:{trial}:sync"

    def events(self, job: str) -> str:
        return f"{self.p}:job:{job}:events"

    def downloads(self, job: str) -> str:
        return f"{self.p}:job:{job}:downloads"

    def download_blob(self, job: str, sha256: str) -> str:
        return f"{self.p}:job:{job}:download:{sha256}"

    def download_part(self, job: str, sha256: str) -> str:
        return f"{self.p}:job:{job}:download:{sha256}:part"

    # queues and liveness
    @property
    def ready(self) -> str:
        return f"{self.p}:ready"

    def ready_list(self, priority: int) -> str:
        """The ready list of a job priority's trials (0: ``ready`` itself)."""
        return self.ready if priority == 0 else f"{self.p}:ready:{int(priority)}"

    @property
    def ready_bands(self) -> str:
        return f"{self.p}:ready:bands"

    @property
    def leases(self) -> str:
        return f"{self.p}:leases"

    @property
    def forming(self) -> str:
        return f"{self.p}:forming"

    @property
    def inbox(self) -> str:
        return f"{self.p}:inbox"

    @property
    def wake(self) -> str:
        return f"{self.p}:wake"

    @property
    def workers(self) -> str:
        return f"{self.p}:workers"

    def worker(self, worker: str) -> str:
        return f"{self.p}:worker:{worker}"

    @property
    def chief_lock(self) -> str:
        return f"{self.p}:chief:lock"

    @property
    def chief_beat(self) -> str:
        return f"{self.p}:chief:lock:beat"

    @property
    def chief_seq(self) -> str:
        return f"{self.p}:chief:seq"

    @property
    def reaper_last(self) -> str:
        return f"{self.p}:reaper:last"

    @property
    def reaper_grace(self) -> str:
        return f"{self.p}:reaper:grace"

    def request(self, request_id: str) -> str:
        return f"{self.p}:req:{request_id}"

    # telemetry (store/telemetry.py): cluster-wide, so ``delete`` of a job leaves it
    @property
    def telemetry_counts(self) -> str:
        return f"{self.p}:telemetry:counts"

    def telemetry_hist(self, name: str) -> str:
        return f"{self.p}:telemetry:hist:{name}"


def member(job: str, trial: str) -> str:
    """How a trial is named inside the shared ready list and lease set."""
    return f"{job}/{trial}"


def split_member(value: str) -> tuple[str, str]:
    job, _, trial = value.partition("/")
    return job, trial
