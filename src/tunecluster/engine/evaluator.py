"""The test-split evaluation, in a child process of the chief that keeps Keras warm.

The chief itself never imports TensorFlow (``keras_free.py``): it starts in a fraction
of a second and stays small. The one thing it does that needs Keras, scoring the best
model on the test split once per job (``finalize.evaluate_on_test``), runs here instead:
a long-lived child started when the chief becomes active, at a lower CPU priority, so that its
TensorFlow import takes the CPU the trial processes leave over rather than delaying
them; it is usually warm by the time a job finishes. A custom model's module (its own
layers or metrics, needed to load its model) is run here too, not in the chief.

Messages are JSON over a local pipe. A child that crashes or hangs past
``EVALUATE_TIMEOUT_S`` is killed and the evaluation raises ``EvaluationFailed``; the
next evaluation starts a fresh child. The child dies with the chief.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tunecluster.errors import TuneclusterError

log = logging.getLogger("tunecluster.chief")

EVALUATE_TIMEOUT_S = float(os.environ.get("TUNECLUSTER_EVALUATE_TIMEOUT_S", "900"))
NICE = 10  # the warm-up yields to trial processes; evaluations are short
WATCHDOG_S = 0.5


class EvaluationFailed(TuneclusterError, RuntimeError):
    """The evaluation process crashed, hung, or could not score the model."""


class Evaluator:
    """The chief's handle on its evaluation process (one per chief process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: Connection | None = None

    def start(self) -> None:
        """Start the process now (it imports TensorFlow in the background)."""
        with self._lock:
            self._ensure()

    def _ensure(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._process = ctx.Process(target=serve, args=(child, os.getpid()), daemon=True,
                                    name="tunecluster-evaluator")
        self._process.start()
        child.close()
        self._conn = parent

    def evaluate(self, spec_json: str, model_path: str | Path, files: Mapping[str, str],
                 values: Mapping[str, Any] | None = None) -> dict[str, float]:
        """Test metrics of the model at ``model_path`` (``files``: the job's data paths,
        already resolved to local files)."""
        with self._lock:
            self._ensure()
            assert self._conn is not None
            self._conn.send_bytes(json.dumps({"spec": spec_json, "model": str(model_path),
                                              "files": dict(files),
                                              "values": None if values is None
                                              else dict(values)}).encode())
            deadline = time.monotonic() + EVALUATE_TIMEOUT_S
            while not self._conn.poll(0.2):
                if not self._process.is_alive():
                    code = self._process.exitcode
                    self._process = None
                    raise EvaluationFailed(f"the evaluation process died (exit code {code})")
                if time.monotonic() > deadline:
                    self.stop()
                    raise EvaluationFailed(f"the evaluation took over {EVALUATE_TIMEOUT_S:g} s")
            try:
                answer = json.loads(self._conn.recv_bytes())
            except (EOFError, OSError) as exc:
                self.stop()
                raise EvaluationFailed(f"the evaluation process went away ({exc})") from None
        if "error" in answer:
            raise EvaluationFailed(answer["error"])
        return {k: float(v) for k, v in answer["test"].items()}

    def stop(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._process = None


_EVALUATOR = Evaluator()


def evaluator() -> Evaluator:
    """This process's evaluator (started on first use, or by ``start``)."""
    return _EVALUATOR


# --- the child --------------------------------------------------------------------------


def serve(conn: Connection, parent: int) -> None:
    """The evaluation process: import Keras once, then answer requests until the pipe
    closes."""
    _die_with(parent)
    try:
        os.nice(NICE)
    except OSError:
        pass
    from tunecluster.quiet import import_tensorflow

    import_tensorflow()
    while True:
        try:
            request = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            answer: dict[str, Any] = {"test": _evaluate(request)}
        except Exception as exc:  # noqa: BLE001 - reported to the chief, in one line
            text = (str(exc).strip().splitlines() or [""])[0][:500]
            answer = {"error": f"{type(exc).__name__}: {text}"}
        conn.send_bytes(json.dumps(answer).encode())


def _evaluate(request: Mapping[str, Any]) -> dict[str, float]:
    from tunecluster.engine.finalize import score_on_test
    from tunecluster.spec.load import spec_from_json

    files = dict(request.get("files") or {})
    values = request.get("values")
    return score_on_test(spec_from_json(request["spec"]), Path(request["model"]),
                         lambda path: files.get(path, path),
                         dict(values) if isinstance(values, dict) else None)


def _die_with(parent: int) -> None:
    """Exit as soon as the chief ``parent`` is gone (SIGKILL included)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)

    def watch() -> None:  # PDEATHSIG follows the starting thread, not the process
        while os.getppid() == parent:
            time.sleep(WATCHDOG_S)
        os._exit(0)

    threading.Thread(target=watch, name="chief-watchdog", daemon=True).start()
