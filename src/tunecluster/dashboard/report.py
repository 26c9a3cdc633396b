"""``tunecluster report JOB -o report.html``: one self-contained HTML file.

The job's summary, best trial, trial table and the dashboard's charts (the same
``plots`` figures), with plotly.js and the data inline: no request leaves the file when
it is opened, so it works offline and as an attachment (a pull request, an email).
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

from tunecluster.dashboard.app import plotly_js
from tunecluster.render import fmt, gang_text

CHARTS = (("history", "Optimization history"), ("curves", "Learning curves"),
          ("parallel", "Parallel coordinates"), ("slices", "Slice plots"),
          ("importance", "Hyperparameter importance"))


def _fmt(value: Any) -> str:
    return fmt(value, missing="–")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(value, default=str).replace("</", "<\\/").replace("<!--", "<\\!--")


def render_report(doc: dict[str, Any], generated: str | None = None) -> str:
    """The HTML text of the report of a job document (``data.Reader.job``)."""
    esc = html.escape
    s = doc["summary"]
    objective = doc["objective"]
    best = doc.get("best") or {}
    names: list[str] = []
    for t in doc["trials"]:
        names += [n for n in t["hyperparameters"] if n not in names]
    sign = -1 if objective["direction"] == "max" else 1
    trials = sorted(doc["trials"], key=lambda t: (t["score"] is None,
                                                   sign * (t["score"] or 0), t["trial"]))
    rows = "".join(
        "<tr{cls}><td>{trial}</td><td>{state}</td><td>{score}</td><td>{epochs}</td>"
        "<td>{attempts}</td><td>{worker}</td>{hps}<td class=err>{error}</td></tr>".format(
            cls=' class="best"' if t["trial"] == best.get("trial") else "",
            trial=esc(t["trial"]), state=esc(t["state"]), score=_fmt(t["score"]),
            epochs=t["epochs"], attempts=t["attempts"],
            worker=esc(gang_text(t) if len(t.get("workers") or []) > 1 else t["worker"] or "–"),
            hps="".join(f"<td>{esc(_fmt(t['hyperparameters'].get(n)))}</td>" for n in names),
            error=esc((t["error"] or "")[:200]))
        for t in trials)
    test = doc.get("test") or {}
    importance = doc.get("importance") or {}
    charts = "".join(f'<section><h2>{esc(title)}</h2><div class="chart" id="chart-{key}">'
                     "</div></section>" for key, title in CHARTS)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(s["counts"].items()))
    summary_rows = [
        ("State", s["state"]), ("Objective", f"{objective['name']} ({objective['direction']})"),
        ("Trials", f"{s['done']}/{s['total']} ended ({counts})"),
        ("Best score", _fmt(s["best"])), ("Best trial", s["best_trial"] or "–"),
        ("Best hyperparameters", json.dumps(best.get("hyperparameters") or {})),
        ("Test split", ", ".join(f"{k} = {_fmt(v)}" for k, v in test.items()) or "–"),
        ("Elapsed", _duration(s["elapsed_s"])), ("Scheduler", s["scheduler"]),
        ("Algorithm", (doc.get("spec", {}).get("search") or {}).get("algorithm", "–")),
        ("Importance method", importance.get("method", "–")),
    ]
    if s.get("error"):
        summary_rows.append(("Error", s["error"]))
    summary = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>"
                      for k, v in summary_rows)
    return REPORT.format(
        title=esc(f"{doc['name']} ({doc['job']})"), generated=esc(generated or time.strftime(
            "%Y-%m-%d %H:%M:%S UTC", time.gmtime())),
        summary=summary, charts=charts,
        head="".join(f"<th>{esc(h)}</th>" for h in ("trial", "state", objective["name"],
                                                   "epochs", "attempts", "worker", *names,
                                                   "error")),
        rows=rows, plotly=plotly_js().read_text(encoding="utf-8"),
        figures=_script_json(doc["figures"]))


def write_report(redis_url: str, job: str, output: str | Path) -> Path:
    """Read the job from Redis and write its report to ``output``; returns the path."""
    from tunecluster.dashboard.data import Reader
    from tunecluster.store import Store

    store = Store.from_url(redis_url, retries=1)
    doc = Reader(store).job(job)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(render_report(doc), encoding="utf-8")
    tmp.replace(path)
    return path


REPORT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · tunecluster report</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #222; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 16px; margin-top: 28px; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 3px 8px; border-bottom: 1px solid #ddd;
  text-align: left; vertical-align: top; }}
table.summary th {{ width: 180px; color: #555; font-weight: 600; }}
tr.best td {{ background: #fff3d6; font-weight: 600; }} td.err {{ color: #a00; font-size: 12px; }}
.chart {{ max-width: 1100px; }} .muted {{ color: #777; }}
</style>
<script>{plotly}</script>
</head><body>
<h1>{title}</h1>
<p class="muted">tunecluster report, generated {generated}</p>
<table class="summary">{summary}</table>
{charts}
<section><h2>Trials</h2>
<table class="trials"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></section>
<script>
const FIGURES = {figures};
for (const [key, fig] of Object.entries(FIGURES)) {{
  const div = document.getElementById("chart-" + key);
  if (div) Plotly.newPlot(div, fig.data, fig.layout, {{displaylogo: false, responsive: true}});
}}
</script>
</body></html>
"""
