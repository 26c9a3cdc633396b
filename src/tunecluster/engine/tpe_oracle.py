"""Optuna's TPE sampler behind KerasTuner's ``Oracle`` interface (``search.algorithm: tpe``).

``TPEOracle.populate_space`` asks an in-memory optuna study for the next trial's values:
each KerasTuner hyperparameter that is active (conditions as KerasTuner decides them)
is suggested from the optuna distribution it maps to (``distribution``); a ``Fixed``
one keeps its value. Every trial the oracle holds is mirrored in the study: a completed
one with its score, a failed one as failed, a running one as running, so that TPE's
constant liar keeps concurrent suggestions apart.

The study is never persisted (no pickle): it is a function of the oracle's own trials
and is rebuilt from them (``optuna.trial.create_trial`` + ``study.add_trial``, in start
order) whenever it does not mirror them, as after a restore by a new chief. Between
rebuilds it is kept up to date incrementally, in a way that leaves it equal to a rebuilt
one. Each suggestion's sampler is seeded from the oracle's seed and the trial count, so
the next suggestion depends on the trials only: a restored oracle suggests what the
uninterrupted one would have.

optuna is imported only when a study is built (``require_optuna``): the module loads
without it, and a tpe job on a chief without it fails with one line saying what to install.
"""

from __future__ import annotations

import math
from typing import Any

from keras_tuner import Oracle

from tunecluster.states import OracleStatus

INSTALL_HINT = "pip install 'tunecluster[tpe]'"
_ATTEMPTS = 20  # suggestions tried before a duplicate of a tried trial gives way


def require_optuna() -> Any:
    """The optuna module, or a one-line ``ValueError`` saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise ValueError("search.algorithm: tpe needs optuna where the chief runs:"
                         f" {INSTALL_HINT}") from None
    return optuna


def distribution(hp: Any) -> tuple[Any, bool] | None:
    """The optuna distribution a KerasTuner hyperparameter maps to, and whether its values
    travel as KerasTuner's probabilities (``value_to_prob``) in [0, 1] rather than as
    themselves (a continuous reverse-log range, which optuna has no distribution for);
    None for a ``Fixed`` one (nothing to sample)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    kind = type(hp).__name__
    if kind == "Fixed":
        return None
    if kind == "Boolean":
        return CategoricalDistribution((False, True)), False
    if kind == "Choice":
        return CategoricalDistribution(tuple(hp.values)), False
    if kind not in ("Int", "Float"):
        raise ValueError(f"hyperparameter {hp.name!r}: TPE samples Int, Float, Choice,"
                         f" Boolean and Fixed, not {kind}")
    low, high, step, sampling = hp.min_value, hp.max_value, hp.step, hp.sampling
    if sampling == "linear":
        if kind == "Int":
            step = int(step or 1)
            return IntDistribution(int(low), int(low + (high - low) // step * step),
                                   step=step), False
        if step is None:
            return FloatDistribution(float(low), float(high)), False
        count = math.floor((high - low) / step + 1e-9)
        return FloatDistribution(float(low), float(low + count * step), step=step), False
    if sampling == "log" and step is None:
        if kind == "Int":
            return IntDistribution(int(low), int(high), log=True), False
        return FloatDistribution(float(low), float(high), log=True), False
    if step is not None:  # a log or reverse-log grid: its values, as choices
        return CategoricalDistribution(tuple(_value(hp, v, False) for v in hp.values)), False
    return FloatDistribution(0.0, 1.0), True


def _value(hp: Any, sampled: Any, as_prob: bool) -> Any:
    if as_prob:
        return hp.prob_to_value(sampled)
    kind = type(hp).__name__
    if kind == "Int":
        return int(sampled)
    if kind == "Float":
        return float(sampled)
    return sampled


def _suggest(trial: Any, name: str, dist: Any) -> Any:
    kind = type(dist).__name__
    if kind == "IntDistribution":
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if kind == "FloatDistribution":
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_categorical(name, dist.choices)


class KeepsStartupPoints:
    """Mixed into an oracle with ``num_initial_points`` (its random draws before TPE):
    persisted with the oracle's state, so a restored oracle draws as the first did."""

    num_initial_points: int

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()  # type: ignore[misc]
        state["num_initial_points"] = self.num_initial_points
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)  # type: ignore[misc]
        self.num_initial_points = state.get("num_initial_points", self.num_initial_points)


