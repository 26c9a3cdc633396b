"""A tunecluster worker whose trials do no work: the real ``Worker`` (claim loop,
heartbeat, leases) and a real trial process behind its real pipe, which for each trial
it is handed reports one epoch and finishes through the same store calls (and Lua
scripts) as ``worker/child.py``, without importing TensorFlow or training.

    PYTHONPATH=src:bench python bench/null_worker.py REDIS_URL ARTIFACTS [SLOTS]
"""

from __future__ import annotations

import json
import sys
from multiprocessing.connection import Connection
from typing import Any


def null_child_main(conn: Connection, redis_url: str, artifacts: str, worker: str,
                    env: dict[str, str], parent: int | None = None) -> None:
    """The trial process: ``child_main``'s message loop with a null trial."""
    from tunecluster.store import Claim, LostLease, Store
    from tunecluster.worker.child import die_with_parent

    if parent is not None:
        die_with_parent(parent)
    store = Store.from_url(redis_url)
    while True:
        try:
            message = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if message.get("exit"):
            return
        claim = Claim(message["job"], message["trial"], int(message["attempt"]),
                      dict(message.get("values") or {}))
        outcome: dict[str, Any]
        try:
            score = (hash(claim.trial) % 1000) / 1000.0
            metrics = {"loss": score, "val_loss": score}
            store.queue.report_epoch(claim, worker, 1, metrics)
            recorded = store.queue.finish(claim, worker, "COMPLETED", {
                "score": repr(score), "metrics": metrics, "best_epoch": "1"})
            outcome = {"outcome": "completed" if recorded else "lost"}
        except LostLease as exc:
            outcome = {"outcome": "lost", "error": str(exc)}
        conn.send_bytes(json.dumps(outcome).encode())


def main() -> None:
    import null_worker  # this file as a module: the spawned trial process imports it

    from tunecluster.store import Store
    from tunecluster.worker import loop

    url, artifacts = sys.argv[1], sys.argv[2]
    slots = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    # The Worker starts each trial process with loop.trial_process: the null one instead.
    loop.trial_process = null_worker.null_child_main  # type: ignore[assignment]
    loop.Worker(Store.from_url(url), url, artifacts, slots=slots).run()


if __name__ == "__main__":
    main()
