"""The job spec: pydantic models for every section of a job file.

Unknown keys are errors everywhere (``extra="forbid"``); every default comes from
``tunecluster.defaults``. Rules that span several fields live in the ``model_validator``
of the smallest model that sees all of them, so the error path points there.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from tunecluster import defaults
from tunecluster.spec.base import Strict as _Strict
from tunecluster.spec.objective import MULTI_OBJECTIVE, infer_direction
from tunecluster.spec.training import RayOptions, Resources, Train, WarmStart

ALGORITHMS = ("random", "grid", "bayesian", "hyperband")
TASKS = ("classification", "regression")
OPTIMIZERS = ("sgd", "adam", "rmsprop", "adamw", "adagrad", "nadam")


# --- data -----------------------------------------------------------------------


class Split(_Strict):
    valid: float = Field(defaults.SPLIT_VALID, gt=0, lt=1)
    test: float = Field(defaults.SPLIT_TEST, gt=0, lt=1)
    seed: int = defaults.SPLIT_SEED

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> Split:
        if self.valid + self.test >= 0.9:
            raise ValueError(
                f"valid + test = {self.valid + self.test:g} leaves too little for training"
                " (must be < 0.9)"
            )
        return self


class SplitFiles(_Strict):
    train: str
    valid: str
    test: str


class Data(_Strict):
    dataset: str | None = None
    path: str | None = None
    target: str | None = None
    files: SplitFiles | None = None
    split: Split = Field(default_factory=Split)

    @model_validator(mode="after")
    def _one_source(self) -> Data:
        given = [k for k in ("dataset", "path", "files") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of dataset, path, files"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.dataset is not None:
            from tunecluster.data.registry import DATASETS

            if self.dataset not in DATASETS:
                raise ValueError(
                    f"dataset {self.dataset!r} is not one of {', '.join(sorted(DATASETS))}"
                )
            if self.target is not None:
                raise ValueError("target applies to path/files, not to a named dataset")
        named = self.file_paths
        if self.target is not None and named and all(
                p.lower().endswith(".npz") for p in named):
            raise ValueError("target applies to csv/parquet files; an npz file holds its"
                             " labels in its array 'y'")
        return self

    @property
    def file_paths(self) -> list[str]:
        """The data files the job names (``path``, or the three ``files``); none for a
        named dataset."""
        if self.files is not None:
            return [self.files.train, self.files.valid, self.files.test]
        return [self.path] if self.path else []


# --- hyperparameters --------------------------------------------------------------

Scalar = int | float | str | bool


class HyperParameter(_Strict):
    """One searched (or fixed) hyperparameter; exactly one of the kind keys is given."""

    int_: list[int] | None = Field(None, alias="int")
    float_: list[float] | None = Field(None, alias="float")
    choice: list[Scalar] | None = None
    boolean: bool | None = None
    fixed: Scalar | None = None
    sampling: Literal["linear", "log", "reverse_log"] | None = None
    step: float | None = Field(None, gt=0)
    default: Scalar | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @property
    def kind(self) -> str:
        for kind, attr in (
            ("int", "int_"),
            ("float", "float_"),
            ("choice", "choice"),
            ("boolean", "boolean"),
            ("fixed", "fixed"),
        ):
            if getattr(self, attr) is not None:
                return kind
        raise AssertionError("validated hyperparameter without a kind")

    @property
    def is_finite(self) -> bool:
        """Whether grid search can enumerate it."""
        return self.kind != "float" or self.step is not None

    @model_validator(mode="after")
    def _check(self) -> HyperParameter:
        kinds = [k for k in ("int_", "float_", "choice", "boolean", "fixed")
                 if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "give exactly one of int, float, choice, boolean, fixed"
                + (f" (got {', '.join(k.rstrip('_') for k in kinds)})" if kinds else "")
            )
        kind = self.kind
        if kind in ("int", "float"):
            bounds = self.int_ if kind == "int" else self.float_
            assert bounds is not None
            if len(bounds) != 2:
                raise ValueError(f"{kind} takes [min, max], got {len(bounds)} values")
            lo, hi = bounds
            if not all(math.isfinite(v) for v in bounds):
                raise ValueError(f"{kind} bounds must be finite numbers, got {bounds}")
            if lo >= hi:
                raise ValueError(f"{kind} min must be < max, got [{lo}, {hi}]")
            if self.sampling in ("log", "reverse_log") and lo <= 0:
                raise ValueError(f"{self.sampling} sampling needs min > 0, got min={lo}")
            if kind == "int" and self.step is not None and self.step != int(self.step):
                raise ValueError(f"step of an int range must be a whole number, got {self.step}")
            if self.default is not None:
                number = (int, float) if kind == "float" else (int,)
                if (isinstance(self.default, bool) or not isinstance(self.default, number)
                        or not lo <= self.default <= hi):
                    raise ValueError(f"default {self.default!r} must be a{'n' * (kind == 'int')}"
                                     f" {kind} within [{lo}, {hi}]")
        else:
            if self.sampling is not None or self.step is not None:
                raise ValueError(f"sampling and step apply to int/float ranges, not to {kind}")
        if kind == "choice":
            assert self.choice is not None
            if not self.choice:
                raise ValueError("choice needs at least one value")
            if {type(v) for v in self.choice} == {int, float}:  # [0, 0.2, 0.5]: numbers
                self.choice = [float(v) for v in self.choice]
                if isinstance(self.default, int) and not isinstance(self.default, bool):
                    self.default = float(self.default)
            if len({type(v) for v in self.choice}) > 1:
                raise ValueError(f"choice values must share one type, got {self.choice}")
            if len(set(self.choice)) != len(self.choice):
                raise ValueError(f"choice values must be distinct, got {self.choice}")
            if self.default is not None and self.default not in self.choice:
                raise ValueError(f"default {self.default!r} is not one of the choices")
        if kind == "boolean" and self.default is not None and not isinstance(self.default, bool):
            raise ValueError(f"default {self.default!r} of a boolean must be true or false")
        if kind == "fixed" and self.default is not None:
            raise ValueError("default does not apply to fixed (its value is the default)")
        return self


NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_/]*$")


# --- model ------------------------------------------------------------------------


class Model(_Strict):
    builtin: Literal["mlp"] | None = None
    task: Literal["classification", "regression"] | None = None
    input: Literal["flatten", "normalize"] | None = None
    module: str | None = None
    # null: no hypermodel (a run_trial that trains no model: a black-box search)
    function: str | None = "build_model"
    # The module's text, filled in by the loader so the job carries its own code.
    source: str | None = None
    hyperparameters: dict[str, HyperParameter] = Field(default_factory=dict)
    # KerasTuner's Tuner(tune_new_entries=...): hyperparameters that build_model declares
    # only in some trials (conditional ones) join the search space when a trial that
    # declared them ends (True; None, unsaid, means True), or always keep their default.
    tune_new_entries: bool | None = None
    # A function of the module with KerasTuner's HyperModel.fit signature,
    # fit(hp, model, *args, **kwargs): trials call it instead of model.fit (worker/fitting.py).
    fit: str | None = None
    # The search() arguments that fit is given besides x, y and callbacks (KerasTuner
    # gives HyperModel.fit those its user gave search()); None: all of them.
    fit_kwargs: list[Literal["validation_data", "epochs", "batch_size", "shuffle",
                             "verbose", "class_weight", "sample_weight"]] | None = None
    # A function of the module run_trial(trial, *args, **kwargs): a KerasTuner tuner's own
    # run_trial, which the drop-in ships; trials call it instead of building and fitting.
    run_trial: str | None = None
    # A function of the module callbacks() returning a new list of Keras callbacks: each
    # execution of a trial trains with the list a call returns, before the worker's own
    # (KerasTuner passes the search's callbacks, deep-copied, to every execution).
    callbacks: str | None = None

    @field_validator("hyperparameters")
    @classmethod
    def _names(cls, value: dict[str, HyperParameter]) -> dict[str, HyperParameter]:
        for name in value:
            if not NAME_RE.match(name) or name.startswith("tuner/"):
                raise ValueError(
                    f"hyperparameter name {name!r} must be an identifier (letters, digits, _)"
                )
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Model:
        if (self.builtin is None) == (self.module is None and self.source is None):
            raise ValueError("give exactly one of builtin, module")
        if self.builtin is not None:
            if self.task is None:
                self.task = "classification"
            if self.input is None:
                self.input = "flatten" if self.task == "classification" else "normalize"
        elif self.input is not None:
            raise ValueError("input applies to builtin models only")
        if self.builtin is not None and self.tune_new_entries is not None:
            raise ValueError("tune_new_entries applies to module models only")
        if self.function is None and (self.builtin is not None or self.run_trial is None):
            raise ValueError("function: null (no hypermodel) applies with run_trial only")
        if self.function is not None and not self.function.isidentifier():
            raise ValueError(f"function {self.function!r} is not a Python identifier")
        for name in ("fit", "run_trial", "callbacks"):
            value = getattr(self, name)
            if value is None:
                continue
            if self.builtin is not None:
                raise ValueError(f"{name} applies to module models only")
            if not value.isidentifier():
                raise ValueError(f"{name} {value!r} is not a Python identifier")
        if self.fit_kwargs is not None and self.fit is None and self.run_trial is None:
            raise ValueError("fit_kwargs applies with fit or run_trial only")
        return self

    @property
    def is_builtin(self) -> bool:
        return self.builtin is not None


# --- search -------------------------------------------------------------------------


class ObjectivePart(_Strict):
    name: str
    direction: Literal["min", "max"] | None = None


class Objective(_Strict):
    name: str
    direction: Literal["min", "max"] | None = None
    # KerasTuner's multi-objective (a list of objectives): the trial's score is the sum
    # of these, each negated where bigger is better (name multi_objective, minimized)
    parts: list[ObjectivePart] | None = None


MIN_FIT_TRIALS = 10  # fewer points than this would leave the Gaussian process blind


class Search(_Strict):
    algorithm: Literal["random", "grid", "bayesian", "hyperband", "asha", "tpe",
                       "pbt"] = "random"
    # validate_default: the default must go through _objective too (str -> Objective).
    objective: Objective | str = Field("val_loss", validate_default=True)
    max_trials: int = Field(defaults.MAX_TRIALS, ge=1, le=100_000)
    max_retries_per_trial: int = Field(defaults.MAX_RETRIES_PER_TRIAL, ge=0, le=20)
    max_consecutive_failed_trials: int = Field(defaults.MAX_CONSECUTIVE_FAILED_TRIALS, ge=1)
    seed: int | None = None
    hyperband_factor: int = Field(defaults.HYPERBAND_FACTOR, ge=2)
    # KerasTuner's Hyperband(hyperband_iterations=): how many times its bracket cycle runs
    hyperband_iterations: int = Field(1, ge=1, le=1000)
    # ASHA (engine/asha_oracle.py): rungs end at asha_min_epochs * asha_factor**k epochs,
    # then at train.epochs; the top 1/asha_factor of a rung go on to the next
    asha_min_epochs: int = Field(1, ge=1)
    asha_factor: int = Field(defaults.ASHA_FACTOR, ge=2, le=100)
    # how ASHA draws new configurations: at random, or from TPE over the first rung's
    # scores (engine/tpe_asha_oracle.py: a BOHB-like search; tpe_startup_trials random first)
    asha_sampler: Literal["random", "tpe"] = "random"
    # PBT (engine/pbt_oracle.py): this many members train pbt_interval epochs at a time;
    # then the bottom pbt_quantile copy a top member's weights and perturb its floats
    pbt_population: int = Field(4, ge=2, le=1000)
    pbt_interval: int = Field(1, ge=1)
    pbt_quantile: float = Field(0.25, gt=0, le=0.5)
    # TPE (engine/tpe_oracle.py): trials drawn at random before TPE models the results
    tpe_startup_trials: int = Field(defaults.TPE_STARTUP_TRIALS, ge=0, le=100_000)
    # KerasTuner's BayesianOptimization(alpha=, beta=): the Gaussian process's noise
    # (added to its kernel's diagonal) and the upper confidence bound's exploration weight
    bayesian_alpha: float = Field(1e-4, gt=0, allow_inf_nan=False)
    bayesian_beta: float = Field(2.6, ge=0, allow_inf_nan=False)
    # Bayesian: random trials before the Gaussian process; null: KerasTuner's own rule
    # (3 per hyperparameter, at least 3, counted as the space grows)
    num_initial_points: int | None = Field(defaults.BAYESIAN_INITIAL_POINTS, ge=1)
    # Bayesian only: fit the Gaussian process on at most this many trials (the best and
    # the most recent, see engine/oracle_host.py); 0 fits on every trial, as KerasTuner.
    bayesian_max_fit_trials: int = defaults.BAYESIAN_MAX_FIT_TRIALS

    @field_validator("bayesian_max_fit_trials", mode="before")
    @classmethod
    def _max_fit_trials(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int) or not (
                value == 0 or value >= MIN_FIT_TRIALS):
            raise ValueError(f"{value!r} must be an integer >= {MIN_FIT_TRIALS}, or 0 to fit"
                             " the Gaussian process on every trial")
        return value

    @field_validator("objective", mode="before")
    @classmethod
    def _objectives(cls, value: object) -> object:
        if isinstance(value, list):  # KerasTuner's list of objectives
            if len(value) < 2:
                raise ValueError("a list of objectives holds two or more")
            parts = [{"name": v} if isinstance(v, str) else v for v in value]
            return {"name": MULTI_OBJECTIVE, "direction": "min", "parts": parts}
        return value

    @field_validator("objective", mode="after")
    @classmethod
    def _objective(cls, value: Objective | str) -> Objective:
        obj = Objective(name=value) if isinstance(value, str) else value
        for part in [obj, *(obj.parts or [])]:
            if part.direction is None:
                direction = infer_direction(part.name)
                if direction is None:
                    raise ValueError(
                        f"cannot infer the direction of {part.name!r}; give"
                        " objective: {name: ..., direction: min|max}"
                    )
                part.direction = direction
        if obj.parts is not None and (obj.name, obj.direction) != (MULTI_OBJECTIVE, "min"):
            raise ValueError(f"objectives with parts are named {MULTI_OBJECTIVE} and"
                             " minimized (KerasTuner's multi-objective)")
        return obj

    @property
    def objective_name(self) -> str:
        assert isinstance(self.objective, Objective)
        return self.objective.name

    @property
    def objective_parts(self) -> list[tuple[str, str]] | None:
        """A multi-objective's ``(name, direction)`` parts; None for one objective."""
        assert isinstance(self.objective, Objective)
        parts = self.objective.parts
        return None if parts is None else [(p.name, p.direction or "min") for p in parts]

    @property
    def direction(self) -> str:
        assert isinstance(self.objective, Objective) and self.objective.direction
        return self.objective.direction