class TPEOracle(KeepsStartupPoints, Oracle):
    """KerasTuner's ``Oracle`` whose suggestions come from Optuna's TPE sampler.

    ``num_initial_points``: trials drawn at random (optuna's ``n_startup_trials``)
    before TPE models the completed ones. The other arguments are KerasTuner's."""

    # Running trials count as the worst score seen (optuna's constant liar), so that
    # suggestions made while others run do not pile onto the same region.
    constant_liar = True

    def __init__(self, objective: Any = None, max_trials: int | None = 10,
                 num_initial_points: int = 10, seed: int | None = None,
                 hyperparameters: Any = None, allow_new_entries: bool = True,
                 tune_new_entries: bool = True, max_retries_per_trial: int = 0,
                 max_consecutive_failed_trials: int = 3) -> None:
        super().__init__(objective=objective, max_trials=max_trials,
                         hyperparameters=hyperparameters,
                         allow_new_entries=allow_new_entries,
                         tune_new_entries=tune_new_entries, seed=seed,
                         max_retries_per_trial=max_retries_per_trial,
                         max_consecutive_failed_trials=max_consecutive_failed_trials)
        self.num_initial_points = num_initial_points
        self._forget()

    def _forget(self) -> None:
        """Drop the study: the next suggestion rebuilds it from the trials."""
        self._study: Any = None
        self._mirrored: Any = None  # the trials dict the study mirrors
        self._told: set[str] = set()  # trial ids in the study
        self._open: dict[str, tuple[int, dict[str, Any]]] = {}  # running: number, params

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self._forget()

    # --- the study: a function of the trials ----------------------------------------

    def _distributions(self) -> dict[str, tuple[Any, Any, bool]]:
        """name -> (hyperparameter, distribution, as_prob) for each non-Fixed one."""
        out = {}
        for hp in self.hyperparameters.space:
            mapped = distribution(hp)
            if mapped is not None:
                out[hp.name] = (hp, *mapped)
        return out

    @staticmethod
    def _params(values: dict[str, Any], dists: dict[str, tuple[Any, Any, bool]]
                ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A trial's values as optuna params (and their distributions): those of sampled
        hyperparameters that lie inside their distribution."""
        params, used = {}, {}
        for name, value in values.items():
            if name not in dists or value is None:
                continue
            hp, dist, as_prob = dists[name]
            try:
                param = hp.value_to_prob(value) if as_prob else value
                if not dist._contains(dist.to_internal_repr(param)):
                    continue
            except (TypeError, ValueError):
                continue
            params[name], used[name] = param, dist
        return params, used

    def _frozen(self, trial: Any, dists: dict[str, tuple[Any, Any, bool]]) -> Any:
        from optuna.trial import TrialState, create_trial

        params, used = self._params(trial.hyperparameters.values, dists)
        score = trial.score
        if trial.status == OracleStatus.RUNNING:
            return create_trial(state=TrialState.RUNNING, params=params, distributions=used)
        if trial.status == OracleStatus.COMPLETED and score is not None and math.isfinite(score):
            return create_trial(state=TrialState.COMPLETE, value=float(score),
                                params=params, distributions=used)
        return create_trial(state=TrialState.FAIL, params=params, distributions=used)

    def _rebuild(self) -> Any:
        optuna = require_optuna()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        direction = "maximize" if self.objective.direction == "max" else "minimize"
        study = optuna.create_study(direction=direction)
        dists = self._distributions()
        ordered = [t for t in self.start_order if t in self.trials]
        placed = set(ordered)
        ordered += sorted(t for t in self.trials if t not in placed)
        self._forget()
        for number, tid in enumerate(ordered):
            trial = self.trials[tid]
            study.add_trial(self._frozen(trial, dists))
            if trial.status == OracleStatus.RUNNING:
                self._open[tid] = (number, self._params(trial.hyperparameters.values, dists)[0])
        self._study, self._mirrored, self._told = study, self.trials, set(ordered)
        return study

    def _synced_study(self) -> Any:
        """The study, told of the trials that ended since; rebuilt when it no longer
        mirrors the trials (a restore, trials added from outside, values that changed)."""
        if (self._study is None or self._mirrored is not self.trials
                or len(self._told) != len(self.trials)):
            return self._rebuild()
        from optuna.trial import TrialState

        dists = self._distributions()
        for tid, (number, params) in list(self._open.items()):
            trial = self.trials.get(tid)
            if trial is None or self._params(trial.hyperparameters.values, dists)[0] != params:
                return self._rebuild()
            if trial.status == OracleStatus.RUNNING:
                continue
            score = trial.score
            if (trial.status == OracleStatus.COMPLETED and score is not None
                    and math.isfinite(score)):
                self._study.tell(number, float(score))
            else:
                self._study.tell(number, state=TrialState.FAIL)
            del self._open[tid]
        return self._study

    def _sampler(self, attempt: int) -> Any:
        """This suggestion's sampler, seeded by the seed and the trial count alone."""
        import numpy as np
        from optuna.samplers import TPESampler

        seed = np.random.SeedSequence([int(self.seed) % 2**32, len(self.trials), attempt])
        return TPESampler(n_startup_trials=self.num_initial_points,
                          constant_liar=self.constant_liar,
                          seed=int(seed.generate_state(1)[0]))

    # --- KerasTuner's hook -----------------------------------------------------------

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        study = self._synced_study()
        dists = self._distributions()
        for attempt in range(_ATTEMPTS):
            study.sampler = self._sampler(attempt)
            asked = study.ask()
            values = self._ask_values(asked, dists)
            if not self._duplicate(values):
                params = self._params(values, dists)[0]
                self._open[trial_id] = (asked.number, params)
                self._told.add(trial_id)
                if params != asked.params:  # probabilities, as a rebuilt study holds them
                    self._study = None
                return {"status": OracleStatus.RUNNING, "values": values}
            from optuna.trial import TrialState

            study.tell(asked, state=TrialState.FAIL)
            self._study = None  # asks that became no trial: rebuild without them
        values = self._random_values()  # TPE keeps repeating tried values
        if values is None:
            return {"status": OracleStatus.STOPPED, "values": None}
        return {"status": OracleStatus.RUNNING, "values": values}

    def _ask_values(self, asked: Any, dists: dict[str, tuple[Any, Any, bool]]
                    ) -> dict[str, Any]:
        from keras_tuner import HyperParameters

        hps = HyperParameters()
        for hp in self.hyperparameters.space:
            hps.merge([hp])
            if not hps.is_active(hp):
                continue
            if hp.name not in dists:  # Fixed
                hps.values[hp.name] = hp.value
                continue
            _hp, dist, as_prob = dists[hp.name]
            hps.values[hp.name] = _value(hp, _suggest(asked, hp.name, dist), as_prob)
        return hps.values
