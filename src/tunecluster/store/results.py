"""The results document of a job (``results --json``, ``results.json``), built from Redis.

Same shape whatever the scheduler or the job's state; while a job runs it is the
current leaderboard.
"""

from __future__ import annotations

from typing import Any

from tunecluster.errors import StoreError
from tunecluster.states import TrialState
from tunecluster.store import codec
from tunecluster.store.jobs import ACTIVE_STATES, JobStore
from tunecluster.store.queue import gang_members
from tunecluster.store.records import MALFORMED, MalformedRecord, int_or

FIELDS = ("job", "name", "state", "objective", "best", "test", "trials", "artifacts")
# a job's row in ``list`` and ``status`` (the Client's ``Job.status()``)
SUMMARY_FIELDS = ("job", "name", "state", "objective", "best", "counts", "error", "waiting",
                  "created", "finished")


def build_results(jobs: JobStore, job: str) -> dict[str, Any]:
    record = jobs.get(job)
    name, direction = record.objective
    rows = jobs.trials(job)
    trials = [_trial_row(row) for row in rows]
    ranked = leaderboard(trials, direction)
    best = ranked[0] if ranked else None
    # what each output of the best model stands for (the labels before their encoding)
    best_row = next((r for r in rows if best and r.get("trial") == best["trial"]), {})
    classes = _json_field(best_row, "result").get("classes")
    # what the best model takes and the preprocessing it expects (worker/trial.py)
    model_input = _json_field(best_row, "result").get("input")
    final = _json_field(record.fields, "final")
    return {
        "job": job,
        "name": record.name,
        "state": record.state,
        "scheduler": record.fields.get("scheduler", "native"),
        "objective": {"name": name, "direction": direction},
        "best": None if best is None else {
            "trial": best["trial"],
            "hyperparameters": best["hyperparameters"],
            "score": best["score"],
            "metrics": best["metrics"],
        },
        "test": codec.finite(final.get("test")),  # a side metric may be inf: null
        "classes": classes if isinstance(classes, list) and classes else None,
        "input": model_input if isinstance(model_input, dict) and model_input else None,
        "trials": trials,
        # a list objective: the trials no other completed trial beats on every part
        "pareto": pareto_front(trials, objective_parts(record.search.get("objective"))),
        "counts": _counts(trials),
        "artifacts": final.get("artifacts", {}),
        "error": record.fields.get("error") or None,
        # why the job's trials cannot start now (the chief's word: too few workers alive
        # for its gang trials), None when nothing holds it back
        "waiting": (record.fields.get("waiting") or None) if record.state in ACTIVE_STATES
        else None,
        "created": record.created,
        "finished": record.finished,
    }


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """A job's summary row, from its results document."""
    return {k: results.get(k) for k in SUMMARY_FIELDS}


def job_summaries(jobs: JobStore, limit: int = 100) -> list[dict[str, Any]]:
    """The rows of ``list`` and ``status``, newest first. A job whose record cannot be
    read (or that the index lists without a record) is one row in state ``malformed``
    with the reason as its error; the others are listed as usual."""
    rows = []
    for job in jobs.all(limit):
        try:
            rows.append(summarize(build_results(jobs, job)))
        except MalformedRecord as exc:
            rows.append(malformed_summary(job, str(exc)))
        except StoreError as exc:
            rows.append(malformed_summary(job, f"job {job!r} is listed but {exc}"))
    return rows


def malformed_summary(job: str, reason: str) -> dict[str, Any]:
    """The summary row of a job that cannot be read: its id and why."""
    return {**dict.fromkeys(SUMMARY_FIELDS), "job": job, "name": job, "state": MALFORMED,
            "objective": {"name": "?", "direction": "min"}, "counts": {}, "error": reason}


def leaderboard(trials: list[dict[str, Any]], direction: str) -> list[dict[str, Any]]:
    """COMPLETED trials with a score, best first (ties: earlier trial first)."""
    scored = [t for t in trials if t["state"] == TrialState.COMPLETED and t["score"] is not None]
    sign = -1.0 if direction == "max" else 1.0
    return sorted(scored, key=lambda t: (sign * t["score"], t["trial"]))


