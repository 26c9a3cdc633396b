"""The job spec's sections on how trials train and where: ``train``, ``resources``,
``ray`` and ``warm_start`` (``spec/models.py`` holds the job and its other sections)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from tunecluster import defaults
from tunecluster.spec.base import Strict as _Strict

# A gang is bounded by what one claim script scans and one TF_CONFIG lists comfortably.
MAX_WORKERS_PER_TRIAL = 64


class EarlyStopping(_Strict):
    patience: int = Field(ge=0)
    min_delta: float = Field(0.0, ge=0)


class Train(_Strict):
    epochs: int = Field(defaults.EPOCHS, ge=1, le=100_000)
    batch_size: int = Field(defaults.BATCH_SIZE, ge=1, le=1_000_000)
    early_stopping: EarlyStopping | None = None
    steps_per_execution: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"
    # XLA: auto = where bench/xla.py measured it faster, per device kind (worker/xla.py)
    jit_compile: Literal["auto"] | bool = "auto"
    mixed_precision: Literal["auto", "on", "off"] = "auto"
    shuffle: bool = True
    # Seconds one attempt of a trial may run, from its claim, before the worker kills it
    # and records it FAILED (not retried: a trial that hangs once hangs again).
    trial_timeout: float | None = None
    # Same job, same scores: each trial seeded from the job's seed and its trial id, and
    # TensorFlow's op determinism on while it trains (worker/trial.py: seed_trial).
    deterministic: bool = defaults.DETERMINISTIC
    # KerasTuner's executions_per_trial: the model is built and trained this many times,
    # and the trial's metrics are the mean of each execution's best epoch (less noise).
    executions_per_trial: int = Field(1, ge=1, le=100)
    # Keras's fit(class_weight=): a class index's weight in the training loss
    class_weight: dict[int, float] | None = None
    # KerasTuner's max_model_size: a trial whose model has more parameters fails
    # ("Oversized model"), not retried
    max_model_size: int | None = Field(None, ge=1)

    @field_validator("class_weight")
    @classmethod
    def _class_weight(cls, value: dict[int, float] | None) -> dict[int, float] | None:
        for index, weight in (value or {}).items():
            if index < 0 or not math.isfinite(weight) or weight < 0:
                raise ValueError(f"class {index}: {weight!r}; give class indices >= 0 and"
                                 " finite weights >= 0")
        return value

    @field_validator("deterministic", mode="before")
    @classmethod
    def _deterministic(cls, value: object) -> object:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{value!r} is not one of true, false")

    @field_validator("jit_compile", mode="before")
    @classmethod
    def _jit_compile(cls, value: object) -> object:
        if isinstance(value, bool) or value == "auto":
            return value
        raise ValueError(f"{value!r} is not one of auto, true, false")

    @field_validator("trial_timeout", mode="before")
    @classmethod
    def _trial_timeout(cls, value: object) -> object:
        if value is None:
            return None
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value <= 0):
            raise ValueError(f"{value!r} must be a number of seconds > 0, or null for no limit")
        return float(value)


class Resources(_Strict):
    strategy: Literal["auto", "mirrored", "one_device", "default"] = "auto"
    gpus_per_trial: int | None = Field(None, ge=1)
    cpu_slots: int = Field(1, ge=1, le=256)
    # A trial trained by this many workers at once (a gang, one slot on each of N
    # different workers) under MultiWorkerMirroredStrategy; 1: one worker's own devices.
    workers_per_trial: int = Field(1, ge=1, le=MAX_WORKERS_PER_TRIAL)

    @model_validator(mode="after")
    def _gang_strategy(self) -> Resources:
        if self.workers_per_trial > 1 and self.strategy != "auto":
            raise ValueError(
                f"strategy {self.strategy!r} cannot train a trial on"
                f" {self.workers_per_trial} workers (workers_per_trial): a gang trial"
                " trains under MultiWorkerMirroredStrategy; use strategy auto")
        return self


class RayEarlyStopping(_Strict):
    """Ray Tune's own early stopping for ``scheduler: ray`` (trials end COMPLETED with
    the epochs they ran). ``asha`` -> ASHAScheduler, ``median`` -> MedianStoppingRule;
    both count time in epochs."""

    scheduler: Literal["asha", "median"]
    grace_period: int = Field(1, ge=1)  # epochs every trial runs before it can be stopped
    reduction_factor: float | None = Field(None, gt=1)  # asha only (Ray's default: 4)
    min_samples_required: int | None = Field(None, ge=1)  # median only (Ray's default: 3)

    @model_validator(mode="after")
    def _keys_of_scheduler(self) -> RayEarlyStopping:
        only = {"reduction_factor": "asha", "min_samples_required": "median"}
        for key, scheduler in only.items():
            if getattr(self, key) is not None and self.scheduler != scheduler:
                raise ValueError(f"{key} applies to scheduler {scheduler}, not {self.scheduler}")
        return self


class RayOptions(_Strict):
    # Not a job setting (any value is an error): the Ray cluster is the operator's choice
    # ($RAY_ADDRESS / `tunecluster chief --ray-address`, else a local Ray), since Ray's
    # client protocol unpickles what a server sends: a job naming a Ray server of its
    # own would run code on the chief.
    address: str | None = None

    @field_validator("address")
    @classmethod
    def _operator_chooses_ray(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError(
                "a job cannot choose the Ray cluster: it is the operator's setting"
                " (RAY_ADDRESS in the chief's environment, or tunecluster chief --ray-address);"
                " remove ray.address from the job"
            )
        return value
    early_stopping: RayEarlyStopping | None = None
    # Trials at once; default: as many as the Ray cluster's CPUs (GPUs) fit when the job starts.
    max_concurrent_trials: int | None = Field(None, ge=1, le=10_000)


class WarmStart(_Strict):
    """``warm_start: {from: JOB}``: seed this job's oracle with a finished job's completed
    trials, as completed KerasTuner trials with their score.

    Overlap rule: a completed trial of ``from`` is carried over when each of its
    hyperparameter values names a hyperparameter of this job's space and lies in it (one
    of a choice's values, a number within an int/float range, a fixed value equal); the
    hyperparameters of this space it lacks take their default. Others are left out. The
    source must exist on the same cluster, be final and have the same objective
    (checked at submit). Random and Bayesian searches only."""

    from_: str = Field(alias="from")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("from_")
    @classmethod
    def _job_id(cls, value: str) -> str:
        from tunecluster.ids import is_job_id

        if not is_job_id(value):
            raise ValueError(f"{value!r} is not a job id")
        return value
