"""What an open dashboard page costs a running job (issue 12: under 5 % of wall time).

One embedded cluster (real Redis, chief, workers) runs the same small job several
times, alternately without and with an open page, after one warm-up job. "With": the
real dashboard server in its own process (`tunecluster dashboard`), and a client that
acts like the Job view, only more eagerly: it holds the job's server-sent event stream,
refetches the whole job document (results, histories, charts, importance) after every
event it receives (the page waits up to 1.5 s and merges), and polls the Jobs list every
3 s. `--browser` opens the real page in Debian's chromium instead. Prints each run's wall
time (submit to final state), the medians, and the ratio with/without.

    .venv/bin/python bench/dashboard_overhead.py [--trials 6 --epochs 4 --repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Page:
    """A client that behaves like an open Job view (see the module's docstring)."""

    eager = False  # --eager: refetch after epochs too

    def __init__(self, url: str, job: str) -> None:
        self.url, self.job = url, job
        self.stop = threading.Event()
        self.dirty = threading.Event()
        self.events = self.fetches = 0
        self.latencies_ms: list[float] = []  # epoch written in Redis -> received here
        self.threads = [threading.Thread(target=self._stream, daemon=True),
                        threading.Thread(target=self._refetch, daemon=True),
                        threading.Thread(target=self._poll, daemon=True)]

    def __enter__(self) -> Page:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()

    def _stream(self) -> None:
        with httpx.Client(timeout=None) as http:
            http.get(f"{self.url}/api/jobs/{self.job}")
            with http.stream("GET", f"{self.url}/api/jobs/{self.job}/events") as r:
                for line in r.iter_lines():
                    if self.stop.is_set():
                        return
                    if line.startswith("data: "):
                        self.events += 1
                        event = json.loads(line[6:])
                        if event["type"] == "epoch":  # the id is Redis time (same host)
                            written = int(event["id"].split("-")[0])
                            self.latencies_ms.append(time.time() * 1000 - written)
                        if event["type"] != "epoch" or self.eager:
                            self.dirty.set()

    def _refetch(self) -> None:
        """What the page does after events: refetch the job document, coalesced."""
        with httpx.Client(timeout=60) as http:
            while not self.stop.is_set():
                if self.dirty.wait(0.5):
                    self.dirty.clear()
                    http.get(f"{self.url}/api/jobs/{self.job}")
                    self.fetches += 1

    def _poll(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.stop.wait(3.0):
                http.get(f"{self.url}/api/jobs")


class BrowserPage:
    """The real Job view in headless chromium (the browser is started once, before the
    runs: only opening the page falls within a job's time, as when a person opens it)."""

    browser: object = None

    def __init__(self, url: str, job: str) -> None:
        self.url, self.job = url, job
        self.events = self.fetches = 0
        self.latencies_ms: list[float] = []

    @classmethod
    def launch(cls) -> None:
        from playwright.sync_api import sync_playwright

        cls._pw = sync_playwright().start()
        cls.browser = cls._pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"])

    def __enter__(self) -> BrowserPage:
        self._page = self.browser.new_page()  # type: ignore[attr-defined]
        self._page.on("request", lambda _r: setattr(self, "fetches", self.fetches + 1))
        self._page.goto(f"{self.url}/jobs/{self.job}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._page.close()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def browser_cpu_s() -> float:
    """CPU seconds of this process's descendants: Playwright's driver and chromium."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            if "chrom" not in child.name() and child.name() != "node":
                continue  # the cluster's roles and the dashboard are children too
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def run_once(store: object, job_file: Path, overrides: list[str], page_url: str | None,
             browser: bool) -> tuple[float, int, int, list[float]]:
    from tunecluster.api.submission import prepare_job, submit, wait

    prepared = prepare_job(job_file, overrides)
    start = time.monotonic()
    job = submit(store, prepared)  # type: ignore[arg-type]
    if page_url is None:
        result = wait(store, job, timeout_s=1800)  # type: ignore[arg-type]
        events = fetches = 0
        latencies: list[float] = []
    else:
        opener = BrowserPage if browser else Page
        with opener(page_url, job) as page:
            result = wait(store, job, timeout_s=1800)  # type: ignore[arg-type]
            events, fetches, latencies = page.events, page.fetches, page.latencies_ms
    elapsed = time.monotonic() - start
    assert result["state"] == "completed", result.get("error")
    return elapsed, events, fetches, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each kind")
    parser.add_argument("--browser", action="store_true", help="a real chromium page")
    parser.add_argument("--eager", action="store_true",
                        help="the client refetches the job after every epoch too")
    args = parser.parse_args()
    Page.eager = args.eager

    from tunecluster.cluster import LocalCluster
    from tunecluster.store import Store

    overrides = [f"search.max_trials={args.trials}", f"train.epochs={args.epochs}",
                 "train.early_stopping.patience=100", "name=bench-dashboard"]
    job_file = ROOT / "examples" / "digits.yaml"
    with tempfile.TemporaryDirectory(prefix="tc-bench-dash-") as tmp, \
            LocalCluster(workers=args.workers, artifacts=Path(tmp) / "artifacts") as cluster:
        store = Store.from_url(cluster.url)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "tunecluster", "dashboard",
                                   "--redis", cluster.url, "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the dashboard did not start")
                time.sleep(0.3)
            if args.browser:
                BrowserPage.launch()
            print("warm-up job ...", flush=True)
            run_once(store, job_file, overrides, None, False)
            times: dict[str, list[float]] = {"without page": [], "with page": []}
            latencies: list[float] = []
            dashboard_cpu: list[float] = []
            for i in range(args.repeats):
                # ABBA order: a drift of the machine's load hits both kinds alike
                kinds = ("without page", "with page")
                for kind in kinds if i % 2 == 0 else kinds[::-1]:
                    cpu, page_cpu = cpu_s(server.pid), browser_cpu_s()
                    elapsed, events, fetches, pushed = run_once(
                        store, job_file, overrides, url if kind == "with page" else None,
                        args.browser)
                    cpu = cpu_s(server.pid) - cpu
                    page_cpu = browser_cpu_s() - page_cpu
                    times[kind].append(elapsed)
                    latencies += pushed
                    if kind == "with page":
                        dashboard_cpu.append(cpu)
                    what = "requests" if args.browser else "refetches"
                    extra = f"  ({events} events pushed, {fetches} {what}," \
                        f" dashboard CPU {cpu:.2f} s" + (f", browser CPU {page_cpu:.2f} s"
                                                         if args.browser else "") + ")" \
                        if kind == "with page" else ""
                    print(f"run {i + 1} {kind:<13} {elapsed:7.2f} s{extra}", flush=True)
        finally:
            server.terminate()
            server.wait(10)
    without = statistics.median(times["without page"])
    with_page = statistics.median(times["with page"])
    print(f"\n{args.trials} trials x {args.epochs} epochs, {args.workers} workers,"
          f" {'chromium page' if args.browser else 'page client'}:")
    print(f"median without page {without:.2f} s, with page {with_page:.2f} s,"
          f" ratio {with_page / without:.3f} ({(with_page / without - 1) * 100:+.1f} %)")
    total = {k: sum(v) for k, v in times.items()}
    print(f"total without page {total['without page']:.2f} s, with page"
          f" {total['with page']:.2f} s, ratio {total['with page'] / total['without page']:.3f}")
    if dashboard_cpu:
        share = sum(dashboard_cpu[1:] or dashboard_cpu) / sum(
            times["with page"][1:] or times["with page"]) / (os.cpu_count() or 1)
        print(f"dashboard process CPU while a page is open: {statistics.median(dashboard_cpu):.2f}"
              f" s per job (median), {share * 100:.1f} % of this machine's"
              f" {os.cpu_count()} cores over the job (first run, which imports"
              " scikit-learn, left out)")
    if latencies:
        ordered = sorted(latencies)
        print(f"epoch written in Redis -> received by the page: median"
              f" {statistics.median(ordered):.0f} ms, 95th percentile"
              f" {ordered[int(0.95 * (len(ordered) - 1))]:.0f} ms, max {ordered[-1]:.0f} ms"
              f" ({len(ordered)} epochs)")


if __name__ == "__main__":
    main()