def objective_parts(objective: Any) -> list[tuple[str, str]] | None:
    """The parts of a list objective as the spec gives them (name, direction); None for
    one objective, or parts that do not read as such."""
    parts = objective.get("parts") if isinstance(objective, dict) else None
    if not isinstance(parts, list) or len(parts) < 2:
        return None
    out = []
    for part in parts:
        if not isinstance(part, dict) or not isinstance(part.get("name"), str):
            return None
        out.append((part["name"], "max" if part.get("direction") == "max" else "min"))
    return out


def pareto_front(trials: list[dict[str, Any]],
                 parts: list[tuple[str, str]] | None) -> list[str] | None:
    """Ids of the completed trials that no other completed trial dominates on the
    objective's ``parts`` (no worse on each, better on one), in trial order; None when
    the objective has no parts. A trial without a finite value of each part is not on
    the front and dominates nothing."""
    if not parts:
        return None
    points = []
    for trial in trials:
        metrics = trial.get("metrics") or {}
        values = [codec.finite_or_none(metrics.get(name)) for name, _ in parts]
        if trial["state"] == TrialState.COMPLETED and None not in values:
            # minimized on every part: a part to maximize is negated
            points.append((trial["trial"], [-v if d == "max" else v
                                            for v, (_, d) in zip(values, parts, strict=True)]))

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and a != b

    return [tid for tid, p in points if not any(dominates(q, p) for _, q in points)]


def _trial_row(row: dict[str, str]) -> dict[str, Any]:
    values = _json_field(row, "values")
    return {
        "trial": row.get("trial", "?"),
        "state": row.get("state", "UNKNOWN"),
        "hyperparameters": {k: v for k, v in values.items() if not k.startswith("tuner/")},
        "score": codec.finite_or_none(row.get("score")),
        "metrics": _json_field(row, "metrics"),
        # numbers decoded leniently: a garbled one reads as absent, not as an error
        "best_epoch": _count(row.get("best_epoch")),
        "epochs": _count(row.get("last_epoch")) or 0,
        "attempts": _count(row.get("attempts")) or 0,
        "worker": row.get("worker") or None,
        # who trained it (the last attempt): a gang's members in rank order, else its worker
        "workers": _workers(row),
        "error": row.get("error") or None,
        "resumed_from_epoch": _count(row.get("resumed_from_epoch")) or 0,
        "tuner": {k: v for k, v in values.items() if k.startswith("tuner/")} or None,
        # when (Redis time, ms since the epoch) the chief created it, its last attempt
        # was claimed, and it ended; None while not yet (an ASHA trial that stops at its
        # rung and the trial that continues it are one configuration's pause and resume)
        "times": {"created": _count(row.get("created")), "claimed": _count(row.get("started")),
                  "ended": _count(row.get("finished"))},
        "overhead": _json_field(row, "overhead") or None,
        # the attempt's model file, relative to the artifacts root (None: Ray trials and
        # older records keep it at <trial>/model.keras)
        # "": the trial trained no model (a black-box run_trial); None: not recorded
        "model": "" if row.get("model") == "" else row.get("model") or None,
    }


def _count(value: str | None) -> int | None:
    """A count field of a trial's record; None when absent, garbled or negative."""
    number = int_or(value, -1)
    return number if number >= 0 else None


def _workers(row: dict[str, str]) -> list[dict[str, Any]]:
    members = gang_members(row.get("gang"))
    if members:
        return [{"worker": m["worker"], "rank": rank, "address": m["address"]}
                for rank, m in enumerate(members)]
    return [{"worker": row["worker"], "rank": 0}] if row.get("worker") else []


def _json_field(row: dict[str, str], name: str) -> dict[str, Any]:
    try:
        value = codec.loads(row.get(name) or "{}", name)
    except Exception:
        return {}
    if not isinstance(value, dict):
        return {}
    return codec.finite(value)  # non-finite metrics of older records: null, as in JSON


def _counts(trials: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    return counts
