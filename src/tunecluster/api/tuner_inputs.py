"""What the drop-in's ``search()`` takes, turned into what a job holds: the objective,
``EarlyStopping`` (and where ``TensorBoard`` writes), arrays as npz files
(``allow_pickle=False`` on the other side), and the task the labels say."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from keras_tuner import Objective

from tunecluster import defaults
from tunecluster.errors import SpecError


def objective(value: Any, own_scoring: bool = False) -> Objective:
    """KerasTuner's objective from what a tuner is given: a name (its direction
    inferred), a ``kt.Objective``, or a list of them (KerasTuner's multi-objective: the
    sum of the parts, each to minimize). None is KerasTuner's default objective (the
    number returned, minimized) where a fit or run_trial of the user's own scores the
    trials (``own_scoring``), else ``val_loss``."""
    # KerasTuner 1.4 (pinned) keeps it out of its public modules
    from keras_tuner.src.engine.objective import MultiObjective

    from tunecluster.spec.objective import DEFAULT_OBJECTIVE, infer_direction

    if value is None and own_scoring:
        return Objective(DEFAULT_OBJECTIVE, "min")
    if value is None:
        value = "val_loss"
    if isinstance(value, Objective):
        return value
    if isinstance(value, str):
        direction = infer_direction(value)
        if direction is None:  # KerasTuner's words, a ValueError as there
            raise SpecError("objective", f"Could not infer optimization direction of"
                                         f" {value!r}; give kt.Objective({value!r}, 'min'"
                                         " or 'max')")
        return Objective(value, direction)
    if isinstance(value, (list, tuple)) and len(value) >= 2:
        return MultiObjective([objective(part) for part in value])
    raise SpecError("objective", f"a name, a kt.Objective or a list of two or more, got"
                                 f" {type(value).__name__}")


def objective_spec(obj: Any) -> dict[str, Any]:
    """The job's ``search.objective`` for a KerasTuner objective."""
    spec: dict[str, Any] = {"name": obj.name, "direction": obj.direction}
    parts = getattr(obj, "objectives", None)
    if parts:
        spec["parts"] = [{"name": p.name, "direction": p.direction} for p in parts]
    return spec


def objective_names(obj: Any) -> list[str]:
    """The metric names an objective reads (a multi-objective's parts)."""
    parts = getattr(obj, "objectives", None)
    return [p.name for p in parts] if parts else [obj.name]


def early_stopping(callbacks: Sequence[Any] | None, objective: str) -> dict[str, Any] | None:
    """The search's ``EarlyStopping``, as the job's ``train.early_stopping`` (None: none):
    the workers' own, which stops on the objective and keeps the trial's best epoch."""
    import keras

    early = None
    for cb in callbacks or ():
        if type(cb) is keras.callbacks.EarlyStopping:
            if cb.monitor != objective:
                warnings.warn(f"EarlyStopping(monitor={cb.monitor!r}) monitors the objective"
                              f" {objective!r} on the cluster", stacklevel=4)
            early = {"patience": int(cb.patience), "min_delta": float(abs(cb.min_delta))}
    return early


def worker_callbacks(callbacks: Sequence[Any] | None) -> list[Any]:
    """The search's callbacks that run on the workers as they are (shipped as code,
    ``callback_shipping.py``): all but Keras's own ``EarlyStopping`` (``early_stopping``)
    and ``TensorBoard`` (``tensorboard_dirs``). All must be deep-copyable, as in
    KerasTuner."""
    import keras

    from tunecluster.api.callback_shipping import deep_copyable

    deep_copyable(callbacks or [])
    # a subclass of EarlyStopping runs as written; TensorBoard's are written at the end
    return [cb for cb in callbacks or () if type(cb) is not keras.callbacks.EarlyStopping
            and not isinstance(cb, keras.callbacks.TensorBoard)]


# What a TensorBoard callback writes that the cluster's records do not hold, with the
# values that ask for none of it (Keras's defaults).
_TENSORBOARD_EXTRAS = {"histogram_freq": 0, "write_images": False, "embeddings_freq": 0,
                       "update_freq": "epoch"}


def tensorboard_dirs(callbacks: Sequence[Any] | None) -> list[str]:
    """The ``log_dir`` of each ``TensorBoard`` callback: the search's trials are written
    there (``api/tensorboard.py``: each epoch's metrics and the HParams view, one run per
    trial) from the cluster's records once ``search`` ends. What else it was asked to
    write (histograms, images, embeddings, per-batch steps) is not recorded on the
    cluster: a warning says so."""
    import keras

    dirs = []
    for cb in callbacks or ():
        if isinstance(cb, keras.callbacks.TensorBoard):
            asked = [f"{name}={getattr(cb, name)!r}"
                     for name, default in _TENSORBOARD_EXTRAS.items()
                     if getattr(cb, name, default) != default]
            if asked:
                warnings.warn(f"TensorBoard({', '.join(asked)}): the cluster writes each"
                              " epoch's metrics and the hyperparameters to"
                              f" {cb.log_dir}, not these", stacklevel=4)
            dirs.append(str(cb.log_dir))
    return dirs


