"""The chief: hosts one KerasTuner oracle per job and drives the queue in Redis."""

from tunecluster.chief.loop import Chief, run_chief

__all__ = ["Chief", "run_chief"]
