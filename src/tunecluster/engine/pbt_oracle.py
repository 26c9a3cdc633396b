"""Population-based training (PBT, Jaderberg et al. 2017) as a KerasTuner oracle.

``population`` members train side by side, ``interval`` epochs at a time: each stretch
is a trial of its own that continues the member's previous one (its weights loaded,
its epochs counted on: ``tuner/trial_id``, ``tuner/initial_epoch``, ``tuner/epochs``,
the hand-over the workers already run for Hyperband and ASHA), so no epoch is trained
twice. When a member's stretch ends, the member is ranked against the others by their
latest scores: in the bottom ``quantile`` it *exploits* a member of the top quantile
(continues that member's latest trial: its weights and its epoch count) and *explores*
(its float hyperparameters, such as the learning rate or a dropout rate, multiplied by
0.8 or 1.25 within their range; the structural ones, layer counts and sizes and
choices, are the source's, so the weights fit); otherwise it continues itself
unchanged. A member ends when its epochs reach ``max_epochs``.

Each trial records its member (``tuner/member``) and the trial it continued: the
lineage. Like ASHA's rungs, all of it is read from the trials the chief persists, so a
new chief continues the same population; the random draws are seeded per trial.
"""

from __future__ import annotations

import math
import random
from typing import Any

from keras_tuner import Oracle

from tunecluster.states import OracleStatus

PARENT, EPOCHS, INITIAL_EPOCH = "tuner/trial_id", "tuner/epochs", "tuner/initial_epoch"
MEMBER, EXPLOITED = "tuner/member", "tuner/exploited"  # the source member, on an exploit
PERTURB = (0.8, 1.25)


class PbtOracle(Oracle):
    def __init__(self, max_epochs: int, population: int = 4, interval: int = 1,
                 quantile: float = 0.25, **kwargs: Any) -> None:
        kwargs.pop("max_trials", None)
        super().__init__(max_trials=None, **kwargs)
        if population < 2 or interval < 1 or not 0 < quantile <= 0.5:
            raise ValueError(f"PBT needs population >= 2, interval >= 1 and 0 < quantile"
                             f" <= 0.5, got {population}, {interval}, {quantile}")
        self.max_epochs, self.population = max_epochs, population
        self.interval, self.quantile = interval, quantile

    def _compute_values_hash(self, values: dict[str, Any]) -> str:
        # a member's configuration, wherever it stands in training
        return super()._compute_values_hash(
            {k: v for k, v in values.items() if not str(k).startswith("tuner/")})

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        latest = self.members()
        if len(latest) < self.population:
            values = self._random_values()
            if values is not None:
                return {"status": OracleStatus.RUNNING, "values": {
                    **values, MEMBER: len(latest), INITIAL_EPOCH: 0,
                    EPOCHS: min(self.interval, self.max_epochs)}}
            if not latest and not self.ongoing_trials:
                return {"status": OracleStatus.STOPPED}
        for member, trial in sorted(latest.items(), key=lambda kv: self._ended_at(kv[1])):
            if trial.status == OracleStatus.COMPLETED and int(
                    trial.hyperparameters.values[EPOCHS]) < self.max_epochs:
                return {"status": OracleStatus.RUNNING, "values": self._next(member, trial, latest,
                                                                  trial_id)}
        return {"status": OracleStatus.IDLE if self.ongoing_trials else OracleStatus.STOPPED}

    def members(self, scored: bool = False) -> dict[int, Any]:
        """Each member's latest trial (the one no other trial of it continues); with
        ``scored``, its latest completed trial with a score (what it is ranked by)."""
        latest: dict[int, Any] = {}
        for trial in self.trials.values():
            member = trial.hyperparameters.values.get(MEMBER)
            if member is None:
                continue  # a warm-start seed
            if scored and (trial.status != OracleStatus.COMPLETED or trial.score is None):
                continue
            member = int(member)
            known = latest.get(member)
            if known is None or self._started_at(trial) > self._started_at(known):
                latest[member] = trial
        return latest

    def _started_at(self, trial: Any) -> int:
        starts = self.start_order
        return starts.index(trial.trial_id) if trial.trial_id in starts else -1

    def _ended_at(self, trial: Any) -> int:
        ends = self.end_order
        return ends.index(trial.trial_id) if trial.trial_id in ends else len(ends)

    def _next(self, member: int, trial: Any, latest: dict[int, Any],
              trial_id: str) -> dict[str, Any]:
        ranked = sorted(self.members(scored=True).values(), key=lambda t: t.score,
                        reverse=self.objective.direction == "max")
        cut = max(1, math.floor(len(ranked) * self.quantile)) if len(ranked) > 1 else 0
        top, bottom = ranked[:cut], ranked[len(ranked) - cut:] if cut else []
        source, values = trial, _own(trial)
        # a source as far on as this member at least (a member never goes back in
        # epochs) and not at its end (the copy would have no epoch left to train)
        ahead = [t for t in top if int(trial.hyperparameters.values[EPOCHS]) <= int(
            t.hyperparameters.values[EPOCHS]) < self.max_epochs]
        if trial in bottom and ahead and trial not in top:
            rng = random.Random(f"{self.seed}:{trial_id}")  # the same draw on a restore
            source = rng.choice(ahead)
            values = self._explore(_own(source), rng)
            values[EXPLOITED] = int(source.hyperparameters.values[MEMBER])
        start = int(source.hyperparameters.values[EPOCHS])
        return {**values, MEMBER: member, PARENT: source.trial_id, INITIAL_EPOCH: start,
                EPOCHS: min(start + self.interval, self.max_epochs)}

    def _explore(self, values: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """Floats multiplied by 0.8 or 1.25, kept within their range (and step); the
        rest as they are: they shape the model whose weights are copied."""
        out = dict(values)
        for hp in self.hyperparameters.space:
            if type(hp).__name__ != "Float" or hp.name not in out:
                continue
            value = float(out[hp.name]) * rng.choice(PERTURB)
            value = min(max(value, hp.min_value), hp.max_value)
            if hp.step:
                value = hp.min_value + round((value - hp.min_value) / hp.step) * hp.step
            out[hp.name] = value
        return out


def _own(trial: Any) -> dict[str, Any]:
    return {k: v for k, v in trial.hyperparameters.values.items()
            if not str(k).startswith("tuner/")}
