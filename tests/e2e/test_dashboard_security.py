"""The dashboard's security edges, end to end: the real server (uvicorn, over HTTP) on a
real Redis with a password, the real CLI in child processes, and a real browser.

No chief and no workers: the job whose charts carry hostile names is written through the
store's own worker protocol (enqueue, claim, report, finish), so nothing trains.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tunecluster.cluster import RedisServer
from tunecluster.dashboard.server import start_in_background
from tunecluster.store import Store

from .conftest import EXAMPLES, cli
from .test_dashboard import browser  # noqa: F401, F811 - the fixture (headless chromium)

pytestmark = pytest.mark.e2e

PASSWORD = "dash-sec-" + secrets.token_hex(12)
TOKEN = "token-" + secrets.token_hex(16)
ACTION = {"X-Tunecluster": "1"}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(password=PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def store(redis_server: RedisServer) -> Store:
    return Store.from_url(redis_server.url)


@pytest.fixture(scope="module")
def dashboard(redis_server: RedisServer) -> Iterator[str]:
    """The dashboard on loopback without a token (as `tunecluster dashboard`)."""
    url, stop = start_in_background(redis_server.url)
    yield url
    stop()


@pytest.fixture(scope="module")
def guarded(redis_server: RedisServer) -> Iterator[str]:
    """The dashboard with a token."""
    url, stop = start_in_background(redis_server.url, token=TOKEN)
    yield url
    stop()


def one_line_error(response: httpx.Response) -> str:
    message = response.json()["error"]
    assert "\n" not in message and PASSWORD not in response.text
    return message


# --- 1. the dashboard never runs submitted code --------------------------------------------

SOURCE_MODEL = """\
model:
  function: build_model
  source: |
    import pathlib
    pathlib.Path({marker!r}).write_text("ran at import")
    def build_model(hp):
        pathlib.Path({marker!r}).write_text("ran in build_model")
        import keras
        return keras.Sequential([keras.layers.Dense(hp.Int("units", 2, 4))])