# --- the job ------------------------------------------------------------------------------

JOB_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class JobSpec(_Strict):
    name: str
    # null: no data (the module's run_trial or fit brings its own, as a KerasTuner search
    # called without x does); then no test split is scored
    data: Data | None = None
    model: Model
    search: Search = Field(default_factory=Search)
    train: Train = Field(default_factory=Train)
    resources: Resources = Field(default_factory=Resources)
    scheduler: Literal["native", "ray"] = "native"
    priority: int = Field(0, ge=-100, le=100)  # higher runs first; ties: oldest first
    ray: RayOptions | None = None
    warm_start: WarmStart | None = None

    @property
    def data_files(self) -> list[str]:
        """The data files the job names; none for a named dataset or no data."""
        return self.data.file_paths if self.data is not None else []

    @model_validator(mode="after")
    def _data_or_own_training(self) -> JobSpec:
        if self.data is None and self.model.run_trial is None and self.model.fit is None:
            raise ValueError("data: null (no data) applies with the module's own run_trial"
                             " or fit only; give data: {dataset: ...}, {path: ...} or"
                             " {files: ...}")
        return self

    @model_validator(mode="after")
    def _gang_needs_native(self) -> JobSpec:
        if self.resources.workers_per_trial > 1 and self.scheduler != "native":
            raise ValueError(
                f"resources.workers_per_trial: {self.resources.workers_per_trial} workers"
                f" per trial needs scheduler native (the {self.scheduler} scheduler trains"
                " each trial on one worker); use 1 or scheduler native")
        own = self.model.fit or self.model.run_trial
        if self.resources.workers_per_trial > 1 and own is not None:
            raise ValueError(
                f"model: the module's own {own}() trains each trial on one worker (it is"
                " given arrays, not a gang's sharded dataset); set"
                " resources.workers_per_trial to 1")
        return self

    @model_validator(mode="after")
    def _warm_start_fits(self) -> JobSpec:
        if self.warm_start is not None and (self.scheduler != "native" or
                                            self.search.algorithm not in ("random", "bayesian")):
            raise ValueError(
                "warm_start seeds random and bayesian searches of the native scheduler,"
                f" not {self.search.algorithm} ({self.scheduler})")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not JOB_NAME_RE.match(value):
            raise ValueError(
                f"{value!r} must be 1-63 lowercase letters, digits, '.', '_' or '-',"
                " starting with a letter or digit"
            )
        return value
