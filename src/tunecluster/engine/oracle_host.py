"""One real KerasTuner oracle per job, persisted to Redis as JSON instead of to files.

The oracles are KerasTuner's own classes (random, grid, Bayesian, Hyperband); the only
change is where they persist: ``save``/``_save_trial`` are no-ops and the chief stores
``state_json()`` in Redis in the same transaction as the trials it creates.

Persisted incrementally: KerasTuner's own state holds lists that grow with every trial
(start and end order, run counts, value hashes, the ongoing trials), so writing it whole
each round made the chief's writes (and Redis's AOF) grow with the square of the trial
count. Here those per-trial parts travel inside each trial's own record
(``trials_json``, under ``BOOK``), written only when that trial changed, and
``state_json()`` keeps the rest, whose size does not grow with the trials. ``create``
rebuilds the whole KerasTuner state from both (and still reads the older, whole form).
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from tunecluster.engine.oracle_state import BOOK, WARM_PREFIX, restore_state, seed_oracle
from tunecluster.spec.models import JobSpec
from tunecluster.states import OracleStatus
from tunecluster.store import codec

log = logging.getLogger("tunecluster.chief")
# What KerasTuner's get_state() holds per trial (rebuilt from the trials' BOOK).
_PER_TRIAL = ("ongoing_trials", "start_order", "end_order", "run_times", "tried_so_far",
              "id_to_hash")


class _PersistedInRedis:
    def save(self) -> None:  # the chief persists the whole state itself
        pass

    def _save_trial(self, trial: Any) -> None:
        pass

    def _check_consecutive_failures(self) -> None:
        """KerasTuner's rule (too many failed trials in a row ends the search), checked
        on the last trials ended only: it runs after every end, so a run of failures is
        seen when it forms, and scanning the whole history made each end cost O(trials)."""
        limit = self.max_consecutive_failed_trials  # type: ignore[attr-defined]
        tail = self.end_order[-limit:] if limit else []  # type: ignore[attr-defined]
        trials = self.trials  # type: ignore[attr-defined]
        if limit and len(tail) == limit and all(
                trials[t].status == OracleStatus.FAILED for t in tail):
            raise RuntimeError(f"Number of consecutive failures exceeded the limit of {limit}."
                               "\n" + (trials[tail[-1]].message or ""))


class _BoundedFit:
    """Bayesian optimization whose Gaussian process is fitted on at most
    ``max_fit_trials`` trials (0: all, KerasTuner's own behaviour).

    The fit costs O(n^3) in the trials it sees and runs for every suggestion, so past a
    few hundred trials it, not the workers, sets the pace. The trials kept: the running
    ones (their pessimistic "hallucinated" scores keep parallel suggestions apart; at
    most a quarter of the bound, the most recently started), then the best completed
    ones (half of what is left: where the optimum is) and the most recently ended ones
    (the rest: where the search is now)."""

    max_fit_trials = 0

    def fit_trial_ids(self) -> list[str]:
        """The ids of the trials the next fit uses, in KerasTuner's trial order."""
        trials = self.trials  # type: ignore[attr-defined]
        bound = self.max_fit_trials
        if not bound or len(trials) <= bound:
            return list(trials)
        running = {t.trial_id for t in self.ongoing_trials.values()}  # type: ignore[attr-defined]
        started = [t for t in self.start_order if t in running]  # type: ignore[attr-defined]
        keep = set(started[len(started) - min(len(started), bound // 4):])
        done = [t for t in self.end_order  # type: ignore[attr-defined]
                if trials[t].status == OracleStatus.COMPLETED and trials[t].score is not None]
        sign = -1.0 if self.objective.direction == "max" else 1.0  # type: ignore[attr-defined]
        best = sorted(done, key=lambda t: sign * trials[t].score)
        keep.update(best[:(bound - len(keep)) // 2])
        for tid in reversed(done):
            if len(keep) >= bound:
                break
            keep.add(tid)
        return [tid for tid in trials if tid in keep]

    def _vectorize_trials(self) -> Any:
        # KerasTuner's own vectorization, over the kept trials only.
        kept = self.fit_trial_ids()
        every = self.trials  # type: ignore[has-type]
        if len(kept) == len(every):
            return super()._vectorize_trials()  # type: ignore[misc]
        self.trials = {tid: every[tid] for tid in kept}
        try:
            return super()._vectorize_trials()  # type: ignore[misc]
        finally:
            self.trials = every


def _oracle_class(algorithm: str, sampler: str = "random") -> type:
    from keras_tuner import oracles

    if algorithm == "asha" and sampler == "tpe":  # ours: ASHA over TPE (BOHB-like)
        from tunecluster.engine.tpe_asha_oracle import TpeAshaOracle
        from tunecluster.engine.tpe_oracle import require_optuna

        require_optuna()
        return type("HostedTpeAshaOracle", (_PersistedInRedis, TpeAshaOracle), {})
    if algorithm == "asha":  # ours: asynchronous successive halving
        from tunecluster.engine.asha_oracle import AshaOracle

        return type("HostedAshaOracle", (_PersistedInRedis, AshaOracle), {})
    if algorithm == "pbt":  # ours: population-based training
        from tunecluster.engine.pbt_oracle import PbtOracle

        return type("HostedPbtOracle", (_PersistedInRedis, PbtOracle), {})
    if algorithm == "tpe":  # ours: Optuna's TPE sampler (an optional dependency)
        from tunecluster.engine.tpe_oracle import TPEOracle, require_optuna

        require_optuna()
        return type("HostedTPEOracle", (_PersistedInRedis, TPEOracle), {})
    base = {
        "random": oracles.RandomSearchOracle,
        "grid": oracles.GridSearchOracle,
        "bayesian": oracles.BayesianOptimizationOracle,
        "hyperband": oracles.HyperbandOracle,
    }[algorithm]
    mixins = (_PersistedInRedis, _BoundedFit) if algorithm == "bayesian" else (
        _PersistedInRedis,)
    return type(f"Hosted{base.__name__}", (*mixins, base), {})


class OracleHost:
    """The chief's handle on one job's oracle."""

    def __init__(self, spec: JobSpec, space: Mapping[str, Any], oracle: Any) -> None:
        self.spec = spec
        self.space = dict(space)
        self.oracle = oracle
        # trial id -> position in the oracle's start / end order, kept up to date from
        # the lists' new tails (they only grow), so a trial's record costs O(1) to write
        self._positions: dict[str, dict[str, int]] = {"start_order": {}, "end_order": {}}
        self._synced: dict[str, tuple[int, int]] = {}

    @classmethod
    def create(cls, spec: JobSpec, space: Mapping[str, Any], state_json: str | None = None,
               trial_states: Mapping[str, str] | None = None,
               warm_trials: Mapping[str, str] | None = None) -> OracleHost:
        """The job's oracle: new, or restored from its persisted state. ``warm_trials``
        (a new job's ``warm_start`` source's persisted trials) seed a new oracle."""
        import keras_tuner as kt

        search = spec.search
        common: dict[str, Any] = {
            "objective": kt.Objective(search.objective_name, search.direction),
            "hyperparameters": kt.HyperParameters.from_config(dict(space)),
            "seed": search.seed,
            # Retries are the queue's business (leases); the oracle sees final outcomes.
            "max_retries_per_trial": 0,
            "max_consecutive_failed_trials": search.max_consecutive_failed_trials,
            "tune_new_entries": spec.model.tune_new_entries is not False,
        }
        cls_ = _oracle_class(search.algorithm, search.asha_sampler)
        if search.algorithm == "hyperband":
            oracle = cls_(max_epochs=spec.train.epochs, factor=search.hyperband_factor,
                          hyperband_iterations=search.hyperband_iterations, **common)
            oracle.max_trials = search.max_trials
        elif search.algorithm == "pbt":  # the population's epochs are the budget
            oracle = cls_(max_epochs=spec.train.epochs, population=search.pbt_population,
                          interval=search.pbt_interval, quantile=search.pbt_quantile,
                          **common)
        elif search.algorithm == "asha":  # max_trials counts the configurations drawn
            oracle = cls_(max_epochs=spec.train.epochs, min_epochs=search.asha_min_epochs,
                          factor=search.asha_factor, max_configs=search.max_trials, **common,
                          **({"num_initial_points": search.tpe_startup_trials}
                             if search.asha_sampler == "tpe" else {}))
        elif search.algorithm == "tpe":
            oracle = cls_(max_trials=search.max_trials,
                          num_initial_points=search.tpe_startup_trials, **common)
        elif search.algorithm == "bayesian":
            oracle = cls_(max_trials=search.max_trials,
                          num_initial_points=None if search.num_initial_points is None
                          else min(search.num_initial_points, search.max_trials),
                          alpha=search.bayesian_alpha, beta=search.bayesian_beta, **common)
            oracle.max_fit_trials = search.bayesian_max_fit_trials
        else:
            oracle = cls_(max_trials=search.max_trials, **common)
        oracle.verbose = 0
        if state_json:
            restore_state(oracle, state_json, trial_states or {})
        elif warm_trials:
            seed_oracle(oracle, warm_trials)
        host = cls(spec, space, oracle)
        # Seeded trials are the oracle's but not the job's: max_trials counts new ones.
        if oracle.max_trials:
            oracle.max_trials = search.max_trials + len(host.seeded)
        return host

    @property
    def seeded(self) -> list[str]:
        """Ids of the trials carried over by ``warm_start`` (``w`` + the source's id)."""
        return [tid for tid in self.oracle.trials if tid.startswith(WARM_PREFIX)]

    def state_json(self) -> str:
        """The oracle's own state without what it keeps per trial (that is in each
        trial's record, ``trials_json``): its size does not grow with the trials, and
        neither does building it (KerasTuner's ``get_state`` copies its set of value
        hashes, O(trials) on every round: an empty one stands in while it runs)."""
        oracle = self.oracle
        hashes, oracle._tried_so_far = oracle._tried_so_far, set()
        try:
            state = oracle.get_state()
        finally:
            oracle._tried_so_far = hashes
        for name in _PER_TRIAL:
            state.pop(name, None)
        state[BOOK] = 1
        return json.dumps(state, default=_jsonable)

    def trial_json(self, trial_id: str) -> str:
        """One trial's record: KerasTuner's trial state plus the oracle's bookkeeping
        about it (``BOOK``)."""
        return self.trials_json([trial_id])[trial_id]

    def trials_json(self, trial_ids: Iterable[str]) -> dict[str, str]:
        """``trial_json`` of several trials (of those the oracle knows) at once."""
        oracle = self.oracle
        starts, ends = self._position("start_order"), self._position("end_order")
        ids = [tid for tid in trial_ids if tid in oracle.trials]
        tuners = {trial.trial_id: tuner for tuner, trial in oracle.ongoing_trials.items()
                  } if ids else {}
        out = {}
        for tid in ids:
            state = oracle.trials[tid].get_state()
            state[BOOK] = {"start": starts.get(tid), "end": ends.get(tid),
                           "runs": oracle._run_times.get(tid, 0),
                           "hash": oracle._id_to_hash.get(tid), "tuner": tuners.get(tid)}
            out[tid] = json.dumps(state, default=_jsonable)
        return out

    def _position(self, name: str) -> dict[str, int]:
        order = getattr(self.oracle, name)
        positions = self._positions[name]
        seen_id, seen = self._synced.get(name, (0, 0))
        if seen_id != id(order) or seen > len(order):  # replaced (set_state): start over
            positions.clear()
            seen = 0
        for i in range(seen, len(order)):
            positions[order[i]] = i
        self._synced[name] = (id(order), len(order))
        return positions

    def create_trial(self) -> tuple[str, str | None, dict[str, Any]]:
        """Ask for the next trial: (status, trial_id, values). Status RUNNING/IDLE/STOPPED.

        Each call asks under a tuner id never used before, by this chief or an earlier
        one: KerasTuner answers a known tuner id with that tuner's ongoing trial, so a
        reused id would hand out (and re-queue) a trial that is already running. A
        counter restarted from the trial count does reuse ids, since IDLE answers use
        ids too and are not persisted."""
        tuner_id = f"c-{secrets.token_hex(8)}"
        trial = self.oracle.create_trial(tuner_id)
        if trial.status != OracleStatus.RUNNING:
            self.oracle.tuner_ids.discard(tuner_id)  # IDLE leaves it behind: keep it bounded
            return trial.status, None, {}
        return OracleStatus.RUNNING, trial.trial_id, _whole_ints(trial.hyperparameters)

    @property
    def trial_count(self) -> int:
        return len(self.oracle.trials)

    def knows(self, trial_id: str) -> bool:
        return trial_id in self.oracle.trials

    def is_open(self, trial_id: str) -> bool:
        trial = self.oracle.trials.get(trial_id)
        return trial is not None and trial.status == OracleStatus.RUNNING

    def update(self, trial_id: str, epoch: int, metrics: Mapping[str, float]) -> bool:
        """Feed one epoch (once); True when the oracle wants the trial stopped."""
        trial = self.oracle.trials.get(trial_id)
        if trial is None or trial.status != OracleStatus.RUNNING:
            return False
        objective = self.spec.search.objective_name
        if objective not in metrics:
            return False  # the worker fails such a trial with a clear error
        if trial.metrics.exists(objective) and any(
            obs.step == epoch for obs in trial.metrics.get_history(objective)
        ):
            return False
        clean = _finite_numbers(metrics)
        if objective not in clean:
            return False
        result = self.oracle.update_trial(trial_id, clean, step=epoch)
        return getattr(result, "status", OracleStatus.RUNNING) == OracleStatus.STOPPED

    def end(self, trial_id: str, completed: bool, message: str | None = None,
            grown_space: str | None = None,
            final: tuple[Mapping[str, Any], Any] | None = None) -> None:
        """Tell the oracle a trial ended. Raises RuntimeError past the failure budget.

        ``grown_space``: the trial's HyperParameters config (JSON, from its worker) when
        ``build_model`` declared hyperparameters the space lacked: they are added to the
        trial, and KerasTuner's ``end_trial`` adds them to the search space (unless the
        job says ``tune_new_entries: false``), as its own tuner does.
        ``final``: the completed trial's ``(metrics, best epoch)`` as its worker recorded
        them (data read from Redis, checked here).  When its objective is not the best
        of the epochs the oracle saw (the mean of several executions, the metrics a fit
        of the user's own returned), the oracle takes them instead, as KerasTuner's
        takes what ``run_trial`` returns: one observation at the best epoch."""
        trial = self.oracle.trials.get(trial_id)
        if trial is None or trial.status != OracleStatus.RUNNING:
            return
        if grown_space:
            _add_new_entries(trial, grown_space)
        if completed and final is not None:
            try:
                self._take_final(trial, *final)
            except Exception as exc:  # noqa: BLE001 - foreign data never stops the chief
                log.warning("trial %s: ignoring the final metrics its worker reported: %s",
                            trial_id, str(exc).splitlines()[0][:200] if str(exc) else exc)
        trial.status = OracleStatus.COMPLETED if completed else OracleStatus.FAILED
        trial.message = message
        self.oracle.end_trial(trial)

    def _take_final(self, trial: Any, metrics: Mapping[str, Any], best_epoch: Any) -> None:
        objective = self.spec.search.objective_name
        clean = _finite_numbers(metrics)
        if objective not in clean:
            return
        seen = (trial.metrics.get_best_value(objective)
                if trial.metrics.exists(objective) else None)
        if seen is not None and math.isclose(seen, clean[objective], rel_tol=1e-9,
                                             abs_tol=1e-12):
            return  # the usual case: the best epoch reported
        step = int(best_epoch) if isinstance(best_epoch, (int, str)) and \
            str(best_epoch).isdigit() else 0
        trial.metrics = type(trial.metrics)()  # KerasTuner's MetricsTracker
        trial.metrics.register(objective, direction=self.spec.search.direction)
        for name, value in clean.items():
            trial.metrics.update(name, value, step=step)

    def has_space(self) -> bool:
        """Whether the oracle knows a hyperparameter yet (a black-box run_trial declares
        them all as its trials run)."""
        return bool(self.oracle.hyperparameters.space)

    def ongoing(self) -> int:
        return len(self.oracle.ongoing_trials)


def _finite_numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics that are finite numbers (data from a worker: anything else is left
    out), as floats."""
    return {str(k): float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(float(v))}


def _whole_ints(hp: Any) -> dict[str, Any]:
    """The trial's values, an ``Int``'s as an int: KerasTuner's grid over a log-stepped
    Int range yields floats (16.0), which a model's ``Dense(units)`` refuses and results
    would show as such. The oracle's own copy is left as KerasTuner made it."""
    from keras_tuner.engine.hyperparameters import Int

    ints = {p.name for p in hp.space if isinstance(p, Int)}
    return {k: int(v) if k in ints and isinstance(v, float) and v.is_integer() else v
            for k, v in hp.values.items()}


def _add_new_entries(trial: Any, grown_space: str) -> None:
    """Add to ``trial``'s hyperparameters the entries of ``grown_space`` (a worker's
    JSON, parsed as data: KerasTuner's own config of its hyperparameter classes) that it
    lacks, with the values the trial used. Its own entries and values are kept: the
    worker only adds. A config that does not parse is logged and ignored."""
    import keras_tuner as kt

    try:
        grown = kt.HyperParameters.from_config(codec.loads_object(grown_space, "space"))
        new = [p for p in grown.space
               if not trial.hyperparameters._exists(p.name, p.conditions)]
        hp = trial.hyperparameters.copy()
        hp.merge(new)
        for p in new:
            if p.name in grown.values:
                hp.values[p.name] = grown.values[p.name]
    except Exception as exc:  # noqa: BLE001 - foreign data never stops the chief
        log.warning("trial %s: ignoring the hyperparameters its worker reported: %s",
                    trial.trial_id, str(exc).splitlines()[0][:200] if str(exc) else exc)
        return
    trial.hyperparameters = hp


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, set):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
