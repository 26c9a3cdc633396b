"""Every default tunecluster uses, in one place, with the reason for its value.

Environment variables override the liveness and location defaults so that compose
and Kubernetes deployments can tune them without code changes.
"""

import os

# --- control plane -------------------------------------------------------------
REDIS_URL_ENV = "TUNECLUSTER_REDIS_URL"
REDIS_URL = os.environ.get(REDIS_URL_ENV, "redis://127.0.0.1:6379/0")
KEY_PREFIX = "tc"  # every Redis key starts with this (store/keys.py builds them all)

# --- liveness -------------------------------------------------------------------
# A worker renews its heartbeat and the leases of its running trials every
# HEARTBEAT_S; a lease not renewed for LEASE_S is reaped by the chief.
# Worst-case detection of a dead worker = LEASE_S + min(1 s, LEASE_S/4) + CHIEF_TICK_S
# (the reap interval, and the inbox read it follows); one more LEASE_S + 5 s after
# the reaper itself stalled (Redis down or restarted, chief paused or replaced).
HEARTBEAT_S = float(os.environ.get("TUNECLUSTER_HEARTBEAT_S", "2.0"))
LEASE_S = float(os.environ.get("TUNECLUSTER_LEASE_S", "10.0"))
CHIEF_TICK_S = float(os.environ.get("TUNECLUSTER_CHIEF_TICK_S", "0.5"))
# The chief holds a leader lock for CHIEF_LOCK_S, renewed every third of it: a standby
# chief takes over at most CHIEF_LOCK_S after the active one died.
CHIEF_LOCK_S = float(os.environ.get("TUNECLUSTER_CHIEF_LOCK_S", "10.0"))
# A chief whose main loop got through no tick (and no step of one) for CHIEF_STUCK_S is
# stuck: its lock keeper stops extending the lock and a standby takes over one lock
# lifetime later. Finalizing a job (a test-split evaluation of up to
# TUNECLUSTER_EVALUATE_TIMEOUT_S, large models moved) may take CHIEF_FINALIZE_STUCK_S.
CHIEF_STUCK_S = float(os.environ.get("TUNECLUSTER_CHIEF_STUCK_S", "0") or 0) or max(
    3 * CHIEF_LOCK_S, 30.0)
CHIEF_FINALIZE_STUCK_S = 1200.0
# Reconnect back-off when Redis drops: doubles from the first value up to the cap.
RECONNECT_BACKOFF_S = (0.1, 5.0)

# --- workers --------------------------------------------------------------------
# A trial child process is recycled after this many trials or past this RSS, which
# bounds the memory TensorFlow leaks across models built in one process.
TRIALS_PER_CHILD = int(os.environ.get("TUNECLUSTER_TRIALS_PER_CHILD", "50"))
CHILD_MAX_RSS_MB = int(os.environ.get("TUNECLUSTER_CHILD_MAX_RSS_MB", "4096"))
ALLOW_CODE_UPLOAD_ENV = "TUNECLUSTER_ALLOW_CODE_UPLOAD"

# --- artifacts and data ---------------------------------------------------------
ARTIFACTS_ENV = "TUNECLUSTER_ARTIFACTS"
ARTIFACTS_ROOT = os.environ.get(ARTIFACTS_ENV, "./artifacts")
# Data files up to this size travel with the job through Redis, so workers need no
# shared filesystem; larger ones must be reachable at the same path by every worker.
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
# Data files that were not uploaded (larger than MAX_UPLOAD_BYTES, or named by a job
# that came through the API) are read only under this directory of each worker and
# chief, the operator's choice; unset, they are refused: a job must not read whatever
# its worker's disk holds. Read when a file is resolved, not at import.
DATA_ROOT_ENV = "TUNECLUSTER_DATA_ROOT"
# Uploaded data files cached on a worker's disk (<artifacts>/.cache/<job>): caches of
# jobs no longer active go, and at most this many are kept, most recently used first.
FILE_CACHE_JOBS = int(os.environ.get("TUNECLUSTER_FILE_CACHE_JOBS", "4"))
# At finalize the chief publishes the job's results.json, best_model.keras and the
# DOWNLOAD_TOP_K best trials' models through Redis, so that a client that reaches
# Redis but not the artifacts store (a laptop, the host of a compose stack) can fetch
# them. Each file is published only up to MAX_DOWNLOAD_BYTES (Redis holds it in memory
# until `delete`: at most (top-k + 1) models + results.json per job, identical files
# stored once); a larger one stays on the store only, and the client says where.
# Both are read by the chief when it publishes (store/downloads.py), not at import.
MAX_DOWNLOAD_BYTES_ENV = "TUNECLUSTER_MAX_DOWNLOAD_BYTES"
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
DOWNLOAD_TOP_K_ENV = "TUNECLUSTER_DOWNLOAD_TOP_K"
DOWNLOAD_TOP_K = 3

# --- job spec -------------------------------------------------------------------
SPLIT_VALID = 0.2
SPLIT_TEST = 0.2
SPLIT_SEED = 42
EPOCHS = 10
BATCH_SIZE = 32
MAX_TRIALS = 10
# train.deterministic: off, as Keras is. On, each trial is seeded (search.seed, else the
# split's seed, and the trial id) and TensorFlow's ops run deterministically, which
# costs time (measured in bench/README.md) and is a debugging aid more than a default.
DETERMINISTIC = False
MAX_RETRIES_PER_TRIAL = 1
MAX_CONSECUTIVE_FAILED_TRIALS = 3
HYPERBAND_FACTOR = 3
ASHA_FACTOR = 3  # ASHA keeps the top third of each rung
BAYESIAN_INITIAL_POINTS = 3
TPE_STARTUP_TRIALS = 10  # random trials before TPE models the results (optuna's default)
# The Bayesian oracle fits its Gaussian process on at most this many trials: some of the
# running ones, the best and the most recent (search.bayesian_max_fit_trials; 0 = every
# trial, KerasTuner's way). The fit is O(n^3) and runs for every suggestion, inside the
# chief's round: on this project's 2-core VM (bench/README.md) a suggestion took 0.1 s
# after 100 trials, 6-27 s after 1,000 and over 700 s after 5,000 with every trial, and
# 0.1-0.2 s at any count with 200. 200 leaves searches of up to 200 trials (the usual
# size) exactly as KerasTuner runs them and keeps a suggestion well under a second.
BAYESIAN_MAX_FIT_TRIALS = 200