def array(value: Any, what: str) -> np.ndarray:
    if value is None:
        raise SpecError(what, "is required")
    if hasattr(value, "to_numpy"):
        value = value.to_numpy()
    if isinstance(value, (list, tuple, dict)) and value and not np.isscalar(
            next(iter(value))):
        raise SpecError(what, "one array only: models with several inputs are not supported")
    if not isinstance(value, (np.ndarray, list, tuple)):
        raise SpecError(what, f"a numpy array, a pandas object or a tf.data dataset of"
                              f" (x, y) batches, got {type(value).__name__}")
    array = np.asarray(value)
    if array.dtype.hasobject:
        raise SpecError(what, "holds Python objects; give numeric arrays")
    return array


def xy(x: Any, y: Any, what: str = "x") -> tuple[np.ndarray, np.ndarray, int | None]:
    """``(x, y, batch size)`` from what Keras's ``fit`` takes as data: arrays (batch size
    None: the search's), or a ``tf.data`` dataset of ``(x, y)`` batches, materialized
    here to travel as arrays (its batch size: its first batch's)."""
    if is_dataset(x):
        if y is not None:
            raise SpecError(what, "a dataset holds its labels: give y=None, as Keras does")
        return dataset_arrays(x, what)
    return array(x, "x"), array(y, "y"), None


def dataset_arrays(dataset: Any, what: str) -> tuple[np.ndarray, np.ndarray, int | None]:
    """A finite ``tf.data`` dataset of ``(x, y)`` batches (Keras's reading: every element
    is a batch) as two arrays, refused in one line past the upload limit."""
    import tensorflow as tf

    if int(dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise SpecError(what, "an endless dataset (repeat()) cannot travel; give it without"
                              " repeat(): the workers run the epochs")
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2
            and all(isinstance(s, tf.TensorSpec) for s in spec)):
        raise SpecError(what, "a dataset of (x, y) batches of single tensors travels; this"
                              " one's elements are " + type(spec).__name__)
    xs, ys, size = [], [], 0
    for x_batch, y_batch in dataset.as_numpy_iterator():
        xs.append(np.asarray(x_batch))
        ys.append(np.asarray(y_batch))
        size += xs[-1].nbytes + ys[-1].nbytes
        if size > defaults.MAX_UPLOAD_BYTES:
            raise SpecError(what, f"the dataset is over the {defaults.MAX_UPLOAD_BYTES // 2**20}"
                                  " MiB that travel with a job; save it as npz files under"
                                  f" every worker's ${defaults.DATA_ROOT_ENV} and submit a"
                                  " job file (data.files)")
    if not xs:
        raise SpecError(what, "the dataset is empty")
    if xs[0].ndim == 0:
        raise SpecError(what, "the dataset's elements are single examples; batch() it,"
                              " as Keras's fit expects")
    return np.concatenate(xs), np.concatenate(ys), len(xs[0])


def is_dataset(value: Any) -> bool:
    module = type(value).__module__
    if not module.startswith("tensorflow"):
        return False
    import tensorflow as tf

    return isinstance(value, tf.data.Dataset)


# (x, y, sample weights or None): what one split of a search's data travels as
Rows = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]


