"""A search's progress where the user is: a live trial table and progress bar in
Jupyter, KerasTuner-like lines in a terminal, nothing for ``verbose=0``.

``follow(job, view)`` drives a view from the job's event stream and, between events,
from the results document once a second (epochs do not make events), until the job is
final. The notebook view is one IPython display updated in place (``display_id``):
no widget library, so it renders in Jupyter, JupyterLab, VS Code and in an executed
notebook file alike, with a plain-text twin for frontends without HTML.

Ctrl-C (a terminal's, a notebook's stop button: SIGINT either way) while a job is
followed raises ``KeyboardInterrupt`` out of ``follow`` even when Python lost the one
the press raised: see ``_Presses``.
"""

from __future__ import annotations

import html
import signal
import sys
import threading
import time
from typing import Any, Protocol

from tunecluster.api.client import Job
from tunecluster.render import failure_reason, fmt
from tunecluster.states import TrialState
from tunecluster.store.events import Event

_DONE = (TrialState.COMPLETED, TrialState.FAILED, TrialState.CANCELLED, TrialState.STOPPED)
_TABLE_ROWS = 20  # the notebook table shows the best and the running trials, not 1,000 rows


class View(Protocol):
    def start(self, job: Job, space_size: int, objective: str, direction: str) -> None: ...

    def event(self, event: Event, results: dict[str, Any], elapsed: float) -> None: ...

    def refresh(self, results: dict[str, Any], elapsed: float) -> None: ...

    def finish(self, results: dict[str, Any], elapsed: float) -> None: ...


def in_notebook() -> bool:
    """True inside a Jupyter kernel (not the IPython terminal, not plain Python)."""
    if "IPython" not in sys.modules:  # a kernel has imported it long before
        return False
    try:
        from IPython import get_ipython

        ip = get_ipython()
    except Exception:  # noqa: BLE001 - no IPython, no notebook
        return False
    return ip is not None and hasattr(ip, "kernel")


def view_for(verbose: int, total: int | None) -> View | None:
    """The view for KerasTuner's ``verbose``: None for 0, else the notebook's or the
    terminal's."""
    if not verbose:
        return None
    return NotebookView(total) if in_notebook() else TerminalView()


def follow(job: Job, view: View | None, after: str = "0-0", *, space_size: int = 0,
           objective: str = "", direction: str = "", poll_s: float = 1.0) -> None:
    """Show ``job`` in ``view`` from event ``after`` on, until the job is final; a
    Ctrl-C meanwhile raises ``KeyboardInterrupt``, one Python dropped too (``_Presses``)."""
    from tunecluster.store import FINAL_STATES

    store = job.client.store
    with _Presses() as presses:
        if view is None:  # the tuner reports the job's end
            while job.state not in FINAL_STATES:
                presses.check()
                events = store.events.read(job.id, after, block_ms=int(poll_s * 1000),
                                           count=500)
                after = events[-1].id if events else after
            presses.check()
            return
        started = time.monotonic()
        view.start(job, space_size, objective, direction)
        while True:
            presses.check()
            final = job.state in FINAL_STATES  # read before the events: none is missed
            events = store.events.read(job.id, after, block_ms=None if final
                                       else int(poll_s * 1000), count=500)
            results = job.results()
            elapsed = time.monotonic() - started
            for event in events:
                after = event.id
                view.event(event, results, elapsed)
            view.refresh(results, elapsed)
            if final and not events:
                view.finish(results, elapsed)
                presses.check()
                return


