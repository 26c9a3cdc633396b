"""The Ray Tune trainable: the same trial runner as a native worker's trial process.

``TrialTrainable`` runs ``worker.trial.run_trial`` for one trial in a thread of the Ray
actor and hands each finished epoch to Tune as one ``step()`` result. The thread waits
for Tune's answer before it starts the next epoch, so a trial that Ray's scheduler
(ASHA, median) stops has run exactly the epochs Tune saw; it is then told to stop,
keeps the weights of its best epoch and saves ``model.keras`` like any trial (Tune
waits for ``cleanup()`` / ``reset_config()``, which join the thread). A plain function
trainable cannot do that: Tune ends it by raising ``SystemExit`` inside ``report()``
and may kill the actor before the model is saved.

With ``reuse_actors=True`` one actor runs trial after trial (``reset_config``), and the
job's ``JobRuntime`` (data splits, ``adapt()`` statistics, model code, ``tf.data``
pipelines) stays in ``_RUNTIMES`` of the actor's process, as in a native trial process;
like one, an actor is replaced after ``TRIALS_PER_CHILD`` trials or past
``CHILD_MAX_RSS_MB`` (``reset_config`` declines, Tune starts a fresh actor).

No Redis here: the driver (the chief's ``RayJobRunner``) records every result. Data
files uploaded with the job travel through Ray's object store.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import threading
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ray import tune

from tunecluster import defaults
from tunecluster.worker.child import rss_mb

# Keys of a Ray trial's config (set by the searcher) and of the results (read by the driver).
TRIAL = "tc_trial"  # the tunecluster trial id
VALUES = "tc_values"  # its hyperparameter values, as JSON text
EPOCH = "epoch"  # Ray schedulers' time attribute
FINAL = "tc_final"  # 1 in the last result of a trial that ran to its end
RESULT = "tc_result"  # that trial's TrialResult (JSON text, without the epoch rows)
ERROR = "tc_error"  # the error of a trial that failed (model code raised, NaN loss...)
TRACEBACK = "tc_traceback"
METRICS = "tc_metrics"  # an epoch's Keras metrics (JSON text): what the driver records

KEEP_JOBS = 2  # job runtimes kept warm per actor process
JOIN_S = float(os.environ.get("TUNECLUSTER_RAY_STOP_WAIT_S", "120"))
ATTEMPT_FILE = ".ray-attempt"

_RUNTIMES: OrderedDict[str, Any] = OrderedDict()  # job id -> JobRuntime, per process
_RUNTIMES_LOCK = threading.Lock()


def job_context(job: str, spec_json: str, space: dict[str, Any], artifacts_root: str,
                files: dict[str, bytes]) -> dict[str, Any]:
    """What every trial of a job needs (passed once through the object store)."""
    return {"job": job, "spec": spec_json, "space": space, "artifacts": artifacts_root,
            "files": files}


def runtime(ctx: dict[str, Any]) -> Any:
    """The job's JobRuntime in this process: prepared once, then reused trial after trial."""
    from tunecluster.errors import TrialFailed
    from tunecluster.spec import spec_from_json
    from tunecluster.worker.runtime import JobRuntime

    job = ctx["job"]
    with _RUNTIMES_LOCK:
        if job in _RUNTIMES:
            _RUNTIMES.move_to_end(job)
            return _RUNTIMES[job]
        spec = spec_from_json(ctx["spec"])
        if not spec.model.is_builtin and os.environ.get(defaults.ALLOW_CODE_UPLOAD_ENV,
                                                        "1") == "0":
            raise TrialFailed("this Ray worker refuses jobs that carry model code"
                              f" ({defaults.ALLOW_CODE_UPLOAD_ENV}=0)")
        rt = JobRuntime.prepare(job, spec, ctx["space"], ctx["artifacts"],
                                _resolver(ctx["artifacts"], job, ctx.get("files") or {}))
        _RUNTIMES[job] = rt
        while len(_RUNTIMES) > KEEP_JOBS:
            _RUNTIMES.popitem(last=False)
        return rt


def _resolver(root: str, job: str, files: dict[str, bytes]) -> Any:
    """Uploaded files land where ``artifacts.file_resolver`` puts them; others pass through."""
    from tunecluster.artifacts import data_path

    cache = Path(root) / ".cache" / job / "files"

    def resolve(path: str) -> str:
        if path not in files:
            return data_path(path)  # the operator's data root only (artifacts.data_path)
        local = cache / hashlib.sha256(path.encode()).hexdigest()[:12] / Path(path).name
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.{os.getpid()}")
            tmp.write_bytes(files[path])
            os.replace(tmp, local)
        return str(local)

    return resolve


