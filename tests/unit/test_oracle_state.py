"""The hosted oracle's persisted state: incremental (what a round writes does not grow
with the trials), and restored to exactly KerasTuner's own state."""

from __future__ import annotations

import json

import pytest

from tunecluster.engine.oracle_host import OracleHost
from tunecluster.engine.oracle_state import BOOK
from tunecluster.spec import parse_spec
from tunecluster.spec.space import build_space, space_to_json

HPS = {"n_hidden": {"int": [0, 50]}, "n_neurons": {"int": [1, 100000]},
       "learning_rate": {"float": [1e-5, 1.0], "sampling": "log"}}


def _host(algorithm: str = "random", max_trials: int = 400, **search: object) -> OracleHost:
    spec = parse_spec({"name": "st", "data": {"dataset": "digits"},
                       "model": {"builtin": "mlp", "hyperparameters": HPS},
                       "search": {"algorithm": algorithm, "objective": "val_loss",
                                  "max_trials": max_trials, "seed": 3, **search}})
    return OracleHost.create(spec, space_to_json(build_space(spec.model.hyperparameters)))


def _run(host: OracleHost, n: int, fail: bool = False, finish: bool = True) -> list[str]:
    ids = []
    for _ in range(n):
        status, trial, _values = host.create_trial()
        assert status == "RUNNING" and trial is not None
        host.update(trial, 1, {"val_loss": 0.5})
        if finish:
            host.end(trial, completed=not fail, message="boom" if fail else None)
        ids.append(trial)
    return ids


def _persisted(host: OracleHost) -> tuple[str, dict[str, str]]:
    return host.state_json(), host.trials_json(host.oracle.trials)


def test_state_size_does_not_grow_with_the_trials() -> None:
    host = _host()
    _run(host, 10)
    small = len(host.state_json())
    _run(host, 300)
    assert len(host.state_json()) <= small + 8  # a counter's digits, not O(trials)
    state = json.loads(host.state_json())
    assert state[BOOK] == 1 and "start_order" not in state and "tried_so_far" not in state


class _NotToBeWalked(set):
    """A set that fails when a state is built by walking it (an O(trials) copy)."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the round's state walked every trial's values")


def test_state_json_costs_no_walk_over_the_trials() -> None:
    """What a round writes does not grow with the trials, and neither does the work of
    building it: KerasTuner's get_state() copies every trial's values hash (O(trials)
    per round), which state_json() leaves to the trials' own records."""
    host = _host()
    _run(host, 20)
    before = json.loads(host.state_json())
    host.oracle._tried_so_far = _NotToBeWalked(host.oracle._tried_so_far)
    assert json.loads(host.state_json()) == before
    assert len(host.oracle._tried_so_far) == 20  # left as it was


def test_restored_oracle_is_keras_tuners_own_state() -> None:
    host = _host()
    done = _run(host, 5)
    running = _run(host, 2, finish=False)
    before = host.oracle.get_state()
    again = OracleHost.create(host.spec, host.space, *_persisted(host))
    after = again.oracle.get_state()
    for name in ("start_order", "end_order", "ongoing_trials", "id_to_hash"):
        assert after[name] == before[name], name
    assert sorted(after["tried_so_far"]) == sorted(before["tried_so_far"])
    assert dict(after["run_times"]) == {k: v for k, v in before["run_times"].items() if v}
    assert again.is_open(running[0]) and not again.is_open(done[0])
    assert again.ongoing() == 2
    # and it goes on where it was: the next trial is new, the running ones end once
    status, trial, _ = again.create_trial()
    assert status == "RUNNING" and trial not in done + running
    again.end(running[0], completed=True)
    assert again.oracle.end_order[-1] == running[0]


def _grid(restore_after: int | None) -> list[tuple[int, int]]:
    """The values a 2 x 3 grid hands out, one trial running at a time, the oracle
    restored from what it persisted after ``restore_after`` trials (None: never)."""
    spec = parse_spec({"name": "g", "data": {"dataset": "digits"},
                       "model": {"builtin": "mlp", "hyperparameters": {
                           "n_hidden": {"choice": [1, 2]}, "n_neurons": {"choice": [8, 16, 32]}}},
                       "search": {"algorithm": "grid", "objective": "val_loss",
                                  "max_trials": 20}})
    host = OracleHost.create(spec, space_to_json(build_space(spec.model.hyperparameters)))
    handed = []
    while True:
        if len(handed) == restore_after:  # a chief restarted, took over or reloaded
            host = OracleHost.create(spec, host.space, *_persisted(host))
        status, trial, values = host.create_trial()
        if status != "RUNNING":
            return handed
        handed.append((values["n_hidden"], values["n_neurons"]))
        host.update(trial, 1, {"val_loss": 0.5})
        host.end(trial, completed=True)


@pytest.mark.parametrize("restore_after", [1, 2, 4])
def test_a_restored_grid_goes_on_through_its_combinations(restore_after: int) -> None:
    """KerasTuner's grid keeps its order of the trials in memory only: restored, it
    failed its next suggestion with a KeyError (a soak found it). It must go on and hand
    out the rest of the grid, each combination once, as it would have."""
    uninterrupted = _grid(None)
    assert len(uninterrupted) == 6 == len(set(uninterrupted))
    assert _grid(restore_after) == uninterrupted


