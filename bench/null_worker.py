"""A tunecluster worker whose trial process is replaced by a null trial (no TensorFlow):
the real claim loop, heartbeat and lease code, one epoch report and a finish per trial."""

from __future__ import annotations

import sys
from typing import Any

from tunecluster.store import Claim, Store
from tunecluster.worker.loop import Worker


class NullChild:
    def __init__(self, store: Store, worker: str) -> None:
        self.store, self.worker, self.trials = store, worker, 0

    def run(self, claim: Claim, stopping: Any) -> dict[str, Any]:
        self.trials += 1
        score = (hash(claim.trial) % 1000) / 1000.0
        metrics = {"loss": score, "val_loss": score}
        self.store.queue.report_epoch(claim, self.worker, 1, metrics)
        self.store.queue.finish(claim, self.worker, "COMPLETED",
                                {"score": repr(score), "metrics": metrics, "best_epoch": "1"})
        return {"outcome": "completed"}

    def ensure(self) -> None:
        pass

    def close(self) -> None:
        pass


def main() -> None:
    url, artifacts = sys.argv[1], sys.argv[2]
    store = Store.from_url(url)
    worker = Worker(store, url, artifacts, slots=1, heartbeat_s=1.0)
    worker.children = [NullChild(store, worker.worker_id)]  # type: ignore[list-item]
    worker.run()


if __name__ == "__main__":
    main()
