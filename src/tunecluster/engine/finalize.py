"""Finishing a job: the best trial's model scored once on the test split, then exported.

Idempotent: a chief restarted in the middle redoes the whole step, which writes the
same files and the same record. Files are read from and written to the job's artifact
store (a directory or an object store, ``artifact_store``), each write atomic.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from tunecluster.artifact_store import ArtifactStore, open_store
from tunecluster.artifacts import BEST_MODEL, RESULTS, trial_model
from tunecluster.artifacts import job_dir as artifacts_job_dir
from tunecluster.data import load_splits
from tunecluster.errors import ArtifactsError, StoreError, one_line
from tunecluster.spec.models import JobSpec
from tunecluster.states import JobState
from tunecluster.store import Store, codec, downloads
from tunecluster.store.connection import retryable
from tunecluster.store.fence import Fence, StaleState, Writes
from tunecluster.store.results import build_results, leaderboard
from tunecluster.testhook import stop_here

log = logging.getLogger("tunecluster.chief")

# A finalize that failed on the artifacts store (or other I/O: a full disk, a bucket
# gone) is tried this many times in all, TUNECLUSTER_FINALIZE_ATTEMPTS, 2, 4, 8, ... s
# apart (at most a minute), then the job fails with the reason. Redis outages are not
# counted: the chief's loop waits those out, as for every other step.
FINALIZE_ATTEMPTS_ENV = "TUNECLUSTER_FINALIZE_ATTEMPTS"
FINALIZE_ATTEMPTS = 5


class FinalizeRetry:
    """When a job's failed finalize may run again, and whether it may at all."""

    def __init__(self) -> None:
        self.failed = 0
        self.not_before = 0.0

    @staticmethod
    def attempts() -> int:
        text = os.environ.get(FINALIZE_ATTEMPTS_ENV, "").strip()
        return max(1, int(text)) if text.isdigit() else FINALIZE_ATTEMPTS

    def due(self) -> bool:
        return time.monotonic() >= self.not_before

    def again(self, job: str, exc: BaseException) -> bool:
        """After a failed finalize of ``job``: True (and logged) when it is retried
        later; False when it is not (not I/O, or the attempts are spent)."""
        if not retryable(exc):
            return False
        self.failed += 1
        if self.failed >= self.attempts():
            return False
        delay = min(60, 2 ** self.failed)
        self.not_before = time.monotonic() + delay
        log.warning("finalizing job %s failed on storage or I/O, not Redis (attempt %d of"
                    " %d; again in %ds): %s", job, self.failed, self.attempts(), delay,
                    one_line(exc))
        return True


def is_redis_outage(exc: BaseException) -> bool:
    """Redis unreachable or restarting: the chief's loop backs off and retries."""
    return isinstance(exc, redis.RedisError) and retryable(exc)


