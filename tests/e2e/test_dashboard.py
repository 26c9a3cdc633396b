"""The dashboard end to end: its HTTP API against a real cluster (Redis with a password,
a chief, two workers, real jobs), live events through the real uvicorn server, the
access rules, the CLI commands, and a real browser (Debian's chromium, headless, driven
by Playwright) following a running job, cancelling it, and opening the offline report.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from tunecluster.api.submission import prepare_job, submit, wait
from tunecluster.cluster import LocalCluster, RedisServer
from tunecluster.dashboard.app import create_app
from tunecluster.dashboard.hub import CLIENT_NAME
from tunecluster.dashboard.server import start_in_background
from tunecluster.store import Store, downloads
from tunecluster.store.results import build_results

from .conftest import EXAMPLES, FAST_LIVENESS, cli, run_job

pytestmark = pytest.mark.e2e

PASSWORD = "dash-" + secrets.token_hex(12)
TOKEN = "token-" + secrets.token_hex(16)
ACTION = {"X-Tunecluster": "1"}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# A job that runs for minutes unless cancelled: many trials, slow epochs (small batches).
LONG = ("search.max_trials=40", "train.epochs=30", "train.batch_size=8",
        "train.early_stopping.patience=30", "name=dash-long")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster of its own whose Redis has a password (that must never reach a page)."""
    base = tmp_path_factory.mktemp("dashboard")
    with RedisServer(password=PASSWORD) as server, \
            LocalCluster(workers=2, redis_url=server.url, artifacts=base / "artifacts",
                         log_dir=base / "logs", env=FAST_LIVENESS) as c:
        yield c


@pytest.fixture(scope="module")
def store(cluster: LocalCluster) -> Store:
    return Store.from_url(cluster.url)


@pytest.fixture(scope="module")
def finished(store: Store) -> str:
    """A completed job: 5 trials (enough for importance), 2 epochs each."""
    done = run_job(store, EXAMPLES / "digits.yaml", "search.max_trials=5", "train.epochs=2",
                   "train.batch_size=64", "name=dash-done")
    assert done["state"] == "completed", done
    return done["job"]


def client(cluster: LocalCluster, **kwargs: object) -> TestClient:
    base = kwargs.pop("base_url", "http://127.0.0.1")
    return TestClient(create_app(cluster.url, **kwargs), base_url=str(base))  # type: ignore[arg-type]


def no_secret(response: httpx.Response) -> httpx.Response:
    """The Redis password (and so the URL) is in no response, headers included."""
    text = response.content.decode("latin-1") + str(response.headers)
    assert PASSWORD not in text, response.request.url
    return response


def cancel_and_wait(store: Store, job: str) -> None:
    store.jobs.request_cancel(job)
    wait(store, job, timeout_s=120)


# --- the HTTP API -----------------------------------------------------------------------


