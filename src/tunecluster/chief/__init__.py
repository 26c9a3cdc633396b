"""The chief: hosts one KerasTuner oracle per job and drives the queue in Redis."""

from tunecluster.chief.loop import Chief

__all__ = ["Chief"]