def finalize(store: Store, job: str, spec: JobSpec, artifacts_root: Path, state: str,
             resolve: Any = str, error: str | None = None,
             fence: Fence = Fence.NONE) -> dict[str, Any]:
    """Write ``final`` (test metrics, artifacts) and ``results.json``; set the final state.

    Safe against two chiefs: the files are replaced atomically with the same content,
    and the record (``final`` and the state, in one step) is written only under
    ``fence``, so a deposed chief's finalize writes nothing to Redis."""
    stop_here("finalize")  # a test hook, inert unless set (tunecluster/testhook.py)
    artifacts = open_store(artifacts_root)
    job_dir = artifacts_job_dir(artifacts_root, job)
    job_dir.mkdir(parents=True, exist_ok=True)
    job_key = artifacts.key(job_dir)
    draft = build_results(store.jobs, job)
    ranked = leaderboard(draft["trials"], draft["objective"]["direction"])
    final: dict[str, Any] = {"test": None, "artifacts": {"dir": artifacts.url(job_key)}}
    if state == JobState.COMPLETED and not ranked:
        state = JobState.FAILED
        error = error or "no trial completed: " + summarize_errors(draft["trials"])
    # trials that trained no model (a black-box run_trial): their record says model ""
    modelless = {row["trial"] for row in ranked if row.get("model") == ""}
    if state == JobState.COMPLETED and ranked[0]["trial"] not in modelless:
        best = ranked[0]
        source = artifacts.key(trial_model(artifacts_root, job, best["trial"],
                                           best.get("model")))
        with artifacts.local_copy(source) as path:
            if path is None:  # missing for good (not an outage): the job fails, once
                raise ArtifactsError(f"the best trial's model is not at"
                                     f" {artifacts.url(source)}")
            if spec.data is not None:  # no data, no test split to score on
                final["test"] = evaluate_on_test(spec, path, resolve, {
                    **(best.get("hyperparameters") or {}), **(best.get("tuner") or {})})
        artifacts.copy(source, f"{job_key}/{BEST_MODEL}")
        final["artifacts"]["best_model"] = artifacts.url(f"{job_key}/{BEST_MODEL}")
    final["artifacts"]["results"] = artifacts.url(f"{job_key}/{RESULTS}")
    # results.json is written before the record turns final (a reader that sees the
    # final state finds the file), from the record as it will then read.
    fields = {"error": error} if error else {}
    _still_finalizing(store, job)
    results = build_results(store.jobs, job)
    results["test"] = final["test"]
    results["artifacts"] = final["artifacts"]
    results["state"] = state
    if error:
        results["error"] = error
    # No NaN/Infinity in a file other tools parse as JSON: non-finite numbers are null.
    artifacts.put_bytes(f"{job_key}/{RESULTS}", json.dumps(
        codec.finite(results), indent=2, default=str, allow_nan=False).encode())
    # Published for clients that cannot read the artifacts store; put in place (renamed,
    # indexed) in the same fenced step that makes the job final.
    publication = _publish(store, job, artifacts_root, state,
                           [row for row in ranked if row["trial"] not in modelless],
                           fence, best_model="best_model" in final["artifacts"])
    writes = store.jobs.stage_publication(Writes(), publication)
    store.jobs.stage_final(writes, job, codec.dumps(final))
    try:
        store.jobs.stage_state(writes, job, state, **fields)
    except StoreError:  # refused as a move from another state than finalizing
        _still_finalizing(store, job)
        raise
    store.apply(writes, fence)
    return results


def _still_finalizing(store: Store, job: str) -> None:
    """The chief moved the job to ``finalizing`` before this finalize; a job that is no
    longer there means Redis lost that write (restarted without it, or restored from an
    older copy): ``StaleState``, so that the chief reloads from Redis rather than end a
    job from what Redis no longer holds (a rollback mid-finalize failed a job so)."""
    [now] = store.jobs.field([job], "state")
    if now != JobState.FINALIZING:
        raise StaleState(f"job {job} is {now}, not finalizing: Redis lost the chief's"
                         " last writes")


def _publish(store: Store, job: str, root: Path, state: str, ranked: list[dict[str, Any]],
             fence: Fence, best_model: bool = True) -> downloads.Publication:
    """results.json, the best model and the top-k trials' models (store/downloads.py);
    ``ranked``: the trials with a model."""
    job_dir = artifacts_job_dir(root, job)
    files = [(RESULTS, job_dir / RESULTS)]
    extra: dict[str, dict[str, Any]] = {}
    if state == JobState.COMPLETED and best_model:
        files.append((BEST_MODEL, job_dir / BEST_MODEL))
        extra[BEST_MODEL] = {"trial": ranked[0]["trial"]}
    for rank, row in enumerate(ranked[:downloads.download_top_k()], 1):
        name = downloads.trial_name(row["trial"])
        files.append((name, trial_model(root, job, row["trial"], row.get("model"))))
        extra[name] = {"trial": row["trial"], "rank": rank, "score": row["score"]}
    artifacts = open_store(root)
    if not artifacts.remote:
        return downloads.publish(store, job, root, files, fence, extra)
    return _publish_remote(store, job, artifacts, files, fence, extra)