class _Presses:
    """Ctrl-C presses while a job is followed, kept where Python drops them.

    Python runs a signal handler between two bytecodes of whatever the main thread
    runs, a finalizer (``__del__``, a weakref callback) included: the garbage
    collector runs those at any allocation (TensorFlow's objects from the search
    space's discovery, redis-py's connections). A ``KeyboardInterrupt`` raised there
    is printed ("Exception ignored in") and dropped, and the search went on as if
    Ctrl-C had not been pressed. So while it follows a job, SIGINT's handler, where
    it is Python's own (``default_int_handler``: a terminal, a Jupyter kernel's
    cell), notes the press before it raises, and ``check()``, between two reads of
    the job, raises it again. Another handler (the user's own, or SIGINT ignored) is
    left alone."""

    def __init__(self) -> None:
        self.pressed = False
        self._installed = False

    def __enter__(self) -> _Presses:
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._press)
            self._installed = True
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _press(self, signum: int, frame: Any) -> None:
        self.pressed = True  # first: what follows may be dropped
        signal.default_int_handler(signum, frame)

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` for a press whose own was dropped."""
        if self.pressed:
            self.pressed = False
            raise KeyboardInterrupt


class TerminalView:
    """KerasTuner's lines: one block per finished trial, the best so far, the time."""

    def start(self, job: Job, space_size: int, objective: str, direction: str) -> None:
        self.job = job.id
        print(f"Search {job.id}: {space_size} hyperparameters, objective {objective}"
              f" ({direction})", flush=True)

    def event(self, event: Event, results: dict[str, Any], elapsed: float) -> None:
        if event.type in ("trial_completed", "trial_failed"):
            print_trial(results, event.data.get("trial", "?"), event.type, elapsed)

    def refresh(self, results: dict[str, Any], elapsed: float) -> None:
        pass

    def finish(self, results: dict[str, Any], elapsed: float) -> None:
        print(f"Search {self.job}: {results['state']}", flush=True)


class NotebookView:
    """One display, updated in place: a progress bar, the best score and a trial table
    (best first, then running ones), re-rendered only when something changed."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.handle: Any = None
        self.shown: tuple[Any, ...] | None = None

    def start(self, job: Job, space_size: int, objective: str, direction: str) -> None:
        from IPython.display import display

        self.job, self.objective, self.direction = job.id, objective, direction
        self.handle = display(_Bundle("", f"Search {job.id}: starting"), display_id=True)

    def event(self, event: Event, results: dict[str, Any], elapsed: float) -> None:
        pass  # refresh() runs after every batch of events

    def refresh(self, results: dict[str, Any], elapsed: float) -> None:
        key = (results["state"], tuple((t["trial"], t["state"], t["epochs"], t["score"],
                                        t.get("error"))
                                       for t in results["trials"]), int(elapsed))
        if key != self.shown:
            self.shown = key
            self.handle.update(_Bundle(*render(results, self.total, elapsed)))

    def finish(self, results: dict[str, Any], elapsed: float) -> None:
        self.shown = None
        self.refresh(results, elapsed)


class _Bundle:
    """An object IPython displays as HTML, or as text where HTML is not shown."""

    def __init__(self, html_text: str, plain: str) -> None:
        self.html, self.plain = html_text, plain

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.plain


def render(results: dict[str, Any], total: int | None, elapsed: float) -> tuple[str, str]:
    """The notebook view of a results document: (HTML, plain text)."""
    trials = results["trials"]
    done = sum(t["state"] in _DONE for t in trials)
    running = sum(t["state"] == TrialState.RUNNING for t in trials)
    objective = results["objective"]["name"]
    best = results.get("best")
    best_text = f"{best['score']:.4g} (trial {best['trial']})" if best else "-"
    of = f"/{total}" if total else ""
    head = (f"Search {results['job']} {results['state']}: {done}{of} trials done,"
            f" {running} running, best {objective} {best_text}, {_hms(elapsed)}")
    bar = (f'<progress value="{done}" max="{total}" style="width:24em"></progress>'
           if total else '<progress style="width:24em"></progress>')
    rows = _rows(results)
    names = sorted({k for t in rows for k in t["hyperparameters"]})
    failed = any(t["state"] == TrialState.FAILED for t in rows)
    cells = ["trial", "state", objective, "epochs", *names, *(["reason"] if failed else [])]
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in
                         [t["trial"], t["state"], t["score"], t["epochs"],
                          *(t["hyperparameters"].get(n) for n in names),
                          *([_reason(t)] if failed else [])]) + "</tr>"
        for t in rows)
    table = ("<table class='tunecluster-trials'><thead><tr>"
             + "".join(f"<th>{html.escape(c)}</th>" for c in cells)
             + f"</tr></thead><tbody>{body}</tbody></table>")
    page = (f"<div class='tunecluster-progress'><div>{html.escape(head)}</div>"
            f"<div>{bar} {done}{of}</div>{table}</div>")
    plain = "\n".join([head] + [(f"  {t['trial']} {t['state']:<9} {fmt(t['score'])}"
                                 f" epochs {t['epochs']}  {_reason(t)}").rstrip()
                                for t in rows])
    return page, plain


def _reason(trial: dict[str, Any]) -> str:
    """Why a FAILED trial failed, in one short line ("" for the others)."""
    return failure_reason(trial.get("error")) if trial["state"] == TrialState.FAILED else ""


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The best finished trials first, then the running ones, at most _TABLE_ROWS."""
    sign = -1.0 if results["objective"]["direction"] == "max" else 1.0
    scored = sorted((t for t in results["trials"] if t["score"] is not None),
                    key=lambda t: (sign * t["score"], t["trial"]))
    others = [t for t in results["trials"] if t["score"] is None]
    others.sort(key=lambda t: (t["state"] != TrialState.RUNNING, t["trial"]))
    return (scored + others)[:_TABLE_ROWS]


def print_trial(results: dict[str, Any], trial: str, kind: str, elapsed: float) -> None:
    """KerasTuner's block for a finished trial."""
    row = next((t for t in results["trials"] if t["trial"] == trial), None)
    name = results["objective"]["name"]
    print(f"\nTrial {trial} {'Complete' if kind == 'trial_completed' else 'Failed'}"
          f" [{_hms(elapsed)}]")
    if row is not None:
        if row["score"] is not None:
            print(f"{name}: {row['score']:.4g}")
        for key, value in row["hyperparameters"].items():
            print(f"{key}: {value}")
        if row.get("error"):
            print(f"error: {failure_reason(row['error'])}")
    best = results.get("best")
    if best:
        print(f"\nBest {name} So Far: {best['score']:.4g}")
    done = sum(t["state"] in (TrialState.COMPLETED, TrialState.FAILED) for t in results["trials"])
    print(f"Total elapsed time: {_hms(elapsed)} ({done} trial(s) done)", flush=True)


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}h {s // 60 % 60:02d}m {s % 60:02d}s"