def test_trials_written_later_update_the_book() -> None:
    host = _host()
    (trial,) = _run(host, 1, finish=False)
    assert json.loads(host.trial_json(trial))[BOOK]["tuner"] is not None
    host.end(trial, completed=True)
    book = json.loads(host.trial_json(trial))[BOOK]
    assert book == {**book, "tuner": None, "end": 0, "start": 0, "runs": 1}


def test_whole_state_of_an_older_version_still_restores() -> None:
    host = _host()
    _run(host, 3)
    whole = json.dumps(host.oracle.get_state(), default=list)
    old_trials = {t: json.dumps(tr.get_state()) for t, tr in host.oracle.trials.items()}
    again = OracleHost.create(host.spec, host.space, whole, old_trials)
    assert again.oracle.end_order == host.oracle.end_order


def test_consecutive_failures_still_end_the_search() -> None:
    host = _host(max_consecutive_failed_trials=3)
    _run(host, 2, fail=True)
    _run(host, 1)  # a success breaks the run
    _run(host, 2, fail=True)
    with pytest.raises(RuntimeError, match="consecutive failures exceeded the limit of 3"):
        _run(host, 1, fail=True)


# --- the Bayesian fit bound -------------------------------------------------------------


def _completed(host: OracleHost, n: int) -> list[str]:
    """n completed trials (scores 1, 2, ... n: the first is the best for val_loss)
    recorded as KerasTuner records them, without n Gaussian-process fits."""
    from keras_tuner.engine.trial import Trial, TrialStatus

    oracle, ids = host.oracle, []
    for i in range(n):
        hp = oracle.hyperparameters.copy()
        hp.values = {"n_hidden": i % 50, "n_neurons": 1 + i, "learning_rate": 1e-3}
        trial = Trial(hp, trial_id=f"{i:04d}", status=TrialStatus.COMPLETED)
        trial.metrics.register("val_loss", "min")
        trial.metrics.update("val_loss", float(i + 1), step=1)
        trial.score, trial.best_step = float(i + 1), 1
        oracle.trials[trial.trial_id] = trial
        oracle.start_order.append(trial.trial_id)
        oracle.end_order.append(trial.trial_id)
        oracle._record_values(trial)
        ids.append(trial.trial_id)
    return ids


def test_bayesian_fits_on_at_most_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    host = _host("bayesian", max_trials=1000, bayesian_max_fit_trials=20)
    ids = _completed(host, 200)
    fitted: list[int] = []
    fit = host.oracle.gpr.fit

    def spy(x, y):  # noqa: ANN001, ANN202 - sklearn's signature
        fitted.append(len(x))
        return fit(x, y)

    monkeypatch.setattr(host.oracle.gpr, "fit", spy)
    status, first, _ = host.create_trial()  # a suggestion while nothing runs
    assert status == "RUNNING" and fitted == [20]
    kept = host.oracle.fit_trial_ids()
    assert len(kept) == 20 and first in kept  # the running trial is among them
    assert ids[0] in kept and ids[1] in kept  # the best
    assert ids[-1] in kept and ids[-2] in kept  # the most recent


def test_bayesian_bound_zero_fits_on_every_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    host = _host("bayesian", max_trials=1000, bayesian_max_fit_trials=0)
    _completed(host, 30)
    fitted: list[int] = []
    fit = host.oracle.gpr.fit
    monkeypatch.setattr(host.oracle.gpr, "fit",
                        lambda x, y: (fitted.append(len(x)), fit(x, y))[1])
    host.create_trial()
    assert fitted == [30]


def test_bayesian_max_fit_trials_in_the_spec() -> None:
    from tunecluster import defaults
    from tunecluster.errors import SpecError

    assert _host("bayesian").spec.search.bayesian_max_fit_trials == (
        defaults.BAYESIAN_MAX_FIT_TRIALS)
    assert _host("bayesian").oracle.max_fit_trials == defaults.BAYESIAN_MAX_FIT_TRIALS
    for bad in (5, -1, "many", 2.5, True):
        with pytest.raises(SpecError) as caught:
            _host("bayesian", bayesian_max_fit_trials=bad)
        message = str(caught.value)
        assert message.startswith("search.bayesian_max_fit_trials: ") and "\n" not in message
        assert ">= 10, or 0" in message


def test_a_grid_over_a_log_stepped_int_hands_out_ints() -> None:
    """KerasTuner's grid yields 4.0, 16.0, 64.0 for Int(4, 64, step=4, sampling=log)."""
    spec = parse_spec({"name": "g", "data": {"dataset": "digits"},
                       "model": {"builtin": "mlp", "hyperparameters": {
                           "n_neurons": {"int": [4, 64], "sampling": "log", "step": 4},
                           "n_hidden": {"fixed": 1}}},
                       "search": {"algorithm": "grid", "objective": "val_accuracy",
                                  "max_trials": 10}})
    host = OracleHost.create(spec, space_to_json(build_space(spec.model.hyperparameters)))
    handed = []
    while True:
        status, trial, values = host.create_trial()
        if status != "RUNNING":
            break
        handed.append(values["n_neurons"])
        host.update(trial, 1, {"val_accuracy": 0.5})
        host.end(trial, completed=True)
    assert handed == [4, 16, 64] and all(type(v) is int for v in handed)