def next_attempt(trial_dir: Path) -> int:
    """Count this start of the trial (1 = first). A retry resumes from its checkpoint."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    marker = trial_dir / ATTEMPT_FILE
    try:
        attempt = int(marker.read_text().strip() or 0) + 1
    except (OSError, ValueError):
        attempt = 1
    marker.write_text(str(attempt))
    return attempt


class _QueueReporter:
    """run_trial's reporter: hands the epoch to step() and waits for Tune's answer."""

    def __init__(self, results: queue.Queue, answers: queue.Queue) -> None:
        self.results, self.answers = results, answers

    def epoch(self, epoch: int, metrics: Any) -> bool:
        self.results.put(("epoch", int(epoch), {k: float(v) for k, v in metrics.items()}))
        return self.answers.get() == "stop"


class TrialTrainable(tune.Trainable):
    """One tunecluster trial per Ray trial; the actor is reused across trials."""

    def setup(self, config: dict[str, Any], job: dict[str, Any] | None = None) -> None:
        assert job is not None, "wrap with tune.with_parameters(TrialTrainable, job=...)"
        self._ctx = job
        self._objective = json.loads(job["spec"])["search"]["objective"]["name"]
        self._thread: threading.Thread | None = None
        self._trials = 1  # trials this actor ran
        self._begin(config)

    def _begin(self, config: dict[str, Any]) -> None:
        self._results: queue.Queue = queue.Queue()
        self._answers: queue.Queue = queue.Queue()
        self._waiting = False  # the thread waits for an answer to its last epoch
        self._last: dict[str, Any] | None = None
        trial, values = config[TRIAL], json.loads(config[VALUES])
        self._thread = threading.Thread(target=self._run,
                                        args=(trial, values, self._results, self._answers),
                                        name=f"trial-{trial}", daemon=True)
        self._thread.start()

    def _run(self, trial: str, values: dict[str, Any], results: queue.Queue,
             answers: queue.Queue) -> None:
        from tunecluster.errors import TrialFailed
        from tunecluster.worker.trial import TrialRequest, run_trial

        try:
            rt = runtime(self._ctx)
            attempt = next_attempt(rt.trial_dir(trial))
            result = run_trial(rt, TrialRequest(trial, values, attempt),
                               _QueueReporter(results, answers))
            results.put(("done", {k: v for k, v in result.to_json().items()
                                        if k != "epochs"}))
        except BaseException as exc:  # noqa: BLE001 - the trial's failure is the trial's
            kind = "" if isinstance(exc, TrialFailed) else f"{type(exc).__name__}: "
            message = kind + (str(exc).strip().splitlines() or [""])[0][:500]
            results.put(("error", message, traceback.format_exc()[-4000:]))

    def step(self) -> dict[str, Any]:
        if self._waiting:
            self._waiting = False
            self._answers.put("go")
        item = self._results.get()
        if item[0] == "epoch":
            _, epoch, metrics = item
            self._waiting = True
            self._last = {**metrics, EPOCH: epoch, METRICS: json.dumps(metrics)}
            return dict(self._last)
        # The last result repeats the last epoch (so schedulers see nothing new) and
        # carries the trial's outcome.
        last = {k: v for k, v in (self._last or {EPOCH: 0, self._objective: math.nan}).items()
                if k != METRICS}
        if item[0] == "done":
            return {**last, FINAL: 1, RESULT: json.dumps(item[1], default=str), "done": True}
        return {**last, FINAL: 1, ERROR: item[1], TRACEBACK: item[2], "done": True}

    def _finish_thread(self, wait_always: bool) -> bool:
        """Tell the trial to stop after its current epoch and wait for it to end.

        A trial that waits for the answer to an epoch (Tune stopped it on that epoch's
        result) ends at once: it keeps its best weights and saves its model, which the
        job may still export. Otherwise (the run is being cancelled or ended) the actor
        waits only when it must run another trial next (``wait_always``).
        """
        thread = self._thread
        if thread is None or not thread.is_alive():
            return True
        self._answers.put("stop")
        if self._waiting or wait_always:
            thread.join(JOIN_S)
        return not thread.is_alive()

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        if not self._finish_thread(wait_always=True):
            return False  # Tune starts a fresh actor instead
        self._trials += 1
        if self._trials > defaults.TRIALS_PER_CHILD or rss_mb() > defaults.CHILD_MAX_RSS_MB:
            return False  # recycled like a native trial process: TensorFlow leaks per model
        self._begin(new_config)
        return True

    def cleanup(self) -> None:
        self._finish_thread(wait_always=False)

    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, Any]:
        # Trials checkpoint themselves (last epoch) in their artifacts directory.
        return {}

    def load_checkpoint(self, checkpoint: Any) -> None:
        pass
