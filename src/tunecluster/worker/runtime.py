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
from tunecluster.models import (
    NormalizationStats,
    adapt_normalization,
    build_checked,
    build_mlp,
    load_build_function,
)
from tunecluster.models.training_data import TrainingData
from tunecluster.spec.models import JobSpec
from tunecluster.spec.space import hyperparameters_with_values


@dataclass
class JobRuntime:
    job_id: str
    spec: JobSpec
    space: dict[str, Any]
    splits: Splits
    artifacts_dir: Path
    normalization: NormalizationStats | None = None
    build_fn: Callable[[Any], Any] | None = None
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
        splits = load_splits(spec.data, spec.model.task, resolve)
        normalization = None
        build_fn = None
        if spec.model.is_builtin:
            if spec.model.input == "normalize":
                normalization = adapt_normalization(splits.x_train)
        else:
            assert spec.model.source is not None
            build_fn = load_build_function(
                spec.model.source, spec.model.function, spec.model.module or "model.py"
            )
        return cls(
            job_id=job_id,
            spec=spec,
            space=dict(space),
            splits=splits,
            artifacts_dir=job_dir(artifacts_root, job_id),
            normalization=normalization,
            build_fn=build_fn,
        )

    def trial_dir(self, trial_id: str) -> Path:
        return trial_dir(self.artifacts_dir.parent, self.job_id, trial_id)

    def build_model(self, values: Mapping[str, Any]) -> Any:
        """Build and compile the model for one trial (call inside the strategy scope)."""
        return self.build_trial_model(values)[0]

    def build_trial_model(self, values: Mapping[str, Any]) -> tuple[Any, dict[str, Any] | None]:
        """The trial's model, and its ``HyperParameters`` config when ``build_model``
        declared hyperparameters the job's space does not hold yet (conditional ones,
        such as ``units_{i}`` for each of ``num_layers``): they took their defaults, and
        the chief adds them to the search space, as KerasTuner's tuner does when a trial
        ends. None otherwise (a builtin model has no such code)."""
        if self.build_fn is not None:
            hp = hyperparameters_with_values(self.space, values)
            model = build_checked(self.build_fn, hp, self.spec.model.function,
                                  TrainingData.from_splits(self.splits))
            known = {p["config"]["name"] for p in self.space.get("space", [])}
            grown = any(p.name not in known for p in hp.space)
            return model, hp.get_config() if grown else None
        assert self.spec.model.task is not None and self.spec.model.input is not None
        return build_mlp(
            {k: v for k, v in values.items() if not k.startswith("tuner/")},
            input_shape=self.splits.input_shape,
            task=self.spec.model.task,
            input_mode=self.spec.model.input,
            label_kind=self.splits.label_kind,
            num_classes=self.splits.num_classes,
            normalization=self.normalization,
        ), None

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
            ds = tf.data.Dataset.from_tensor_slices((x, y)).cache()
            if shuffle:
                ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
            self.datasets[key] = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
        return self.datasets[key]