"""


def _with_model(model_yaml: str) -> str:
    """A small job on the digits whose model section is ``model_yaml``."""
    return ("name: dash-code\ndata: {dataset: digits}\n" + model_yaml
            + "search: {objective: val_accuracy, max_trials: 1}\ntrain: {epochs: 1}\n")


@pytest.mark.parametrize("field,model_yaml", [
    ("model.source", SOURCE_MODEL),
    ("model.module", "model:\n  module: {marker!r}\n  function: build_model\n"),
])
def test_submit_refuses_a_job_that_carries_code(dashboard: str, store: Store, tmp_path: Path,
                                               field: str, model_yaml: str) -> None:
    marker = tmp_path / "pwned"
    text = _with_model(model_yaml.format(marker=str(marker)))
    before = set(store.jobs.all())
    r = httpx.post(f"{dashboard}/api/jobs", content=text, headers=ACTION, timeout=300)
    after = set(store.jobs.all())
    assert r.status_code == 400, r.text
    message = one_line_error(r)
    assert message.startswith("spec error: ") and field in message, message
    assert not marker.exists(), "the submitted code ran in the dashboard's child process"
    assert after == before, "nothing queued"


def test_submit_validates_exactly_as_the_cli(dashboard: str, redis_server: RedisServer,
                                            store: Store, tmp_path: Path) -> None:
    """A job the page refuses gets the CLI's own one line, and nothing is queued; a job
    that names files on the dashboard's disk is refused even when it is valid."""
    good = (EXAMPLES / "digits.yaml").read_text()
    bad_field = good.replace("max_trials: 8", "max_trials: 0")
    bad_yaml = good.replace("  builtin: mlp", "  builtin: [mlp")
    unknown = good + "surprise: 1\n"
    env = {"TUNECLUSTER_REDIS_URL": redis_server.url}
    path = tmp_path / "job.yaml"

    def submit_page(text: str) -> httpx.Response:
        return httpx.post(f"{dashboard}/api/jobs", content=text, headers=ACTION, timeout=300)

    before = set(store.jobs.all())
    for text in (bad_field, bad_yaml, unknown):
        r = submit_page(text)
        assert r.status_code == 400, r.text
        message = one_line_error(r)
        assert message.startswith("spec error: ")
        path.write_text(text)
        by_cli = cli("submit", str(path), env=env)
        assert by_cli.returncode == 2, by_cli.stderr
        # the same one line as the CLI's (the file name aside)
        assert message.replace("job.yaml", "") == by_cli.stderr.strip().replace(
            str(path), "").replace("job.yaml", ""), (message, by_cli.stderr)
    assert "search.max_trials" in one_line_error(submit_page(bad_field))
    r = submit_page(good.replace("dataset: digits", "path: /etc/passwd\n  target: x"))
    assert r.status_code == 400 and "data.path" in one_line_error(r)
    # data.files naming readable CSV files on the dashboard's disk: a job the CLI would
    # queue (it validates there), refused by the page only because of its files
    rows = tmp_path / "rows.csv"
    rows.write_text("a,b,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(30)))
    data = good[good.index("data:"):good.index("model:")]
    named = good.replace(data, f"data:\n  files: {{train: {rows}, valid: {rows},"
                               f" test: {rows}}}\n  target: y\n").replace(
        "  input: flatten\n", "")
    path.write_text(named)
    assert cli("validate", str(path), env=env).returncode == 0, "a valid job file"
    r = submit_page(named)
    assert r.status_code == 400, r.text
    assert one_line_error(r).startswith("spec error: data.files: ")
    # after every refusal above (the page's and the CLI's alike): nothing queued
    assert set(store.jobs.all()) == before, "a refused submit queued a job"
    small = good.replace("max_trials: 8", "max_trials: 1").replace("name: digits-mlp",
                                                                    "name: dash-submitted")
    r = submit_page(small)
    assert r.status_code == 201, r.text
    job = r.json()["job"]
    assert store.jobs.get(job).name == "dash-submitted"
    # the same comparison sees a queued job: the valid submit is the one new id
    assert set(store.jobs.all()) - before == {job}


# --- 7. loopback is an address, the token redirect stays home, markup stays text ----------

# The dashboard's CLI in a child process that cannot resolve names beyond /etc/hosts (no
# DNS leaves the machine in tests): ``127.evil.example`` resolves nowhere.
OFFLINE_CLI = """
import socket, sys
real = socket.getaddrinfo
def offline(host, *args, **kwargs):
    if host not in ("localhost", "127.0.0.1", "::1"):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (offline test)")
    return real(host, *args, **kwargs)
socket.getaddrinfo = offline
from tunecluster.cli import main
sys.argv = ["tunecluster", *sys.argv[1:]]
main()
"""


def dashboard_cli(*args: str, token: str | None = None,
                  timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TUNECLUSTER_DASHBOARD_TOKEN"}
    if token is not None:
        env["TUNECLUSTER_DASHBOARD_TOKEN"] = token
    return subprocess.run([sys.executable, "-c", OFFLINE_CLI, "dashboard", *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("host", ["127.evil.example", "127.0.0.1.evil.example",
                                  "localhost.evil.example"])
def test_a_host_name_that_looks_like_loopback_needs_a_token(redis_server: RedisServer,
                                                            host: str) -> None:
    r = dashboard_cli("--host", host, "--port", "0", "--redis", redis_server.url)
    assert r.returncode == 2, (r.returncode, r.stderr)
    (line,) = r.stderr.strip().splitlines()
    assert "TUNECLUSTER_DASHBOARD_TOKEN" in line and host in line


@pytest.mark.parametrize("token,shown", [(" " * 20, "spaces"), ("", "empty"),
                                          ("\t \n" * 8, "spaces"),
                                          ("a b c d e f g h i j k", "spaces"),
                                          ("short-token", "16")])
def test_a_blank_or_short_token_is_refused_at_start(redis_server: RedisServer, token: str,
                                                     shown: str) -> None:
    try:
        r = dashboard_cli("--host", "127.0.0.1", "--port", "0", "--redis", redis_server.url,
                          token=token, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the dashboard started with the token {token!r}")
    assert r.returncode == 2, (r.returncode, r.stderr)
    (line,) = r.stderr.strip().splitlines()
    assert "TUNECLUSTER_DASHBOARD_TOKEN" in line and "16" in line and shown in line, line
    if token.strip():
        assert token not in line, "the refusal does not echo the token"
    with pytest.raises(ValueError, match="TUNECLUSTER_DASHBOARD_TOKEN"):
        start_in_background(redis_server.url, token=token or " ")


def raw_get(base: str, target: str) -> tuple[int, dict[str, str], bytes]:
    """One request with ``target`` sent byte for byte (no client normalises it)."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                     "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data, f"the server closed the connection without a reply to {target}"
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("path,kept", [
    ("/jobs/abc", "/jobs/abc"),
    ("/%2F%2Fevil.example", None),
    ("//evil.example", None),
    ("/%5C%5Cevil.example", None),
    ("/%5Cevil.example", None),
    ("/%0d%0aSet-Cookie:%20injected=1", None),
    ("/%E2%82%AC", "/%E2%82%AC"),
    ("/%ff%fe", None),
])
def test_the_token_redirect_stays_on_this_dashboard(guarded: str, path: str,
                                                    kept: str | None) -> None:
    status, headers, _ = raw_get(guarded, f"{path}?token={TOKEN}&state=running")
    assert status == 303, (path, status, headers)
    location = headers["location"]
    assert "injected" not in headers.get("set-cookie", "") and TOKEN not in location
    assert location.startswith("/") and not location.startswith(("//", "/\\")), location
    assert all(32 < ord(c) < 127 for c in location), location
    # a browser resolves it against the page: the same origin, whatever the path
    resolved = urlsplit(urljoin(guarded + "/x", location))
    assert resolved.netloc == urlsplit(guarded).netloc, location
    assert resolved.query == "state=running"
    if kept is not None:
        assert resolved.path == kept


# Names and values a custom model may give its hyperparameters and metrics (KerasTuner
# takes any string); plotly.js renders a subset of HTML in text, links and styles included.
HOSTILE_NAME = '<a href="http://evil.example/">units</a><b>bold</b>'
HOSTILE_VALUE = '<span style="font-size:61px;color:#abcdef">big</span>'
HOSTILE_METRIC = 'val_<i>acc</i><br><a href="http://evil.example/m">m</a>'


@pytest.fixture(scope="module")
def hostile_job(store: Store) -> str:
    """A job of five completed trials whose hyperparameter name, values and objective are
    markup, recorded through the worker protocol (nothing trains)."""
    spec = {"name": "dash-hostile", "data": {"dataset": "digits"},
            "model": {"builtin": "mlp", "hyperparameters": {}},
            "search": {"objective": {"name": HOSTILE_METRIC, "direction": "max"},
                       "max_trials": 5}}
    space = {"space": [
        {"class_name": "Choice", "config": {"name": HOSTILE_NAME,
                                            "values": [HOSTILE_VALUE, "plain"]}},
        {"class_name": "Float", "config": {"name": "rate", "min_value": 0.001,
                                           "max_value": 0.1, "sampling": "log"}}]}
    job = store.jobs.submit("dash-hostile", json.dumps(spec), space, 0, "native")
    for i in range(5):
        trial = f"t{i}"
        values = {HOSTILE_NAME: HOSTILE_VALUE if i % 2 else "plain", "rate": 0.001 * 3 ** i}
        store.queue.enqueue(job, trial, values, 0, None)
        claim = store.queue.claim("w-sec", 60)
        assert claim is not None and claim.trial == trial
        score = 0.5 + i / 10
        for epoch in (1, 2):
            store.queue.report_epoch(claim, "w-sec", epoch, {HOSTILE_METRIC: score,
                                                             "loss": 1 - score})
        assert store.queue.finish(claim, "w-sec", "COMPLETED", {
            "score": repr(score), "metrics": {HOSTILE_METRIC: score}, "best_epoch": "2"})
    return job


def figure_text(fig: object) -> str:
    return json.dumps(fig, ensure_ascii=False)


def test_figures_carry_names_and_values_as_text(dashboard: str, hostile_job: str) -> None:
    doc = httpx.get(f"{dashboard}/api/jobs/{hostile_job}", timeout=60).json()
    assert set(doc["figures"]) == {"curves", "history", "parallel", "slices", "importance",
                                   "timeline", "best_time"}
    trial = httpx.get(f"{dashboard}/api/jobs/{hostile_job}/trials/t1", timeout=60).json()
    compare = httpx.get(f"{dashboard}/api/compare?jobs={hostile_job}", timeout=60).json()
    for name, fig in [*doc["figures"].items(), ("trial", trial["figure"]),
                      ("compare", compare["figure"])]:
        text = figure_text(fig)
        for markup in ("<a ", "<b>", "<i>", "<span"):
            assert markup not in text, (name, markup)
    assert "&lt;b&gt;bold&lt;/b&gt;" in figure_text(doc["figures"]["slices"])


PLOTS_TEXT = ("() => [...document.querySelectorAll('.js-plotly-plot')]"
              ".map(d => d.textContent).join(' ')")
PLOTS_MARKUP = ("() => [...document.querySelectorAll('.js-plotly-plot')].flatMap(d =>"
                " [...d.querySelectorAll('a, [style*=\"font-size:61\"], [style*=\"font-size: 61\"],"
                " [style*=\"abcdef\"], [style*=\"171, 205, 239\"]')])"
                ".map(e => e.outerHTML.slice(0, 200))")


def check_literal(page: object, charts: int) -> None:
    """The page's charts show the markup as text, and none of it as links or styles."""
    page.wait_for_function(  # type: ignore[attr-defined]
        f"() => document.querySelectorAll('.js-plotly-plot').length >= {charts}",
        timeout=60_000)
    assert page.evaluate(PLOTS_MARKUP) == []  # type: ignore[attr-defined]
    text = page.evaluate(PLOTS_TEXT)  # type: ignore[attr-defined]
    assert "<b>bold</b>" in text and "font-size:61px" in text, text[:2000]


def test_the_browser_shows_markup_in_charts_as_text(redis_server: RedisServer, dashboard: str,
                                                    hostile_job: str, browser: object,  # noqa: F811
                                                    tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 3000})  # type: ignore[attr-defined]
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{dashboard}/jobs/{hostile_job}")
        for chart in ("parallel", "slices", "importance"):
            page.locator(f"#chart-{chart}").scroll_into_view_if_needed()
            page.wait_for_selector(f"#chart-{chart}.js-plotly-plot", timeout=60_000)
        check_literal(page, 5)
        page.screenshot(path=str(tmp_path / "hostile-job.png"), full_page=True)
        out = tmp_path / "report.html"
        r = cli("report", hostile_job, "-o", str(out), "--redis", redis_server.url)
        assert r.returncode == 0, r.stderr
        page.goto(out.as_uri())
        check_literal(page, 5)
        assert errors == [], errors
    finally:
        context.close()


# --- 10. security headers on every response; the pages work under the policy --------------

SECURITY_HEADERS = {"x-frame-options": "DENY", "x-content-type-options": "nosniff",
                    "referrer-policy": "no-referrer"}


def check_headers(what: str, headers: dict[str, str] | httpx.Headers) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, (what, name, dict(headers))
    csp = {d.split()[0]: d.split()[1:] for d in
           (part.strip() for part in headers.get("content-security-policy", "").split(";"))
           if d}
    assert csp.get("default-src") == ["'none'"], (what, csp)
    # the Job view's parallel coordinates are WebGL (plotly's regl compiles with Function)
    scripts = ["'self'", "'unsafe-eval'"] if what == "job page" else ["'self'"]
    assert csp.get("script-src") == scripts, (what, csp)
    assert csp.get("frame-ancestors") == ["'none'"] and csp.get("base-uri") == ["'none'"]
    assert csp.get("connect-src") == ["'self'"], (what, csp)


def test_security_headers_on_every_kind_of_response(dashboard: str, guarded: str,
                                                    hostile_job: str) -> None:
    cases = [  # (what, base, method, path, extra headers, expected status)
        ("page", dashboard, "GET", "/", {}, 200),
        ("job page", dashboard, "GET", f"/jobs/{hostile_job}", {}, 200),
        ("api", dashboard, "GET", "/api/jobs", {}, 200),
        ("api document", dashboard, "GET", f"/api/jobs/{hostile_job}", {}, 200),
        ("download", dashboard, "GET", f"/api/jobs/{hostile_job}/download/results.csv", {},
         200),
        ("asset", dashboard, "GET", "/static/app.js", {}, 200),
        ("plotly", dashboard, "GET", "/static/plotly.min.js", {}, 200),
        ("probe", dashboard, "GET", "/healthz", {}, 200),
        ("no route", dashboard, "GET", "/no/such/page", {}, 404),
        ("no asset", dashboard, "GET", "/static/nope.js", {}, 404),
        ("no job", dashboard, "GET", "/api/jobs/no-such-job-000000", {}, 404),
        ("bad id", dashboard, "GET", "/api/jobs/Bad_ID!", {}, 400),
        ("no action header", dashboard, "POST", "/api/jobs", {}, 403),
        ("bad spec", dashboard, "POST", "/api/jobs", ACTION, 400),
        ("foreign host", dashboard, "GET", "/", {"Host": "attacker.example"}, 403),
        ("no token", guarded, "GET", "/api/jobs", {}, 401),
        ("token redirect", guarded, "GET", f"/?token={TOKEN}", {}, 303),
        ("with token", guarded, "GET", "/", {"Authorization": f"Bearer {TOKEN}"}, 200),
    ]
    with httpx.Client(timeout=60, follow_redirects=False) as http:
        for what, base, method, path, headers, status in cases:
            r = http.request(method, base + path, headers=headers, content="name: [")
            assert r.status_code == status, (what, r.status_code, r.text[:200])
            check_headers(what, r.headers)
        with http.stream("GET", f"{dashboard}/api/jobs/{hostile_job}/events") as events:
            assert events.status_code == 200
            check_headers("event stream", events.headers)
    page = httpx.get(f"{dashboard}/jobs/{hostile_job}", timeout=60).text
    assert "<script>" not in page, "no inline script: the policy allows none"


CSP_WATCH = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(
    `${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
"""


def test_every_page_works_under_the_policy(dashboard: str, hostile_job: str,
                                           browser: object) -> None:  # noqa: F811
    context = browser.new_context(viewport={"width": 1400, "height": 3000})  # type: ignore[attr-defined]
    context.add_init_script(CSP_WATCH)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    pages = [  # (path, a selector the drawn page has)
        ("/", f"#jobs a[href='/jobs/{hostile_job}']"),
        (f"/jobs/{hostile_job}", "#chart-importance.js-plotly-plot"),
        (f"/jobs/{hostile_job}/trials/t1", ".js-plotly-plot"),
        ("/workers", "#workers"),
        (f"/compare?jobs={hostile_job}", ".js-plotly-plot"),
        ("/submit", "textarea"),
    ]
    try:
        for path, drawn in pages:
            page.goto(dashboard + path)
            if path.startswith("/jobs/") and "/trials/" not in path:
                for chart in ("parallel", "slices", "importance"):
                    page.locator(f"#chart-{chart}").scroll_into_view_if_needed()
            page.wait_for_selector(drawn, timeout=60_000)
            page.wait_for_timeout(300)  # a violation is reported after the fact
            violations = page.evaluate("() => window.__violations")
            assert violations == [] and errors == [], (path, violations, errors)
    finally:
        context.close()