def test_a_trials_final_metrics_replace_the_epochs_the_oracle_saw() -> None:
    """The mean of several executions (or a score a fit returned) is the trial's score in
    the oracle, as KerasTuner's oracle takes what run_trial returns; the usual case (the
    best epoch reported) changes nothing; what does not parse is ignored, never raised."""
    host = _host()
    first, second, third = _run(host, 3, finish=False)
    host.update(first, 2, {"val_loss": 0.3})
    host.end(first, completed=True, final=({"val_loss": 0.3, "val_mae": 1.0}, "2"))
    trial = host.oracle.trials[first]
    assert trial.score == pytest.approx(0.3)
    assert [o.step for o in trial.metrics.get_history("val_loss")] == [1, 2]  # kept
    host.end(second, completed=True, final=({"val_loss": 0.42, "val_mae": 2.0}, "1"))
    trial = host.oracle.trials[second]
    assert trial.score == pytest.approx(0.42) and trial.best_step == 1
    assert trial.metrics.get_best_value("val_mae") == pytest.approx(2.0)
    assert host.oracle.trials[second].metrics.get_history("val_loss")[0].step == 1
    host.end(third, completed=True, final=({"val_loss": "NaN?", "x": [1]}, "one"))
    assert host.oracle.trials[third].score == pytest.approx(0.5)  # what it saw stays


def test_hyperband_iterations_and_bayesian_alpha_beta_reach_keras_tuners_oracles() -> None:
    """Refused by the drop-in before (issue 24, point 3): now job settings."""
    hyperband = _host("hyperband", hyperband_iterations=3)
    assert hyperband.oracle.hyperband_iterations == 3
    bayesian = _host("bayesian", bayesian_alpha=0.01, bayesian_beta=5.0)
    assert (bayesian.oracle.alpha, bayesian.oracle.beta) == (0.01, 5.0)
    with pytest.raises(Exception, match="bayesian_alpha"):
        _host("bayesian", bayesian_alpha=0)


def test_a_search_with_no_space_yet_runs_one_trial_at_a_time() -> None:
    """A black-box run_trial declares its hyperparameters as its trials run: until one
    has ended, the oracle knows none, and trials made together would collide."""
    from tunecluster.chief.jobs import HostedJob
    from tunecluster.chief.top_up import top_up

    spec = parse_spec({"name": "bb", "data": None,
                       "model": {"module": "m.py", "source": "def run_trial(t): return 1",
                                 "function": None, "run_trial": "run_trial"},
                       "search": {"objective": {"name": "score", "direction": "min"}}})
    host = OracleHost.create(spec, {"space": [], "values": {}})
    assert not host.has_space()

    class Queue:
        made: list[str] = []

        def enqueue(self, job, trial, *args, **kwargs):
            self.made.append(trial)

    hosted = HostedJob.__new__(HostedJob)
    hosted.__dict__.update(id="bb", spec=spec, host=host, exhausted=False, failure=None,
                           cancel=False, dirty=False, touched=set())
    queue = Queue()
    top_up(queue, [hosted], slots=4, writes=None)
    top_up(queue, [hosted], slots=4, writes=None)
    assert len(queue.made) == 1  # not four: the first has not ended


def test_an_oracle_that_raises_fails_its_job_not_the_chief() -> None:
    """KerasTuner's GridSearch raised KeyError in create_trial on a space a trial grew
    (found through KerasTuner's own tests): the exception ended the chief's process.
    Now that job fails with the reason; the top-up goes on with the other jobs."""
    from tunecluster.chief.jobs import HostedJob
    from tunecluster.chief.top_up import top_up

    class Queue:
        made: list[tuple[str, str]] = []

        def enqueue(self, job, trial, *args, **kwargs):
            self.made.append((job, trial))

    def hosted(job_id: str) -> HostedJob:
        job = HostedJob.__new__(HostedJob)
        host = _host("random", max_trials=4)
        job.__dict__.update(id=job_id, spec=host.spec, host=host, exhausted=False,
                            failure=None, cancel=False, dirty=False, touched=set())
        return job

    broken, fine = hosted("broken"), hosted("fine")

    def populate_space(trial_id):
        raise KeyError("bool2")

    broken.host.oracle.populate_space = populate_space
    queue = Queue()
    top_up(queue, [broken, fine], slots=2, writes=None)
    assert broken.failure == ("the search's oracle failed suggesting a trial:"
                              " KeyError: 'bool2'")
    made = [job for job, _ in queue.made]
    assert set(made) == {"fine"} and len(made) >= 2  # its slots (and one kept ready)
    top_up(queue, [broken, fine], slots=2, writes=None)  # a failed job gets no more trials
    assert all(job == "fine" for job, _ in queue.made)
