"""Asynchronous successive halving (ASHA, Li et al., MLSys 2020) as a KerasTuner oracle.

Rungs end at ``min_epochs * factor**k`` epochs, below ``max_epochs``, and the last at
``max_epochs``. Every new configuration runs to the first rung. A trial that reaches
its rung ends there (its model file kept, its worker slot free for other work); when
it is in the top ``1/factor`` of the trials that completed its rung, it is promoted: a
new trial continues it, loading its weights and training from the rung's epoch to the
next rung's (``tuner/trial_id``, ``tuner/initial_epoch``, ``tuner/epochs``: the same
hand-over as KerasTuner's Hyperband, which the workers already run), so no epoch is
trained twice. Promotions go first, from the highest rung down; otherwise a new
configuration is drawn. No worker waits for a rung to fill.

Once no new configuration will be drawn (``max_configs`` reached or the space
exhausted), a rung whose trials have all ended, with every rung below it settled,
promotes the top ``ceil(n/factor)`` instead of ``floor(n/factor)``: a finite search
still trains its best configurations to ``max_epochs``.

The rung state is derived from the trials themselves (each records its rung and the
trial it continues), which the chief persists: a new chief rebuilds it exactly, with
no state of ASHA's own to keep in step.
"""

from __future__ import annotations

import math
from typing import Any

from keras_tuner import Oracle

from tunecluster.states import OracleStatus

PARENT, EPOCHS, INITIAL_EPOCH, RUNG = ("tuner/trial_id", "tuner/epochs",
                                       "tuner/initial_epoch", "tuner/round")


def rung_epochs(min_epochs: int, factor: int, max_epochs: int) -> list[int]:
    """The epoch at which each rung ends: ``[1, 3, 9]`` for 1, 3, 9; ``[2, 6, 10]``
    for 2, 3, 10."""
    if not 1 <= min_epochs < max_epochs or factor < 2:
        raise ValueError(f"ASHA needs 1 <= min_epochs < max_epochs and factor >= 2, got"
                         f" {min_epochs}, {max_epochs}, {factor}")
    ends = []
    epochs = min_epochs
    while epochs < max_epochs:
        ends.append(epochs)
        epochs *= factor
    return [*ends, max_epochs]


class AshaOracle(Oracle):
    """``max_configs``: how many configurations to draw (the job's ``max_trials``;
    promotions are trials of their own on top). KerasTuner's ``max_trials`` stays None,
    since it would count promotions too."""

    def __init__(self, max_epochs: int, min_epochs: int = 1, factor: int = 3,
                 max_configs: int | None = None, **kwargs: Any) -> None:
        kwargs.pop("max_trials", None)
        super().__init__(max_trials=None, **kwargs)
        self.max_epochs, self.min_epochs, self.factor = max_epochs, min_epochs, factor
        self.max_configs = max_configs
        self.rungs = rung_epochs(min_epochs, factor, max_epochs)

    def _compute_values_hash(self, values: dict[str, Any]) -> str:
        # A configuration's identity leaves out where it stands in the rungs: a
        # promotion is the same configuration, and a new draw must not repeat it.
        return super()._compute_values_hash(
            {k: v for k, v in values.items() if not str(k).startswith("tuner/")})

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        promote = self.next_promotion()
        if promote is not None:
            return {"status": OracleStatus.RUNNING, "values": self._continuation(promote)}
        if not self._draws_over():
            values = self._random_values()
            if values is not None:
                return {"status": OracleStatus.RUNNING, "values": {
                    **values, EPOCHS: self.rungs[0], INITIAL_EPOCH: 0, RUNG: 0}}
            self._space_exhausted = True
            promote = self.next_promotion()  # the rungs may close now
            if promote is not None:
                return {"status": OracleStatus.RUNNING, "values": self._continuation(promote)}
        return {"status": OracleStatus.IDLE if self.ongoing_trials else OracleStatus.STOPPED}

    _space_exhausted = False

    def _draws_over(self) -> bool:
        drawn = sum(1 for t in self.trials.values() if _rung(t) == 0)
        return self._space_exhausted or (
            self.max_configs is not None and drawn >= self.max_configs)

    def _continuation(self, parent: Any) -> dict[str, Any]:
        rung = _rung(parent) + 1
        values = {k: v for k, v in parent.hyperparameters.values.items()
                  if not str(k).startswith("tuner/")}
        return {**values, PARENT: parent.trial_id, EPOCHS: self.rungs[rung],
                INITIAL_EPOCH: self.rungs[rung - 1], RUNG: rung}

    def next_promotion(self) -> Any | None:
        """The trial to continue next, or None: among the trials not yet continued
        that are in their rung's quota, the best of the highest rung."""
        top = len(self.rungs) - 1
        members: list[list[Any]] = [[] for _ in self.rungs]
        open_below = [False] * len(self.rungs)  # a trial of this rung still runs
        promoted = set()
        for trial in self.trials.values():
            rung = _rung(trial)
            if rung is None or rung > top:
                continue  # a warm-start seed, or a trial of another layout
            if trial.status in (OracleStatus.RUNNING, OracleStatus.IDLE):
                open_below[rung] = True
            elif trial.status == OracleStatus.COMPLETED and trial.score is not None:
                members[rung].append(trial)
            parent = trial.hyperparameters.values.get(PARENT)
            if parent is not None:
                promoted.add(str(parent))
        draws_over = self._draws_over()
        settled = True  # every rung below the current one has ended and promoted its share
        candidates: list[list[Any]] = []
        for rung in range(top):
            done = sorted(members[rung], key=lambda t: t.score,
                          reverse=self.objective.direction == "max")
            settled = settled and draws_over and not open_below[rung]
            share = len(done) / self.factor
            quota = math.ceil(share) if settled else math.floor(share)
            waiting = [t for t in done[:quota] if t.trial_id not in promoted]
            candidates.append(waiting)
            settled = settled and not waiting
        for waiting in reversed(candidates):
            if waiting:
                return waiting[0]
        return None


def _rung(trial: Any) -> int | None:
    rung = trial.hyperparameters.values.get(RUNG)
    return None if rung is None else int(rung)
