"""What a worker keeps per job across trials: data splits, adapt() statistics, model code.

A custom ``build_model(hp, data)`` gets the job's training and validation splits as
loaded here (``TrainingData``), so its own ``adapt()`` sees exactly what the trial fits.

Loading data and running ``Normalization.adapt`` are paid once per job per worker
process; every trial of the job then only builds and fits its model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunecluster.artifacts import job_dir, trial_dir
from tunecluster.data import Splits, load_splits
from tunecluster.errors import TrialFailed
from tunecluster.models import (
    NormalizationStats,
    adapt_normalization,
    build_checked,
    build_mlp,
)
from tunecluster.models.custom import load_functions
from tunecluster.models.training_data import TrainingData
from tunecluster.spec.models import JobSpec
from tunecluster.spec.space import hyperparameters_with_values


@dataclass
class JobRuntime:
    job_id: str
    spec: JobSpec
    space: dict[str, Any]
    splits: Splits | None  # None: a job without data
    artifacts_dir: Path
    normalization: NormalizationStats | None = None
    build_fn: Callable[[Any], Any] | None = None
    # The module's own fit(hp, model, *args, **kwargs) (model.fit), KerasTuner's
    # HyperModel.fit: trials call it instead of model.fit.
    fit_fn: Callable[..., Any] | None = None
    # The module's run_trial(trial, *args, **kwargs) (model.run_trial): a KerasTuner
    # tuner's own, shipped by the drop-in; trials call it (worker/session.py).
    run_trial_fn: Callable[..., Any] | None = None
    # The module's callbacks() (model.callbacks): a new list of Keras callbacks per call
    callbacks_fn: Callable[[], Any] | None = None
    datasets: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def prepare(
        cls,
        job_id: str,
        spec: JobSpec,
        space: Mapping[str, Any],
        artifacts_root: str | Path,
        resolve: Callable[[str], str] = str,
    ) -> JobRuntime:
        # none for a job without data: its run_trial or fit brings its own
        splits = (load_splits(spec.data, spec.model.task, resolve)
                  if spec.data is not None else None)
        normalization = None
        build_fn = fit_fn = run_trial_fn = callbacks_fn = None
        if spec.model.is_builtin:
            assert splits is not None  # the spec refuses a builtin model without data
            if spec.model.input == "normalize":
                normalization = adapt_normalization(splits.x_train)
        else:
            assert spec.model.source is not None
            wanted = {"build": spec.model.function, "fit": spec.model.fit,
                      "run_trial": spec.model.run_trial, "callbacks": spec.model.callbacks}
            found = iter(load_functions(spec.model.source, list(filter(None, wanted.values())),
                                        spec.model.module or "model.py"))
            build_fn, fit_fn, run_trial_fn, callbacks_fn = (next(found) if name else None
                                                            for name in wanted.values())
        return cls(
            job_id=job_id,
            spec=spec,
            space=dict(space),
            splits=splits,
            artifacts_dir=job_dir(artifacts_root, job_id),
            normalization=normalization,
            build_fn=build_fn,
            fit_fn=fit_fn,
            run_trial_fn=run_trial_fn,
            callbacks_fn=callbacks_fn,
        )

    def user_callbacks(self) -> list[Any]:
        """A new list of the job's own Keras callbacks (``model.callbacks``), for one
        execution; none when the job names no such function."""
        if self.callbacks_fn is None:
            return []
        import keras

        made = self.callbacks_fn()
        if not isinstance(made, (list, tuple)) or not all(
                isinstance(cb, keras.callbacks.Callback) for cb in made):
            raise TrialFailed(f"{self.spec.model.callbacks}() returned"
                              f" {type(made).__name__}: return a list of Keras callbacks")
        return list(made)

    def trial_dir(self, trial_id: str) -> Path:
        return trial_dir(self.artifacts_dir.parent, self.job_id, trial_id)

    def build_model(self, values: Mapping[str, Any]) -> Any:
        """Build and compile the model for one trial (call inside the strategy scope)."""
        return self.build_with(self.trial_hyperparameters(values), values)

    def trial_hyperparameters(self, values: Mapping[str, Any]) -> Any | None:
        """The ``HyperParameters`` a custom model's ``build_model`` (and its ``fit``)
        receive for one trial; None for a builtin model."""
        if self.spec.model.is_builtin:
            return None
        return hyperparameters_with_values(self.space, values)

    def build_with(self, hp: Any | None, values: Mapping[str, Any]) -> Any:
        """Build and compile one trial's model: the module's ``build_model(hp)`` (``hp``
        from ``trial_hyperparameters``), or the builtin MLP from ``values``."""
        if not self.spec.model.is_builtin:
            if self.build_fn is None:
                raise TrialFailed("this search has no hypermodel (a run_trial that trains"
                                  " no model): there is no model to build")
            return build_checked(self.build_fn, hp, self.spec.model.function or "build",
                                 None if self.splits is None
                                 else TrainingData.from_splits(self.splits),
                                 compiled=self.fit_fn is None and self.run_trial_fn is None)
        assert self.spec.model.task is not None and self.spec.model.input is not None
        assert self.splits is not None
        return build_mlp(
            {k: v for k, v in values.items() if not k.startswith("tuner/")},
            input_shape=self.splits.input_shape,
            task=self.spec.model.task,
            input_mode=self.spec.model.input,
            label_kind=self.splits.label_kind,
            num_classes=self.splits.num_classes,
            normalization=self.normalization,
        )

    def grown_space(self, hp: Any | None) -> dict[str, Any] | None:
        """``hp``'s config when the trial's code (``build_model``, the module's ``fit``)
        declared hyperparameters the job's space does not hold yet (conditional ones,
        such as ``units_{i}`` for each of ``num_layers``, or a ``batch_size`` that ``fit``
        tunes): they took their defaults, and the chief adds them to the search space, as
        KerasTuner's tuner does when a trial ends. None otherwise."""
        if hp is None:
            return None
        known = {p["config"]["name"] for p in self.space.get("space", [])}
        return hp.get_config() if any(p.name not in known for p in hp.space) else None

    def dataset(self, split: str, batch_size: int, shuffle: bool, seed: int) -> Any:
        """A batched, prefetched ``tf.data`` pipeline over a cached split."""
        import tensorflow as tf

        key = (split, batch_size, shuffle, seed)
        if key not in self.datasets:
            # a deterministic job's trials each shuffle with their own seed: keep the last
            for old in [k for k in self.datasets if k[:3] == key[:3]]:
                del self.datasets[old]
            x = getattr(self.splits, f"x_{split}")
            y = getattr(self.splits, f"y_{split}")
            weights = getattr(self.splits, f"w_{split}")  # Keras's (x, y, sample_weight)
            ds = tf.data.Dataset.from_tensor_slices(
                (x, y) if weights is None else (x, y, weights)).cache()
            if shuffle:
                ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
            self.datasets[key] = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
        return self.datasets[key]
