"""One Ray run of a job, in a child process of the chief (``python -m tunecluster.ray.driver``).

Why a child: a Ray driver whose cluster's GCS is gone hangs in Ray's calls and is then
ended by Ray itself (the whole process, after 60 s, or on a fatal check). Were the
driver the chief, losing the Ray head would take every job of the chief down with it.
The child is the Ray driver; the chief (``backend.RayJobRunner``) watches it and the
cluster, kills it when the cluster goes away or the chief stops leading, and starts
another run when the cluster is back.

The parent hands the run over on the child's stdin as JSON (between a process and its
own child, never through Redis or a command line; nothing is unpickled): the Redis URL
with its credentials, the job, its spec and space, the run number. The child writes one JSON line to
``result``: ``{"outcome": "done"}`` when Tune ended, ``"unreachable"`` when Ray could not
be reached, ``"refused"`` when it answered but ``ray.init`` failed, ``"redis"`` on a
Redis outage (the chief retries later), ``"error"`` with the job's error otherwise; and
touches ``connected`` once it is connected to Ray.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("tunecluster.ray")

STOP_WAIT_S = 10.0  # a stopped run may take this long to stop its trials before it is killed
WATCH_S = 0.5  # how often the parent looks at its child
PROBE_EVERY_S = 2.0  # how often the parent tests the Ray address while a run goes on


@dataclass(frozen=True)
class Outcome:
    kind: str  # done | unreachable | refused | redis | error | stopped
    message: str = ""


def payload(runner: Any, run: int, address: str | None, status: Path) -> bytes:
    """What the child needs to rebuild ``runner`` and drive run ``run`` (JSON)."""
    from tunecluster.spec import spec_to_json
    from tunecluster.store.portable import prefix, redis_url

    return json.dumps({
        "redis": redis_url(runner.store), "prefix": prefix(runner.store), "job": runner.job,
        "spec": json.loads(spec_to_json(runner.spec)), "space": runner.space,
        "artifacts": str(runner.artifacts), "uploaded": list(runner.uploaded),
        "chief": runner.chief_id, "run": run, "address": address, "status": str(status),
        "parent": os.getpid()}).encode()


class DriverProcess:
    """The parent's handle on one child run."""

    def __init__(self, data: bytes, status: Path) -> None:
        self.status = status
        self.proc = subprocess.Popen([sys.executable, "-m", "tunecluster.ray.driver"],
                                     stdin=subprocess.PIPE, start_new_session=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.close()

    @property
    def connected(self) -> bool:
        return (self.status / "connected").exists()

    def running(self) -> bool:
        return self.proc.poll() is None

    def outcome(self) -> Outcome | None:
        """What the child said it ended with (None: it said nothing: killed, crashed)."""
        try:
            data = json.loads((self.status / "result").read_text())
            return Outcome(str(data["outcome"]), str(data.get("message") or ""))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def stop(self, wait_s: float = STOP_WAIT_S) -> None:
        """Ask the run to stop (its trials end as Tune ends them), then kill what is left."""
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def kill(self) -> None:
        """Kill the child and everything it started (a local Ray's processes too)."""
        self._signal(signal.SIGKILL)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            log.warning("the Ray driver process %d did not exit", self.proc.pid)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def drive_run(runner: Any, run: int, address: str | None, waiting: Any) -> Outcome:
    """Ray run ``run`` of ``runner``'s job in a child process, watched until it ends: it
    is killed when Ray stops answering, stopped when the runner is."""
    from tunecluster.ray.reach import reachable

    status = Path(tempfile.mkdtemp(prefix="tc-ray-"))
    try:
        child = DriverProcess(payload(runner, run, address, status), status)
        next_probe = 0.0
        try:
            while child.running():
                if runner.stop_event.wait(WATCH_S):
                    child.stop()
                    return Outcome("stopped")
                if not child.connected:
                    continue
                waiting.reached()  # fenced: LostLeadership (this chief deposed) ends it
                if time.monotonic() >= next_probe:
                    next_probe = time.monotonic() + PROBE_EVERY_S
                    if not reachable(address):
                        child.kill()
                        return Outcome("unreachable", "it stopped answering")
        except BaseException:
            child.kill()  # no run goes on unwatched
            raise
        code = child.proc.returncode
        child.kill()  # what it left behind (a local Ray's processes)
        outcome = child.outcome()
        if outcome is not None:
            return outcome
        if not reachable(address):
            return Outcome("unreachable", f"the Ray driver exited ({code})")
        return Outcome("error", f"ray: the Ray driver process exited with status {code}"
                                " (see the chief's log)")
    finally:
        shutil.rmtree(status, ignore_errors=True)


# --- the child -----------------------------------------------------------------------------


def _write(status: Path, name: str, data: dict[str, Any]) -> None:
    tmp = status / f".{name}"
    tmp.write_text(json.dumps(data))
    tmp.replace(status / name)


def _die_with(parent: int) -> None:
    """Exit as soon as the chief ``parent`` is gone (SIGKILL included): a run nobody
    watches must not drive the job on. Linux's parent-death signal follows the thread
    that started this process; a watchdog covers the rest."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="chief-watchdog", daemon=True).start()


def _shutdown_ray(wait_s: float = 30.0) -> None:
    """Disconnect (and stop a local Ray this process started), within ``wait_s``."""
    import ray

    done = threading.Thread(target=ray.shutdown, daemon=True)
    done.start()
    done.join(wait_s)


def main() -> int:
    from tunecluster.engine.keras_free import import_keras_tuner
    from tunecluster.ray.backend import RayJobRunner
    from tunecluster.ray.connect import RayRefused, RayUnreachable, connect_ray
    from tunecluster.spec import parse_spec
    from tunecluster.store import Keys, Store
    from tunecluster.store.connection import connect, retryable

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = json.loads(sys.stdin.buffer.read())
    status = Path(data["status"])
    if data.get("parent"):
        _die_with(int(data["parent"]))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    store = Store(connect(data["redis"]), Keys(data["prefix"]))
    runner = RayJobRunner(store, data["job"], parse_spec(data["spec"]), data["space"],
                          data["artifacts"], uploaded=data["uploaded"],
                          chief_id=data["chief"])
    runner.stop_event = stop  # the stopper ends the run on SIGTERM
    try:
        import_keras_tuner()  # KerasTuner's oracles without TensorFlow, as in the chief
        started = time.monotonic()
        connect_ray(data["address"])
        (status / "connected").touch()
        log.info("job %s: connected to Ray in %.1f s", data["job"], time.monotonic() - started)
        runner.tune(int(data["run"]))
        result = {"outcome": "done"}
    except RayUnreachable as exc:
        result = {"outcome": "unreachable", "message": str(exc)}
    except RayRefused as exc:
        result = {"outcome": "refused", "message": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported to the parent as the job's error
        if retryable(exc):
            result = {"outcome": "redis", "message": str(exc)[:300]}
        else:
            log.exception("Ray run of job %s failed", data["job"])
            result = {"outcome": "error",
                      "message": f"ray: {type(exc).__name__}: {str(exc).strip()[:500]}"}
    if result["outcome"] not in ("unreachable", "refused"):  # no cluster: shutdown hangs
        _shutdown_ray()
    _write(status, "result", result)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no Ray shutdown hooks: with the cluster gone they hang


if __name__ == "__main__":
    sys.exit(main())