def _publish_remote(store: Store, job: str, artifacts: ArtifactStore,
                    files: list[tuple[str, Path]], fence: Fence,
                    extra: dict[str, dict[str, Any]]) -> downloads.Publication:
    """Publishing from an object store: the files are downloaded to a scratch directory
    laid out as the store (one at a time would do; a job has at most top-k + 2), and
    the index names where they are in the store."""
    keys = [(name, artifacts.key(path)) for name, path in files]
    artifacts.local.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".publish-", dir=artifacts.local) as tmp:
        scratch = Path(tmp)
        for _name, key in keys:
            artifacts.get_file(key, scratch / key)
        pub = downloads.publish(store, job, scratch, [(n, scratch / k) for n, k in keys],
                                fence, extra)
    for name, key in keys:
        pub.index[name].update(path=artifacts.url(key), rel=key)
    return pub


def evaluate_on_test(spec: JobSpec, model_path: Path, resolve: Any = str,
                     values: dict[str, Any] | None = None) -> dict[str, float]:
    """The only place the test split is used: one evaluation of the chosen model.

    It runs in the chief's evaluation process (``evaluator.py``), where Keras is warm,
    so the chief never imports TensorFlow; the job's data files are resolved here (an
    uploaded file is fetched from Redis into this host's cache) and handed over."""
    from tunecluster.engine.evaluator import evaluator
    from tunecluster.spec import spec_to_json

    files = {p: resolve(p) for p in spec.data_files if p}
    return evaluator().evaluate(spec_to_json(spec), model_path, files, values)


def score_on_test(spec: JobSpec, model_path: Path, resolve: Any = str,
                  values: dict[str, Any] | None = None) -> dict[str, float]:
    """Load the model and score it on the test split (in the evaluation process). A
    module's model Keras cannot bring back from its file (a ``Lambda`` layer, a model
    subclass, saved as weights only) is rebuilt by the module's ``build_model`` with the
    trial's ``values`` and given its weights, as KerasTuner brings models back."""
    from tunecluster.models import user_objects
    from tunecluster.models.saved import load_model, weights_only

    splits = load_splits(spec.data, spec.model.task, resolve)
    objects = user_objects(spec)  # None where the job's code may not run here
    rebuildable = objects is not None and values is not None
    if rebuildable and weights_only(model_path):
        model = _rebuilt(spec, model_path, values or {}, splits)
    else:
        try:
            model = load_model(model_path, custom_objects=objects)
        except (TypeError, ValueError) as exc:  # Keras refused to deserialize it
            if not rebuildable:
                raise
            log.info("rebuilding the best model with %s: %s", spec.model.function,
                     one_line(exc))
            model = _rebuilt(spec, model_path, values or {}, splits)
    scores = model.evaluate(splits.x_test, splits.y_test, sample_weight=splits.w_test,
                            batch_size=spec.train.batch_size,
                            verbose=0, return_dict=True)
    return {k: float(v) for k, v in scores.items()}


def _rebuilt(spec: JobSpec, model_path: Path, values: dict[str, Any], splits: Any) -> Any:
    from tunecluster.models.custom import load_build_function
    from tunecluster.models.saved import load_model
    from tunecluster.models.training_data import TrainingData

    assert spec.model.source is not None
    build = load_build_function(spec.model.source, spec.model.function,
                                spec.model.module or "model.py")
    return load_model(model_path, build=build, values=values,
                      data=TrainingData.from_splits(splits))


def summarize_errors(trials: list[dict[str, Any]]) -> str:
    """'3x ValueError: ...; 1x worker lost' — the distinct errors, most frequent first."""
    counts: dict[str, int] = {}
    for t in trials:
        if t.get("error"):
            line = str(t["error"]).strip().splitlines()[-1][:200]
            counts[line] = counts.get(line, 0) + 1
    if not counts:
        return "no error recorded"
    return "; ".join(f"{n}x {msg}" for msg, n in sorted(counts.items(), key=lambda kv: -kv[1]))

