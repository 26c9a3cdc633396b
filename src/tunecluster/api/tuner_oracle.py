"""``tuner.oracle`` of the drop-in: KerasTuner's reading API over the cluster's job.

The oracle itself runs on the chief; this object answers what a KerasTuner user reads
from ``tuner.oracle`` (``objective``, ``max_trials``, ``hyperparameters``,
``get_space()``, ``trials``, ``get_trial()``, ``get_best_trials()``) from the job's
results, as KerasTuner ``Trial`` and ``HyperParameters`` objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keras_tuner import HyperParameters, Objective

if TYPE_CHECKING:
    from tunecluster.api.keras_tuner import Tuner


class ClusterOracle:
    """What KerasTuner's ``tuner.oracle`` offers for reading the search."""

    def __init__(self, tuner: Tuner) -> None:
        self.tuner = tuner

    @property
    def objective(self) -> Objective:
        return self.tuner.objective

    @property
    def max_trials(self) -> int | None:
        return self.tuner.max_trials

    @property
    def hyperparameters(self) -> HyperParameters:
        """The search space: the one found at submit (``build_model`` run once here, as
        KerasTuner does), or the job's when this tuner reattached to it."""
        return self.get_space()

    def learn_space(self) -> None:
        """The search space as the chief's oracle holds it now: the one found at submit,
        grown by the entries trials declared (conditional ones, a fit's ``batch_size``),
        which KerasTuner's oracle adds as trials end. Read from the oracle's persisted
        trials (KerasTuner's own hyperparameter configs: data, parsed as such)."""
        import json

        from tunecluster.errors import TuneclusterError

        job = self.tuner.job
        if job is None:
            return
        try:
            base = job.record().space
            _, trials = job.client.store.jobs.oracle_state(job.id)
        except TuneclusterError:
            return
        space = HyperParameters.from_config(base or {"space": []})
        for text in trials.values():
            try:
                config = json.loads(text)["hyperparameters"]
                grown = HyperParameters.from_config(config)
            except (ValueError, KeyError, TypeError):
                continue  # a record that does not parse adds nothing
            space.merge([p for p in grown.space if not space._exists(p.name, p.conditions)])
        self.tuner._space = space.get_config()  # its values: each entry's default

    def get_space(self) -> HyperParameters:
        if self.tuner._space is None:
            if self.tuner.job is not None:
                self.tuner._space = self.tuner.job.record().space
            else:
                self.tuner._discover_space()
        return HyperParameters.from_config(self.tuner._space or {"space": []})

    @property
    def trials(self) -> dict[str, Any]:
        """Every trial of the search that ended or runs, by id (KerasTuner's ``Trial``);
        none before a search."""
        if self.tuner.job is None:
            return {}
        data = self.tuner.results()
        return {row["trial"]: self._trial(row) for row in data["trials"]}

    def get_trial(self, trial_id: str) -> Any:
        return self.trials[trial_id]

    def get_best_trials(self, num_trials: int = 1) -> list[Any]:
        """KerasTuner ``Trial`` objects (trial_id, score, hyperparameters, metrics)."""
        from tunecluster.store.results import leaderboard

        data = self.tuner.results()
        ranked = leaderboard(data["trials"], data["objective"]["direction"])
        return [self._trial(row) for row in ranked[:num_trials]]

    def _trial(self, row: dict[str, Any]) -> Any:
        from keras_tuner.engine.trial import Trial, TrialStatus

        hp = self.get_space()
        # every value the trial used: those of hyperparameters its build declared beyond
        # the space found at submit (conditional ones) too, so build_model(hp) rebuilds it
        hp.values.update({**(row.get("hyperparameters") or {}), **(row.get("tuner") or {})})
        status = {"COMPLETED": TrialStatus.COMPLETED, "FAILED": TrialStatus.FAILED,
                  "RUNNING": TrialStatus.RUNNING}.get(str(row.get("state")),
                                                      TrialStatus.STOPPED)
        trial = Trial(hp, trial_id=row["trial"], status=status)
        trial.score = row.get("score")
        trial.best_step = (row.get("best_epoch") or 1) - 1
        for name, value in (row.get("metrics") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                direction = (self.objective.direction if name == self.objective.name
                             else "max" if "acc" in name else "min")
                trial.metrics.register(name, direction=direction)
                trial.metrics.update(name, value, step=trial.best_step)
        return trial