def test_every_endpoint_on_a_real_job(cluster: LocalCluster, store: Store, finished: str) -> None:
    results = build_results(store.jobs, finished)
    with client(cluster) as tc:
        for page in ("/", f"/jobs/{finished}", f"/jobs/{finished}/trials/"
                     f"{results['trials'][0]['trial']}", "/workers", "/compare", "/submit"):
            r = no_secret(tc.get(page))
            assert r.status_code == 200 and "/static/plotly.min.js" in r.text, page
            assert "cdn" not in r.text.lower()
        plotly = tc.get("/static/plotly.min.js")
        assert plotly.status_code == 200 and len(plotly.content) > 1_000_000
        assert tc.get("/static/app.js").status_code == 200

        rows = no_secret(tc.get("/api/jobs")).json()
        row = next(r for r in rows if r["job"] == finished)
        assert (row["state"], row["done"], row["total"]) == ("completed", 5, 5)
        assert row["best"] == results["best"]["score"] and row["eta_s"] is None
        assert [r["job"] for r in tc.get("/api/jobs?state=completed").json()] == [finished]
        assert tc.get("/api/jobs?state=running").json() == []

        doc = no_secret(tc.get(f"/api/jobs/{finished}")).json()
        assert [t["trial"] for t in doc["trials"]] == [t["trial"] for t in results["trials"]]
        assert doc["best"] == results["best"]
        for t in results["trials"]:
            epochs = store.jobs.epochs(finished, t["trial"])
            assert {int(e) for e in doc["histories"][t["trial"]]} == set(epochs) == {1, 2}
        curves = {c["name"]: c for c in doc["figures"]["curves"]["data"]}
        assert set(curves) == {t["trial"] for t in results["trials"]}
        assert all(len(c["y"]) == 2 for c in curves.values())
        assert len(doc["figures"]["history"]["data"][0]["y"]) == 5
        assert doc["space"]["learning_rate"]["log"] is True
        slices = doc["figures"]["slices"]["layout"]
        assert any(v.get("type") == "log" for k, v in slices.items() if k.startswith("xaxis"))
        shares = doc["importance"]["importances"]
        assert set(shares) == {"n_hidden", "n_neurons", "learning_rate", "optimizer"}
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3) or sum(shares.values()) == 0

        best = results["best"]["trial"]
        trial = no_secret(tc.get(f"/api/jobs/{finished}/trials/{best}")).json()
        assert trial["best"] is True and set(trial["epochs"]) == {"1", "2"}
        (attempt,) = trial["attempts"]
        assert attempt["ended"] == "completed" and attempt["worker"]
        assert attempt["start"] <= attempt["end"]
        assert tc.get(f"/api/jobs/{finished}/trials/99999").status_code == 404

        workers = no_secret(tc.get("/api/workers")).json()
        assert len(workers) == 2 and all(w["slots"] == 1 for w in workers)
        assert all(w["heartbeat_age_s"] is not None for w in workers)

        compare = tc.get(f"/api/compare?jobs={finished}").json()
        assert compare["jobs"][0]["job"] == finished
        assert compare["figure"]["data"][0]["y"][-1] == results["best"]["score"]

        # downloads: the published model (checksum of the index), results.json, results.csv
        model = no_secret(tc.get(f"/api/jobs/{finished}/download/best_model.keras"))
        meta = downloads.index(store, finished)["best_model.keras"]
        assert model.status_code == 200
        assert hashlib.sha256(model.content).hexdigest() == meta["sha256"]
        assert "attachment" in model.headers["content-disposition"]
        data = tc.get(f"/api/jobs/{finished}/download/results.json").json()
        assert data["best"] == results["best"] and data["state"] == "completed"
        table = list(csv.reader(io.StringIO(tc.get(
            f"/api/jobs/{finished}/download/results.csv").text)))
        assert table[0][:3] == ["trial", "state", "score"] and len(table) == 6
        assert tc.get(f"/api/jobs/{finished}/download/secrets.txt").status_code == 404
        assert any(d["name"] == "best_model.keras" and d["available"] for d in doc["downloads"])

        # a final job's event stream says hello and ends
        with tc.stream("GET", f"/api/jobs/{finished}/events") as events:
            body = "".join(events.iter_text())
        assert "event: hello" in body and '"state": "completed"' in body

        assert tc.get("/healthz").text == "ok"
        metrics = tc.get("/metrics")
        assert metrics.status_code == 200 and "tunecluster_" in metrics.text
        # bad ids and unknown jobs
        assert tc.get("/api/jobs/..%2Fetc").status_code in (400, 404)
        assert tc.get("/api/jobs/Bad_ID!").status_code == 400
        assert tc.get("/api/jobs/no-such-job-000000").status_code == 404


def test_cancel_from_the_api(cluster: LocalCluster, store: Store) -> None:
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", LONG))
    with client(cluster) as tc:
        assert tc.post(f"/api/jobs/{job}/cancel").status_code == 403, "no action header"
        r = no_secret(tc.post(f"/api/jobs/{job}/cancel", headers=ACTION))
        assert r.status_code == 200 and r.json()["cancelling"] is True
        assert wait(store, job, timeout_s=120)["state"] == "cancelled"
        again = tc.post(f"/api/jobs/{job}/cancel", headers=ACTION).json()
        assert again == {"job": job, "state": "cancelled", "cancelling": False}


