"""The dashboard's web application (Starlette): pages, the JSON API, live events.

Pages are one HTML shell per view whose script (``static/app.js``) draws the view from
the JSON API with plotly.js, served from the plotly wheel (``/static/plotly.min.js``):
nothing comes from a CDN, and there is no frontend build step.

    GET  /  /jobs/{job}  /jobs/{job}/trials/{trial}  /workers  /compare  /submit   pages
    GET  /api/jobs[?state=S]                 the Jobs view's rows
    GET  /api/jobs/{job}                     the Job view's document (charts included)
    GET  /api/jobs/{job}/trials/{trial}      the Trial view's document
    GET  /api/jobs/{job}/events              server-sent events of the job (live)
    GET  /api/jobs/{job}/download/{name}     best_model.keras, results.json, results.csv
    GET  /api/workers                        live workers
    GET  /api/compare?jobs=A&jobs=B          several jobs' histories overlaid
    POST /api/jobs                           submit a YAML job (body: the YAML text)
    POST /api/jobs/{job}/cancel              cancel a job
    GET  /healthz                            probes; /metrics when the metrics module is there

The Redis URL and its password stay in the server: no response carries them, and Redis
errors reach the browser as "Redis is unreachable".
"""

from __future__ import annotations

import asyncio
import html
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import redis
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tunecluster.dashboard.auth import TokenAuth
from tunecluster.dashboard.data import DOWNLOADS, Reader
from tunecluster.dashboard.headers import CSP_JOB_VIEW, SecurityHeaders
from tunecluster.dashboard.hub import Hub, sse
from tunecluster.errors import SpecError, StoreError
from tunecluster.ids import InvalidId, check_job_id, check_trial_id
from tunecluster.store import FINAL_STATES, Store

STATIC = Path(__file__).parent / "static"
KEEPALIVE_S = 15.0
VIEWS = ("jobs", "job", "trial", "workers", "compare", "submit")


