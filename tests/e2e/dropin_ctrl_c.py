"""A drop-in search that a test stops with one real SIGINT (test_keras_tuner_dropin.py).

    python dropin_ctrl_c.py DIRECTORY [MARKER]

Searches on the cluster of ``$TUNECLUSTER_REDIS_URL`` (20 trials of 200 epochs: it runs
until it is stopped), project ``DIRECTORY/interrupted``. With ``MARKER``: once a trial
has reported an epoch, the search's own thread runs a finalizer that takes seconds, as
TensorFlow's clean-up of collected objects does, and creates ``MARKER`` when it starts,
so that the test's SIGINT lands there, where Python drops the ``KeyboardInterrupt`` it
raises ("Exception ignored in"). Only where the finalizer runs is arranged (a wrapper
around ``JobStore.get``); the search, its Redis reads and the cluster are the real ones.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import dropin_notebook_style as example  # noqa: E402

import tunecluster.keras_tuner as kt  # noqa: E402
from tunecluster.store.jobs import JobStore  # noqa: E402


class _SlowCleanUp:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __del__(self) -> None:
        self.marker.write_text("in the finalizer\n")
        time.sleep(30)  # the test's SIGINT ends it: its KeyboardInterrupt is dropped


def hold_a_finalizer_once_a_trial_trains(marker: Path) -> None:
    """The search's reads of the job run a slow finalizer once, after a trial's epoch."""
    read = JobStore.get
    held: list[bool] = []

    def get(self: JobStore, job: str):  # type: ignore[no-untyped-def]
        if not held and threading.current_thread() is threading.main_thread() and any(
                t.get("state") == "RUNNING" and t.get("last_epoch") for t in self.trials(job)):
            held.append(True)
            garbage = _SlowCleanUp(marker)
            del garbage  # its finalizer runs here, in the search's thread
        return read(self, job)

    JobStore.get = get  # type: ignore[method-assign]


def main() -> None:
    directory = sys.argv[1]
    if len(sys.argv) > 2:
        hold_a_finalizer_once_a_trial_trains(Path(sys.argv[2]))
    tuner = kt.RandomSearch(example.build_model, objective="val_accuracy", max_trials=20,
                            directory=directory, project_name="interrupted")
    tuner.search(example.X_train, example.y_train, epochs=200, verbose=0,
                 validation_data=(example.X_valid, example.y_valid))


if __name__ == "__main__":
    main()