def test_token_required_everywhere_and_read_only(cluster: LocalCluster, finished: str) -> None:
    with client(cluster, token=TOKEN, base_url="http://10.0.0.7:8080") as tc:
        for path in ("/", "/api/jobs", f"/api/jobs/{finished}", "/api/workers",
                     "/static/plotly.min.js", f"/api/jobs/{finished}/events",
                     f"/api/jobs/{finished}/download/results.csv"):
            assert tc.get(path).status_code == 401, path
            assert tc.get(path, headers={"Authorization": "Bearer wrong-token-000000"}
                          ).status_code == 401, path
        assert tc.get("/?token=wrong").status_code == 401
        assert tc.post(f"/api/jobs/{finished}/cancel", headers=ACTION).status_code == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert tc.get("/api/jobs", headers=bearer).status_code == 200
        assert tc.get("/healthz").status_code == 200, "probes need no token"
        # ?token= once: an HttpOnly cookie, and the address without the token
        r = tc.get(f"/jobs/{finished}?token={TOKEN}", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == f"/jobs/{finished}"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        assert tc.get("/api/jobs").status_code == 200  # the cookie now
        assert TOKEN not in tc.get(f"/jobs/{finished}").text
    with client(cluster, read_only=True) as tc:
        assert tc.post(f"/api/jobs/{finished}/cancel", headers=ACTION).status_code == 403
        assert tc.post("/api/jobs", content="name: x", headers=ACTION).status_code == 403
        assert '"readOnly": true' in tc.get(f"/jobs/{finished}").text
        assert tc.get(f"/api/jobs/{finished}").status_code == 200
    with client(cluster, base_url="http://attacker.example:8080") as tc:
        assert tc.get("/api/jobs").status_code == 403, "DNS rebinding: a foreign Host"


def test_cli_refuses_a_public_address_without_a_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TUNECLUSTER_DASHBOARD_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "tunecluster", "dashboard", "--host", "0.0.0.0",
                        "--redis", "redis://127.0.0.1:9/0"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "TUNECLUSTER_DASHBOARD_TOKEN" in line


# --- live: the real server, server-sent events, one reader per job ------------------------


def hub_readers(store: Store) -> int:
    return sum(1 for c in store.client.client_list() if c.get("name") == CLIENT_NAME)


def test_live_epochs_reach_every_page_through_one_reader(cluster: LocalCluster,
                                                         store: Store) -> None:
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", LONG))
    url, stop = start_in_background(cluster.url)
    got: dict[int, list[dict]] = {}
    counted = threading.Event()  # the readers were counted: the pages may close

    def page(n: int) -> None:
        got[n] = []
        with httpx.stream("GET", f"{url}/api/jobs/{job}/events", timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    got[n].append(json.loads(line[6:]))
                    if sum(e["type"] == "epoch" for e in got[n]) >= 2:
                        # Stay open until counted: a page that connected late gets the
                        # job's past epochs at once and would otherwise close (and its
                        # reader with it) before the count.
                        counted.wait(60)
                        return

    try:
        pages = [threading.Thread(target=page, args=(n,), daemon=True) for n in range(3)]
        for p in pages:
            p.start()
        deadline = time.monotonic() + 90
        while not all(any(e["type"] == "epoch" for e in got.get(n, [])) for n in range(3)):
            assert time.monotonic() < deadline, got
            time.sleep(0.2)
        assert hub_readers(store) == 1, "three open pages, one reader of the job's stream"
        counted.set()
        for p in pages:
            p.join(60)
        # every page has closed while the job still runs: its reader stops (it ends
        # after the read that follows the last page's close, block_ms 1 s)
        deadline = time.monotonic() + 20
        while hub_readers(store):
            assert time.monotonic() < deadline, "the job's reader outlived its last page"
            time.sleep(0.2)
        assert store.jobs.get(job).state == "running", "closed by the pages, not the job"
        for events in got.values():
            assert events[0]["type"] == "hello"
            epoch = next(e for e in events if e["type"] == "epoch")["data"]
            assert set(epoch) >= {"trial", "epoch", "metrics"}
            assert "val_accuracy" in epoch["metrics"]
            # what the page was sent is what Redis holds for that epoch (the event went
            # through Lua's cjson: 14 significant digits)
            held = store.jobs.epochs(job, epoch["trial"])[epoch["epoch"]]
            assert epoch["metrics"] == pytest.approx(held, rel=1e-12)
    finally:
        counted.set()
        stop()
        cancel_and_wait(store, job)


def test_the_dashboard_process_never_imports_tensorflow(cluster: LocalCluster,
                                                        finished: str) -> None:
    """start_in_background in a fresh interpreter, every GET endpoint requested."""
    script = f"""
import sys, httpx
from tunecluster.dashboard import start_in_background
url, stop = start_in_background({cluster.url!r})
job = {finished!r}
trial = httpx.get(f"{{url}}/api/jobs/{{job}}", timeout=60).json()["trials"][0]["trial"]
for path in ["/", "/api/jobs", f"/api/jobs/{{job}}", f"/api/jobs/{{job}}/trials/{{trial}}",
             "/api/workers", f"/api/compare?jobs={{job}}", f"/api/jobs/{{job}}/events",
             f"/api/jobs/{{job}}/download/results.csv",
             f"/api/jobs/{{job}}/download/best_model.keras", "/metrics", "/healthz"]:
    assert httpx.get(url + path, timeout=60).status_code == 200, path
stop()
print("loaded:", sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "loaded: []"


def test_report_command_writes_one_self_contained_file(cluster: LocalCluster, finished: str,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    r = cli("report", finished, "-o", str(out), "--redis", cluster.url)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "<script src" not in text and "<link" not in text
    assert finished in text and PASSWORD not in text
    assert cli("report", "no-such-job-000000", "-o", str(tmp_path / "x.html"), "--redis",
               cluster.url).returncode == 1


REPORT_IN_A_FRESH_INTERPRETER = """
import sys
from tunecluster.cli import main
sys.argv = ["tunecluster", "report", *sys.argv[1:]]
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
print("exit:", code)
print("loaded:", sorted(m for m in sys.modules
                        if m.split(".")[0] in ("tensorflow", "keras", "keras_tuner")))
"""


def test_the_report_command_never_imports_tensorflow(cluster: LocalCluster, finished: str,
                                                     tmp_path: Path) -> None:
    """docs/dashboard.md: the report imports no TensorFlow (nor Keras, nor KerasTuner):
    the real command's code in a fresh interpreter, its modules listed afterwards."""
    out = tmp_path / "report.html"
    r = subprocess.run([sys.executable, "-c", REPORT_IN_A_FRESH_INTERPRETER, finished, "-o",
                        str(out)], capture_output=True, text=True, timeout=180,
                       env={**os.environ, "TUNECLUSTER_REDIS_URL": cluster.url})
    *_, exit_line, loaded = r.stdout.strip().splitlines()
    assert exit_line == "exit: 0", r.stdout + r.stderr
    assert finished in out.read_text()
    assert loaded == "loaded: []"


# --- a real browser ------------------------------------------------------------------------


def chart_points(page: object, chart: str) -> int:
    return page.evaluate(  # type: ignore[attr-defined]
        f"() => {{ const d = document.getElementById('{chart}');"
        " return d && d.data ? d.data.reduce((n, t) => n + (t.x ? t.x.length : 0), 0) : 0; }")


@pytest.fixture(scope="module")
def browser(require) -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        require(CHROMIUM, "make install-dev puts Debian's chromium there (apt, as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_browser_follows_a_running_job_and_cancels_it(cluster: LocalCluster, store: Store,
                                                      browser: object, finished: str,
                                                      tmp_path: Path) -> None:
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", LONG))
    url, stop = start_in_background(cluster.url)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    context = browser.new_context(viewport={"width": 1400, "height": 1100})  # type: ignore[attr-defined]
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        page.goto(f"{url}/jobs/{job}")
        # trial rows appear as the chief creates trials
        page.wait_for_function("() => document.querySelectorAll('#trials tbody tr').length >= 1",
                               timeout=90_000)
        page.wait_for_function("() => { const d = document.getElementById('chart-curves');"
                               " return d && d.data && d.data.some(t => t.x.length > 0); }",
                               timeout=90_000)
        seen = chart_points(page, "chart-curves")
        # and the chart gains points as epochs are reported (pushed, no reload)
        page.wait_for_function(
            "(n) => document.getElementById('chart-curves').data"
            ".reduce((a, t) => a + t.x.length, 0) > n", arg=seen, timeout=90_000)
        assert page.inner_text("#live") == "live"
        page.screenshot(path=str(shots / "dashboard-running.png"), full_page=True)

        page.goto(f"{url}/")
        page.wait_for_selector(f"#jobs a[href='/jobs/{job}']")
        page.screenshot(path=str(shots / "dashboard-jobs.png"))
        page.goto(f"{url}/workers")
        page.wait_for_function("() => document.querySelectorAll('#workers tbody tr').length"
                               " === 2")
        page.goto(f"{url}/jobs/{finished}")
        # charts are drawn once on screen: scroll down to the last one, then back up
        page.locator("#chart-importance").scroll_into_view_if_needed()
        page.wait_for_selector("#chart-importance.js-plotly-plot")
        for chart in ("parallel", "slices", "importance"):
            assert page.query_selector(f"#chart-{chart}.js-plotly-plot"), chart
        page.evaluate("window.scrollTo(0, 0)")
        assert chart_points(page, "chart-history") >= 5
        # the best trial is the table's first row (sorted by score, best first)
        best = build_results(store.jobs, finished)["best"]["trial"]
        assert page.inner_text("#trials tbody tr:first-child td:first-child") == best
        page.screenshot(path=str(shots / "dashboard-job.png"))  # the README's picture
        page.screenshot(path=str(shots / "dashboard-finished.png"), full_page=True)

        page.goto(f"{url}/jobs/{job}")
        page.wait_for_function("() => document.getElementById('live').textContent === 'live'")
        page.click("#cancel")
        try:
            page.wait_for_function("() => document.querySelector('#state').textContent"
                                   " === 'cancelled'", timeout=120_000)
        except Exception:
            page.screenshot(path=str(shots / "dashboard-cancel-failed.png"), full_page=True)
            raise AssertionError((store.jobs.get(job).state, errors,
                                  page.inner_text("header"), page.inner_text("h1"))) from None
        assert store.jobs.get(job).state == "cancelled"
        assert page.query_selector("#cancel") is None
        page.screenshot(path=str(shots / "dashboard-cancelled.png"), full_page=True)
        assert errors == [], errors
    finally:
        context.close()
        stop()
        if store.jobs.get(job).state != "cancelled":
            cancel_and_wait(store, job)
    for name in ("dashboard-job.png", "dashboard-running.png", "dashboard-jobs.png",
                 "dashboard-cancelled.png"):
        assert (shots / name).stat().st_size > 10_000, name
    if os.environ.get("TUNECLUSTER_SCREENSHOTS"):  # docs/images/dashboard-job.png, by hand
        shutil.copy(shots / "dashboard-job.png", os.environ["TUNECLUSTER_SCREENSHOTS"])


def test_browser_opens_the_report_offline(cluster: LocalCluster, finished: str,
                                          browser: object, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert cli("report", finished, "-o", str(out), "--redis", cluster.url).returncode == 0
    context = browser.new_context(offline=True)  # type: ignore[attr-defined]
    requested: list[str] = []

    def only_the_file(route: object) -> None:
        request_url = route.request.url  # type: ignore[attr-defined]
        requested.append(request_url)
        if request_url.startswith("file://"):
            route.continue_()  # type: ignore[attr-defined]
        else:
            route.abort()  # type: ignore[attr-defined]

    context.route("**/*", only_the_file)
    page = context.new_page()
    try:
        page.goto(out.as_uri())
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 5",
                               timeout=60_000)
        traces = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')]"
                               ".map(d => d.data.length)")
        assert len(traces) == 5 and all(n > 0 for n in traces), traces
        assert page.query_selector_all(".js-plotly-plot .main-svg")
        assert page.inner_text("table.trials").count("COMPLETED") == 5
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    finally:
        context.close()
    assert requested and all(u.startswith("file://") for u in requested), requested