def train_and_valid(x: Any, y: Any, validation_data: Any, validation_split: float | None,
                    sample_weight: Any) -> tuple[Rows, Rows, int | None]:
    """The rows to train on and those to validate on, from ``search()``'s arguments as
    Keras's ``fit`` reads them (``validation_data`` as ``(x, y)`` or ``(x, y, weights)``
    or a dataset; ``validation_split``: the last rows, weights cut alike), with a
    dataset's batch size (None: the search's)."""
    if sample_weight is not None and is_dataset(x):  # Keras refuses it too
        raise SpecError("sample_weight", "a tf.data dataset brings its own weights; give"
                                         " arrays to weigh the rows")
    *train_xy, batch = xy(x, y, "x")
    weights = None if sample_weight is None else row_weights(sample_weight, len(train_xy[0]),
                                                               "sample_weight")
    train: Rows = (*train_xy, weights)
    if validation_data is not None and is_dataset(validation_data):
        return train, (*dataset_arrays(validation_data, "validation_data")[:2], None), batch
    if validation_data is not None:
        if len(validation_data) not in (2, 3):
            raise SpecError("validation_data", "give (x_valid, y_valid) or (x_valid, y_valid,"
                                               " sample_weight_valid)")
        x_valid = array(validation_data[0], "validation_data[0]")
        w_valid = None if len(validation_data) == 2 or validation_data[2] is None else \
            row_weights(validation_data[2], len(x_valid), "validation_data[2]")
        return train, (x_valid, array(validation_data[1], "validation_data[1]"), w_valid), batch
    if validation_split:
        n_valid = int(len(train_xy[0]) * validation_split)  # Keras: the last rows
        if not 0 < n_valid < len(train_xy[0]):
            raise SpecError("validation_split", f"{validation_split!r} leaves no rows to"
                                                " train or to validate on")
        cut = len(train_xy[0]) - n_valid
        x_all, y_all, w_all = train
        return ((x_all[:cut], y_all[:cut], None if w_all is None else w_all[:cut]),
                (x_all[cut:], y_all[cut:], None if w_all is None else w_all[cut:]), batch)
    raise SpecError("search", "give validation_data=(x, y) or validation_split: the"
                              " objective is scored on validation data")


def row_weights(value: Any, rows: int, what: str) -> np.ndarray:
    """Keras's ``sample_weight``: one finite weight of 0 or more per row."""
    from tunecluster.data.files import weights_problem  # as the workers read them back

    weights = np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value)
    problem = weights_problem(weights, rows)
    if problem:
        raise SpecError(what, problem)
    return weights.reshape(-1).astype("float32")


