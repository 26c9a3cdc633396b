"""How results, statuses and events look in a terminal (rich) and as CSV."""

from __future__ import annotations

import csv
import io
from typing import Any

from rich.console import Console
from rich.table import Table

from tunecluster.states import TrialState

MAX_HP_COLUMNS = 8


def fmt(value: Any, missing: str = "-") -> str:
    """A value as the tables show it: floats to 4 significant digits, None as ``missing``."""
    if value is None:
        return missing
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


REASON_CHARS = 80  # a failed trial's reason beside it: one short line


def failure_reason(error: str | None, width: int = REASON_CHARS) -> str:
    """A failed trial's error as one short line: the last line of its traceback, less
    the exception's module path, cut to ``width`` characters ("" for none)."""
    lines = [ln.strip() for ln in str(error or "").splitlines() if ln.strip()]
    if not lines:
        return ""
    last = lines[-1]
    head, sep, rest = last.partition(": ")
    if sep and head.replace(".", "").replace("_", "").isalnum() and " " not in head:
        # "tunecluster.errors.TrialFailed: loss is nan" -> "loss is nan"; others keep
        # their short class name ("ValueError: ...")
        last = rest if head.rsplit(".", 1)[-1] in ("TrialFailed", "ModelCodeError") \
            else f"{head.rsplit('.', 1)[-1]}: {rest}"
    return last if len(last) <= width else last[:width - 1] + "…"


def leaderboard_table(results: dict[str, Any], limit: int | None = None) -> Table:
    objective = results["objective"]
    trials = list(results["trials"])
    sign = -1.0 if objective["direction"] == "max" else 1.0
    trials.sort(key=lambda t: (t["score"] is None, sign * (t["score"] or 0.0), t["trial"]))
    hp_names: list[str] = []
    for t in trials:
        for name in t["hyperparameters"]:
            if name not in hp_names:
                hp_names.append(name)
    hp_names = hp_names[:MAX_HP_COLUMNS]
    # A job whose trials span several workers (gangs) shows who trained each one.
    gangs = any(len(t.get("workers") or []) > 1 for t in trials)
    table = Table(title=f"{results['name']} ({results['job']}) — {results['state']}, "
                        f"{objective['name']} ({objective['direction']})")
    shown = trials[:limit] if limit else trials
    failed = any(t.get("error") and t["state"] == TrialState.FAILED for t in shown)
    for col in ("#", "trial", "state", objective["name"], "epochs", "attempts",
                *(["workers"] if gangs else []), *hp_names):
        table.add_column(col, overflow="fold")
    if failed:  # why a FAILED trial failed, on its own row
        table.add_column("reason", overflow="fold", min_width=24)
    for rank, t in enumerate(shown, start=1):
        reason = [failure_reason(t.get("error")) if t["state"] == TrialState.FAILED else ""]
        table.add_row(str(rank), t["trial"], t["state"], fmt(t["score"]), fmt(t["epochs"]),
                      fmt(t["attempts"]), *([gang_text(t)] if gangs else []),
                      *(fmt(t["hyperparameters"].get(n)) for n in hp_names),
                      *(reason if failed else []))
    return table


def gang_text(trial: dict[str, Any]) -> str:
    """Who trained a trial: its workers in rank order (``-`` before it started)."""
    return " + ".join(m["worker"] for m in trial.get("workers") or []) or "-"


def print_results(results: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(soft_wrap=True)
    console.print(leaderboard_table(results))
    best = results.get("best")
    if best:
        console.print(f"best trial {best['trial']}: {results['objective']['name']} = "
                      f"{fmt(best['score'])}  hyperparameters {best['hyperparameters']}")
    if results.get("test"):
        console.print("test split (evaluated once): " + ", ".join(
            f"{k} = {fmt(v)}" for k, v in results["test"].items()))
    if results.get("input"):
        console.print(input_text(results["input"]), markup=False)
    if results.get("artifacts", {}).get("best_model"):
        console.print(f"best model: {results['artifacts']['best_model']}")
    if results.get("error"):
        console.print(f"[red]error:[/red] {results['error']}")


def input_text(info: dict[str, Any]) -> str:
    """One line: what the best model takes and the preprocessing it expects."""
    shape = tuple(info.get("shape") or ())
    text = (f"input: shape {shape} {info.get('dtype', '?')} per example (predict on"
            f" (n, {', '.join(map(str, shape))})); preprocessing: {info.get('preprocessing')};"
            f" in the model: {info.get('in_model')}")
    if info.get("features"):
        text += f"; features in order: {', '.join(map(str, info['features']))}"
    return text


def results_csv(results: dict[str, Any]) -> str:
    hp_names = sorted({n for t in results["trials"] for n in t["hyperparameters"]})
    metric_names = sorted({n for t in results["trials"] for n in t["metrics"]})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["trial", "state", "score", "attempts", "worker", *hp_names,
                     *metric_names, "error"])
    for t in results["trials"]:
        writer.writerow([t["trial"], t["state"], fmt(t["score"]) if t["score"] is not None
                         else "", t["attempts"], t["worker"] or "",
                         *(t["hyperparameters"].get(n, "") for n in hp_names),
                         *(t["metrics"].get(n, "") for n in metric_names), t["error"] or ""])
    return out.getvalue()


def jobs_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="jobs")
    for col in ("job", "state", "trials", "completed", "failed", "running", "best"):
        table.add_column(col)
    for r in rows:
        c = r["counts"]
        table.add_row(r["job"], r["state"], str(sum(c.values())),
                      str(c.get(TrialState.COMPLETED, 0)), str(c.get(TrialState.FAILED, 0)),
                      str(c.get(TrialState.RUNNING, 0)),
                      fmt(r["best"]["score"]) if r.get("best") else "-")
    return table


def event_line(job: str, kind: str, data: dict[str, Any]) -> str:
    trial = data.get("trial", "")
    if kind == "epoch":
        metrics = ", ".join(f"{k}={fmt(v)}" for k, v in sorted(data.get("metrics", {}).items())
                            if k.startswith("val_"))
        return f"trial {trial} epoch {data.get('epoch')}: {metrics}"
    if kind == "job_state":
        error = f" ({data['error']})" if data.get("error") else ""
        return f"job {job} -> {data.get('state')}{error}"
    # a gang's members (trial_started's "workers") read as "w1 + w2", rank 0 first
    details = ", ".join(f"{k}={' + '.join(map(str, v)) if isinstance(v, list) else fmt(v)}"
                        for k, v in data.items() if k not in ("trial",) and v is not None)
    return f"{kind.replace('_', ' ')} {trial} {details}".strip()
