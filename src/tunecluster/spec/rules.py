"""Rules that span several sections of a job; each raises ``SpecError`` with the field path."""

from __future__ import annotations

from tunecluster.errors import SpecError
from tunecluster.spec.models import OPTIMIZERS, JobSpec
from tunecluster.spec.objective import builtin_metrics

# Hyperparameters the builtin MLP understands, with the check each value must pass.
MLP_HYPERPARAMETERS = {
    "n_hidden": ("int >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "n_neurons": ("int >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "learning_rate": ("number > 0", lambda v: _is_number(v) and v > 0),
    "optimizer": (f"one of {', '.join(OPTIMIZERS)}", lambda v: v in OPTIMIZERS),
    "activation": (
        "one of relu, elu, selu, tanh, sigmoid, gelu, swish",
        lambda v: v in ("relu", "elu", "selu", "tanh", "sigmoid", "gelu", "swish"),
    ),
    "dropout": ("number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1),
}


# The algorithms whose oracles are ours (engine/): the Ray scheduler does not run them.
NATIVE_ONLY = ("asha", "pbt", "tpe")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_job(spec: JobSpec) -> None:
    """Raise ``SpecError`` for the first cross-field rule the job breaks."""
    _check_task_fits_data(spec)
    _check_objective(spec)
    if spec.model.is_builtin:
        _check_builtin_hyperparameters(spec)
    if spec.search.algorithm == "grid":
        for name, hp in spec.model.hyperparameters.items():
            if not hp.is_finite:
                raise SpecError(
                    f"model.hyperparameters.{name}",
                    "grid search needs a finite range: give the float range a step, or use choice",
                )
    if spec.search.algorithm in NATIVE_ONLY and spec.scheduler != "native":
        raise SpecError(
            "search.algorithm",
            f"{spec.search.algorithm} runs on the native scheduler; with scheduler ray use"
            " random, grid, bayesian or hyperband (ray.early_stopping: Ray Tune's own ASHA)",
        )
    if spec.search.algorithm == "pbt" and spec.search.pbt_interval >= spec.train.epochs:
        raise SpecError(
            "search.pbt_interval",
            f"must be below train.epochs ({spec.train.epochs}): members exploit and explore"
            f" between intervals, got {spec.search.pbt_interval}",
        )
    if spec.search.algorithm == "asha" and spec.search.asha_min_epochs >= spec.train.epochs:
        raise SpecError(
            "search.asha_min_epochs",
            f"must be below train.epochs ({spec.train.epochs}, ASHA's last rung), got"
            f" {spec.search.asha_min_epochs}",
        )
    if spec.search.asha_sampler != "random" and spec.search.algorithm != "asha":
        raise SpecError("search.asha_sampler", f"applies with search.algorithm: asha, not"
                                               f" {spec.search.algorithm}")
    if spec.search.algorithm == "hyperband" and spec.train.epochs < 2:
        raise SpecError(
            "train.epochs",
            f"hyperband needs epochs >= 2 (its max_epochs), got {spec.train.epochs}",
        )


def _check_task_fits_data(spec: JobSpec) -> None:
    from tunecluster.data.registry import DATASETS

    if spec.data is None or spec.data.dataset is None or not spec.model.is_builtin:
        return
    dataset_task = DATASETS[spec.data.dataset].task
    if dataset_task != spec.model.task:
        raise SpecError(
            "model.task",
            f"{spec.model.task!r} does not fit dataset {spec.data.dataset!r},"
            f" which is a {dataset_task} set",
        )


def _check_objective(spec: JobSpec) -> None:
    parts = spec.search.objective_parts
    names = [n for n, _ in parts] if parts else [spec.search.objective_name]
    # a fit or run_trial of the user's own scores trials as it likes (KerasTuner's way)
    own = spec.model.fit is not None or spec.model.run_trial is not None
    for name in names:
        if not name.startswith("val_") and not own:
            raise SpecError(
                "search.objective",
                f"{name!r} is not a validation metric; the search must be judged on"
                " held-out data (use val_ + a compiled metric or loss, e.g. val_loss)",
            )
        if spec.model.is_builtin:
            assert spec.model.task is not None
            allowed = ["val_loss"] + [f"val_{m}" for m in builtin_metrics(spec.model.task)]
            if name not in allowed:
                raise SpecError(
                    "search.objective",
                    f"{name!r} is not reported by the builtin {spec.model.task} model;"
                    f" allowed: {', '.join(allowed)}",
                )


def _check_builtin_hyperparameters(spec: JobSpec) -> None:
    for name, hp in spec.model.hyperparameters.items():
        path = f"model.hyperparameters.{name}"
        if name not in MLP_HYPERPARAMETERS:
            raise SpecError(
                path,
                f"the builtin mlp has no hyperparameter {name!r};"
                f" allowed: {', '.join(MLP_HYPERPARAMETERS)}",
            )
        allowed, ok = MLP_HYPERPARAMETERS[name]
        for value in _values_of(hp):
            if not ok(value):
                raise SpecError(path, f"{value!r} is not allowed: must be {allowed}")


def _values_of(hp) -> list[object]:
    """Values to check against the builtin's rules: bounds of ranges, every choice."""
    kind = hp.kind
    if kind == "int":
        return list(hp.int_)
    if kind == "float":
        return list(hp.float_)
    if kind == "choice":
        return list(hp.choice)
    if kind == "fixed":
        return [hp.fixed]
    return [hp.boolean]