def npz(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> bytes:
    buffer = io.BytesIO()
    if weights is None:
        np.savez(buffer, x=x, y=y)
    else:  # read back by data/files.py read_weights
        np.savez(buffer, x=x, y=y, sample_weight=weights)
    data = buffer.getvalue()
    if len(data) > defaults.MAX_UPLOAD_BYTES:
        raise SpecError("x", f"the arrays are {len(data) / 2**20:.0f} MiB, over the"
                             f" {defaults.MAX_UPLOAD_BYTES // 2**20} MiB that travel with a job;"
                             " save them as npz files under every worker's"
                             f" ${defaults.DATA_ROOT_ENV} and submit a job file (data.files)")
    return data


def task(y_train: np.ndarray, y_valid: np.ndarray) -> str | None:
    """Labels reach the model unchanged: integer classes 0..k-1 and one-hot columns as
    classification (the cluster's encoding is then the identity), anything numeric else as
    regression (passed through as float32)."""
    from tunecluster.data import infer_task

    if y_train.dtype.kind not in "iufb":
        raise SpecError("y", "labels must be numeric (encode string classes as 0..k-1)")
    if y_train.ndim == 2 and y_train.shape[1] > 1:
        return "classification"
    return infer_task(np.concatenate([y_train.reshape(-1), y_valid.reshape(-1)]))


def compile_overrides(optimizer: Any, loss: Any, metrics: Any) -> dict[str, Any] | None:
    """KerasTuner's ``Tuner(optimizer=, loss=, metrics=)``, as Keras's own serialized
    config (a JSON literal that travels in the hypermodel's source); None when none is
    given. Keras's own optimizers, losses and metrics travel, and names; an object of the
    user's own is refused in one line (compile it in ``build_model`` instead)."""
    import keras

    out: dict[str, Any] = {}
    for field, value, module in (("optimizer", optimizer, keras.optimizers),
                                 ("loss", loss, keras.losses)):
        if value is not None:
            out[field] = _serialized(field, value, module)
    if metrics is not None:
        if not isinstance(metrics, (list, tuple)):
            raise SpecError("metrics", f"a list of metrics, got {type(metrics).__name__}")
        out["metrics"] = [_serialized("metrics", m, keras.metrics) for m in metrics]
    return out or None


def _serialized(field: str, value: Any, module: Any) -> Any:
    if isinstance(value, str):
        return value
    if not type(value).__module__.startswith("keras."):
        raise SpecError(field, f"{type(value).__name__} is not one of Keras's own and cannot"
                               " travel to the workers; give its name, a Keras object, or"
                               " compile it in build_model")
    return module.serialize(value)


# KerasTuner's oracle classes, by the algorithm the chief hosts for each
ORACLES = {"RandomSearchOracle": "random", "GridSearchOracle": "grid",
           "BayesianOptimizationOracle": "bayesian", "HyperbandOracle": "hyperband"}


def oracle_settings(oracle: Any) -> dict[str, Any]:
    """What a KerasTuner oracle object (``Tuner(oracle=...)``) says, as the job's search
    settings: its class becomes the algorithm the chief hosts, its configuration the
    search section. The object itself never travels. An oracle class of the user's own
    is refused in one line (the chief hosts KerasTuner's four and ours)."""
    import keras_tuner

    from tunecluster.engine.asha_oracle import AshaOracle
    from tunecluster.engine.pbt_oracle import PbtOracle
    from tunecluster.engine.tpe_asha_oracle import TpeAshaOracle
    from tunecluster.engine.tpe_oracle import TPEOracle

    cls = type(oracle)
    if not isinstance(oracle, keras_tuner.Oracle):  # KerasTuner's words and type
        raise ValueError("Tuner: Expected `oracle` argument to be an instance of `Oracle`"
                         f" (one of KerasTuner's), got {cls.__name__}")
    # ours (hosted by the chief as these algorithms), found in the class's bases: a
    # tuner's oracle has the drop-in's reading part mixed in (api/tuner_oracle.py)
    ours = {TPEOracle: "tpe", AshaOracle: "asha", PbtOracle: "pbt"}
    own = next((ours[c] for c in cls.__mro__ if c in ours), None)
    if own is None and (cls.__name__ not in ORACLES
                        or not cls.__module__.startswith("keras_tuner.")):
        raise NotImplementedError(
            f"{cls.__name__}: an oracle of your own does not run on the cluster's chief"
            f" yet; use one of KerasTuner's: {', '.join(ORACLES)}")
    algorithm = own or ORACLES[cls.__name__]
    settings: dict[str, Any] = {
        "algorithm": algorithm, "objective": oracle.objective,
        "max_trials": oracle.max_configs if own == "asha" else oracle.max_trials,
        "seed": oracle.seed, "hyperparameters": oracle.hyperparameters,
        "tune_new_entries": oracle.tune_new_entries,
        "allow_new_entries": oracle.allow_new_entries,
        "max_retries_per_trial": oracle.max_retries_per_trial,
        "max_consecutive_failed_trials": oracle.max_consecutive_failed_trials, "extra": {}}
    if getattr(oracle.objective, "name", None) == "default_objective":
        settings["objective"] = None  # KerasTuner's default: the cluster's (val_loss)
    if algorithm == "bayesian":
        settings["extra"] = {"bayesian_alpha": oracle.alpha, "bayesian_beta": oracle.beta}
        # None: KerasTuner's own rule, 3 random trials per hyperparameter (at least 3),
        # counted as the space grows (a run_trial that declares its space as it runs)
        settings["extra"]["num_initial_points"] = oracle.num_initial_points or None
    elif algorithm == "hyperband":
        settings["extra"] = {"hyperband_factor": oracle.factor,
                             "hyperband_iterations": oracle.hyperband_iterations}
    elif algorithm == "tpe":
        settings["extra"] = {"tpe_startup_trials": oracle.num_initial_points}
    elif algorithm == "asha":
        settings["extra"] = {"asha_factor": oracle.factor, "asha_min_epochs": oracle.min_epochs}
        if isinstance(oracle, TpeAshaOracle):  # ASHA over TPE
            settings["extra"].update(asha_sampler="tpe",
                                     tpe_startup_trials=oracle.num_initial_points)
    elif algorithm == "pbt":
        settings["extra"] = {"pbt_population": oracle.population,
                             "pbt_interval": oracle.interval, "pbt_quantile": oracle.quantile}
    if algorithm in ("hyperband", "asha", "pbt"):
        settings["max_epochs"] = oracle.max_epochs  # search(epochs=) unused, as Hyperband
    return settings


def class_weight(value: Any) -> dict[int, float]:
    """Keras's ``class_weight`` (class index -> weight) as JSON numbers."""
    if not isinstance(value, dict):
        raise SpecError("class_weight", f"a dict of class index -> weight, got"
                                        f" {type(value).__name__}")
    try:
        return {int(k): float(v) for k, v in value.items()}
    except (TypeError, ValueError):
        raise SpecError("class_weight", "class indices and weights must be numbers") from None


# KerasTuner's HyperModel.fit, for a search without data: the model's fit, given what
# search() was given (a model of the user's own may fit without data)
KERAS_FIT = """

def _tc_keras_fit(hp, model, *args, **kwargs):
    return model.fit(*args, **kwargs)
"""


def own_fit(hypermodel: Any) -> bool:
    """Whether ``hypermodel`` is a ``HyperModel`` with a ``fit`` of its own."""
    from keras_tuner import HyperModel

    return isinstance(hypermodel, HyperModel) and type(hypermodel).fit is not HyperModel.fit


def kerastuner_hypermodel(hypermodel: Any) -> Any:
    from keras_tuner.src.engine.hypermodel import get_hypermodel  # 1.4 (pinned)

    return get_hypermodel(hypermodel)