def plotly_js() -> Path:
    """plotly.js as the plotly wheel ships it (no CDN: air-gapped clusters work)."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


class Dashboard:
    """The application's state: the store, the hub of live readers, the cached reads."""

    def __init__(self, redis_url: str, *, read_only: bool = False) -> None:
        self._redis_url = redis_url  # only for submit's child process, never sent out
        self.store = Store.from_url(redis_url, retries=1)
        self.hub = Hub(lambda: Store.from_url(redis_url, retries=1))
        self.reader = Reader(self.store, self.hub)
        self.read_only = read_only

    # --- pages -------------------------------------------------------------------------

    def page(self, view: str, **ids: str) -> HTMLResponse:
        """The HTML shell of a view; app.js draws it from the API."""
        config = {"view": view, "readOnly": self.read_only, **ids}
        title = {"jobs": "Jobs", "job": f"Job {ids.get('job', '')}",
                 "trial": f"Trial {ids.get('trial', '')}", "workers": "Workers",
                 "compare": "Compare", "submit": "Submit"}[view]
        # a JSON data block (never run, so the CSP needs no inline script); "<\/" keeps
        # an id from closing the element
        body = SHELL.format(title=html.escape(title),
                            config=json.dumps(config).replace("</", "<\\/"))
        headers = {"Cache-Control": "no-store"}
        if view == "job":  # its parallel coordinates need eval (headers.CSP_JOB_VIEW)
            headers["Content-Security-Policy"] = CSP_JOB_VIEW
        return HTMLResponse(body, headers=headers)

    # --- API ---------------------------------------------------------------------------

    async def jobs(self, request: Request) -> Response:
        """GET /api/jobs[?state=S]: the Jobs view's rows."""
        state = request.query_params.get("state") or None
        return JSONResponse(await run_in_threadpool(self.reader.jobs, state))

    async def job(self, request: Request) -> Response:
        """GET /api/jobs/{job}: the Job view's document (``Reader.job``)."""
        job = check_job_id(request.path_params["job"], "job")
        return JSONResponse(await run_in_threadpool(self.reader.job, job))

    async def trial(self, request: Request) -> Response:
        """GET /api/jobs/{job}/trials/{trial}: the Trial view's document."""
        job = check_job_id(request.path_params["job"], "job")
        trial = check_trial_id(request.path_params["trial"], "trial")
        return JSONResponse(await run_in_threadpool(self.reader.trial, job, trial))

    async def workers(self, request: Request) -> Response:
        """GET /api/workers: the live workers."""
        return JSONResponse(await run_in_threadpool(self.reader.workers))

    async def compare(self, request: Request) -> Response:
        """GET /api/compare?jobs=A,B: several jobs' histories overlaid."""
        jobs = [check_job_id(j, "jobs") for j in request.query_params.getlist("jobs")
                for j in j.split(",") if j]
        return JSONResponse(await run_in_threadpool(self.reader.compare, jobs))

    async def events(self, request: Request) -> Response:
        """GET /api/jobs/{job}/events: the job's events as server-sent events (a
        ``hello`` first; the stream ends after the event that makes the job final)."""
        job = check_job_id(request.path_params["job"], "job")
        record = await run_in_threadpool(self.store.jobs.get, job)  # 404 first
        queue = self.hub.subscribe(job)
        final = record.state in FINAL_STATES

        async def stream() -> Any:
            try:
                yield "retry: 2000\n\n"
                yield sse(_hello(job, record.state))
                while not final:
                    try:
                        event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except asyncio.TimeoutError:
                        yield sse(None)
                        continue
                    yield sse(event)
                    if event.type == "job_state" and event.data.get("state") in FINAL_STATES:
                        return
            finally:
                self.hub.unsubscribe(job, queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    async def download(self, request: Request) -> Response:
        """GET /api/jobs/{job}/download/{name}: an attachment (see ``_download``)."""
        job = check_job_id(request.path_params["job"], "job")
        name = request.path_params["name"]
        if name not in DOWNLOADS:
            return _error(404, f"no download {name!r}; one of {', '.join(DOWNLOADS)}")
        return await run_in_threadpool(self._download, job, name)

    def _download(self, job: str, name: str) -> Response:
        """results.csv from the live results; results.json as published at the end
        (the live document before); best_model.keras through ``downloads.retrieve``."""
        from tunecluster import render
        from tunecluster.artifacts import BEST_MODEL, RESULTS
        from tunecluster.store import downloads
        from tunecluster.store.results import build_results

        filename = f"{job}-{name}"
        disposition = {"Content-Disposition": f'attachment; filename="{filename}"'}
        if name == "results.csv":
            text = render.results_csv(build_results(self.store.jobs, job))
            return PlainTextResponse(text, media_type="text/csv", headers=disposition)
        published = downloads.index(self.store, job).get(name) or {}
        if name == RESULTS and not published.get("published"):
            # the live document while the job runs (the chief publishes it at the end)
            data = build_results(self.store.jobs, job)
            return Response(json.dumps(data, indent=2, default=str),
                            media_type="application/json", headers=disposition)
        tmp = tempfile.mkdtemp(prefix="tc-dashboard-dl-")
        try:
            got = downloads.retrieve(self.store, job, name, Path(tmp) / Path(name).name)
        except Exception:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        media = "application/json" if name == RESULTS else "application/octet-stream"
        assert name in (RESULTS, BEST_MODEL)
        return FileResponse(got.path, media_type=media, filename=filename,
                            background=BackgroundTask(shutil.rmtree, tmp, True))

    async def cancel(self, request: Request) -> Response:
        """POST /api/jobs/{job}/cancel: ask the chief to cancel (as ``Job.cancel``)."""
        if self.read_only:
            return _error(403, "this dashboard is read-only (--read-only)")
        job = check_job_id(request.path_params["job"], "job")
        before = await run_in_threadpool(self.store.jobs.request_cancel, job)
        done = before in FINAL_STATES
        return JSONResponse({"job": job, "state": before, "cancelling": not done})

    async def submit(self, request: Request) -> Response:
        """POST /api/jobs: queue the YAML job in the body (``submit.submit_yaml``)."""
        if self.read_only:
            return _error(403, "this dashboard is read-only (--read-only)")
        from tunecluster.dashboard.submit import MAX_YAML_BYTES, submit_yaml

        body = await request.body()
        if len(body) > MAX_YAML_BYTES:
            return _error(400, f"spec error: the job is larger than {MAX_YAML_BYTES // 1024}"
                               " KiB")
        try:
            text = body.decode()
        except UnicodeDecodeError:
            return _error(400, "spec error: the job is not UTF-8 text")
        job = await run_in_threadpool(submit_yaml, text, self._redis_url)
        return JSONResponse({"job": job}, status_code=201)

    async def healthz(self, request: Request) -> Response:
        """GET /healthz: 200 while Redis answers PING (no token needed)."""
        try:
            await run_in_threadpool(self.store.ping)
        except redis.RedisError:
            return _error(503, "Redis is unreachable")
        return PlainTextResponse("ok")


def _hello(job: str, state: str) -> Any:
    from tunecluster.store import Event

    return Event("0-0", "hello", {"job": job, "state": state})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message.replace("\n", " ")}, status_code=status)


async def _on_spec_error(request: Request, exc: Exception) -> Response:
    return _error(400, f"spec error: {exc}")


async def _on_invalid_id(request: Request, exc: Exception) -> Response:
    return _error(400, str(exc))


async def _on_store_error(request: Request, exc: Exception) -> Response:
    text = str(exc)
    return _error(404 if text.startswith("no job") or " has no " in text else 409, text)


async def _on_redis_error(request: Request, exc: Exception) -> Response:
    return _error(503, "Redis is unreachable (the dashboard retries on the next request)")


def create_app(redis_url: str, *, token: str | None = None, read_only: bool = False,
               open_metrics: bool = False, hosts: tuple[str, ...] = ()) -> Any:
    """The ASGI application: routes, static files, ``/metrics`` when the metrics module
    is installed, all behind ``auth.TokenAuth``, every response with
    ``headers.SecurityHeaders``. ``app.state.dashboard`` is the ``Dashboard`` (tests read
    its reader and hub)."""
    dash = Dashboard(redis_url, read_only=read_only)

    def view(name: str) -> Any:
        async def endpoint(request: Request) -> Response:
            ids = {}
            if "job" in request.path_params:
                ids["job"] = check_job_id(request.path_params["job"], "job")
            if "trial" in request.path_params:
                ids["trial"] = check_trial_id(request.path_params["trial"], "trial")
            return dash.page(name, **ids)
        return endpoint

    async def plotly(request: Request) -> Response:
        return FileResponse(plotly_js(), media_type="text/javascript",
                            headers={"Cache-Control": "max-age=86400"})

    routes = [
        Route("/", view("jobs")),
        Route("/jobs/{job}", view("job")),
        Route("/jobs/{job}/trials/{trial}", view("trial")),
        Route("/workers", view("workers")),
        Route("/compare", view("compare")),
        Route("/submit", view("submit")),
        Route("/api/jobs", dash.jobs, methods=["GET"]),
        Route("/api/jobs", dash.submit, methods=["POST"]),
        Route("/api/jobs/{job}", dash.job),
        Route("/api/jobs/{job}/trials/{trial}", dash.trial),
        Route("/api/jobs/{job}/events", dash.events),
        Route("/api/jobs/{job}/download/{name}", dash.download),
        Route("/api/jobs/{job}/cancel", dash.cancel, methods=["POST"]),
        Route("/api/workers", dash.workers),
        Route("/api/compare", dash.compare),
        Route("/healthz", dash.healthz),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/static/plotly.min.js", plotly),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    metrics = _metrics_app(dash.store)
    if metrics is not None:
        routes.append(Route("/metrics", _Asgi(metrics)))  # at /metrics itself, no redirect
    app = Starlette(routes=routes, exception_handlers={
        SpecError: _on_spec_error, InvalidId: _on_invalid_id, StoreError: _on_store_error,
        redis.RedisError: _on_redis_error})
    app.state.dashboard = dash
    wrapped = SecurityHeaders(TokenAuth(app, token, open_metrics=open_metrics, hosts=hosts))
    wrapped.state = app.state  # type: ignore[attr-defined]
    return wrapped


class _Asgi:
    """An ASGI callable as a route's app (Starlette takes a bare function for an
    endpoint of one argument, the request)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def _metrics_app(store: Store) -> Any:
    """``/metrics`` from ``tunecluster.dashboard.metrics`` when that module exists."""
    try:
        from tunecluster.dashboard import metrics
    except ImportError:
        return None
    factory = getattr(metrics, "metrics_app", None)
    return factory(store) if callable(factory) else None


SHELL = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · tunecluster</title>
<link rel="stylesheet" href="/static/style.css">
<script type="application/json" id="tc-config">{config}</script>
<script src="/static/plotly.min.js"></script>
<script src="/static/app.js" defer></script>
</head><body>
<header><a class="brand" href="/">tunecluster</a>
<nav><a href="/">Jobs</a><a href="/workers">Workers</a><a href="/compare">Compare</a>
<a href="/submit" class="action">Submit</a></nav><span id="live"></span></header>
<main id="main"><p class="muted">Loading…</p></main>
</body></html>
"""
