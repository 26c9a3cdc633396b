"""The drop-in tuners' job building: shipped hypermodel source, npz data, spec fields."""

from __future__ import annotations

import io
import zipfile

import keras
import keras_tuner
import numpy as np
import pytest

import tunecluster.keras_tuner as kt
from tunecluster.api.shipping import ship
from tunecluster.errors import SpecError
from tunecluster.models.custom import load_build_function, load_functions
from tunecluster.spec import parse_spec

SCALE = 2.0
LOOKUP = {"small": 8, "large": 16}
ADAPT = np.arange(12, dtype="float32").reshape(6, 2)


def _width(hp):
    return LOOKUP[hp.Choice("size", ["small", "large"])]


def build_model(hp):
    norm = keras.layers.Normalization()
    norm.adapt(ADAPT * SCALE)
    model = keras.Sequential([keras.Input((2,)), norm, keras.layers.Dense(_width(hp)),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_the_hypermodel_ships_as_source_with_its_globals() -> None:
    source, function, fit, *_ = ship(build_model)
    assert function == "build_model" and fit is None  # Keras's own fit
    assert "SCALE = 2.0" in source and "LOOKUP = {'small': 8, 'large': 16}" in source
    assert "def _width(hp):" in source and "import keras as keras" in source
    assert "pickle" not in source.replace("allow_pickle=False", "")
    build = load_build_function(source, function)
    hp = kt.HyperParameters()
    model = build(hp)
    assert model.layers[1].units == 8 and hp.values == {"size": "small"}
    assert np.allclose(build.__globals__["ADAPT"], ADAPT)


def test_what_cannot_travel_is_named() -> None:
    handle = open(__file__)  # noqa: SIM115 - a global of a type that cannot travel
    try:
        def uses_handle(hp):
            return handle.read()

        with pytest.raises(SpecError, match="'handle' of type TextIOWrapper"):
            ship(uses_handle)
    finally:
        handle.close()
    pair = (lambda hp: 1, lambda hp: 2)
    with pytest.raises(SpecError, match="one lambda per line") as info:
        ship(pair[0])
    assert "\n" not in str(info.value)


def test_a_lambda_hypermodel_ships() -> None:
    """hypermodel=lambda hp: ... (KerasTuner takes any callable; refused before)."""
    shipped = ship(lambda hp: build_model(hp))
    model = load_build_function(shipped.source, shipped.function)(kt.HyperParameters())
    assert model.layers[1].units == 8


def test_a_hypermodel_instance_ships_with_its_state() -> None:
    class Wide(kt.HyperModel):
        def __init__(self, units):
            super().__init__()
            self.units = units

        def build(self, hp):
            return keras.layers.Dense(self.units + hp.Int("extra", 0, 2))

    source, function, *_ = ship(Wide(units=5))
    layer = load_build_function(source, function)(kt.HyperParameters())
    assert layer.units == 5


class CallsBuildModel(kt.HyperModel):
    """A HyperModel whose build() calls the module's own build_model (issue 24, 8)."""

    def build(self, hp):
        return build_model(hp)


def test_a_hypermodel_that_calls_its_modules_build_model_ships() -> None:
    """The shipped wrapper must not shadow the user's own ``build_model``: it did, and
    build() then called the wrapper itself (RecursionError)."""
    source, function, *_ = ship(CallsBuildModel())
    model = load_build_function(source, function)(kt.HyperParameters())
    assert model.layers[1].units == 8


def test_the_job_carries_npz_files_and_the_search_settings() -> None:
    x = np.random.default_rng(0).normal(size=(40, 2)).astype("float32")
    y = np.arange(40) % 3
    tuner = kt.BayesianOptimization(build_model, objective="val_accuracy", max_trials=4,
                                    num_initial_points=2, seed=7, project_name="My Project",
                                    cluster="redis://127.0.0.1:1/0")
    spec, files = tuner._job_spec(x, y, None, 0.25, 3, 8,
                                  [keras.callbacks.EarlyStopping("val_accuracy", patience=1)],
                                  True, {})
    parsed = parse_spec(spec)
    assert parsed.name == "my-project" and parsed.model.task == "classification"
    assert parsed.search.algorithm == "bayesian" and parsed.search.num_initial_points == 2
    assert parsed.search.seed == 7 and parsed.search.direction == "max"
    assert parsed.train.epochs == 3 and parsed.train.early_stopping.patience == 1
    assert sorted(files) == ["train.npz", "valid.npz"]
    for data in files.values():  # plain npz: no pickled object arrays
        assert all(n.endswith(".npy") for n in zipfile.ZipFile(io.BytesIO(data)).namelist())
    train, valid = _npz(files["train.npz"]), _npz(files["valid.npz"])
    assert len(train["x"]) == 30 and np.array_equal(valid["x"], x[30:])  # Keras: last rows


def test_a_trial_can_span_several_workers() -> None:
    x = np.random.default_rng(0).normal(size=(40, 2)).astype("float32")
    y = np.arange(40) % 3
    tuner = kt.RandomSearch(build_model, objective="val_accuracy", max_trials=2,
                            cluster="redis://127.0.0.1:1/0", workers_per_trial=2)
    spec, _ = tuner._job_spec(x, y, None, 0.25, 1, 8, None, True, {})
    assert parse_spec(spec).resources.workers_per_trial == 2
    plain = kt.RandomSearch(build_model, objective="val_accuracy",
                            cluster="redis://127.0.0.1:1/0")
    assert parse_spec(plain._job_spec(x, y, None, 0.25, 1, 8, None, True, {})[0]
                      ).resources.workers_per_trial == 1
    zero = kt.RandomSearch(build_model, objective="val_accuracy",
                           cluster="redis://127.0.0.1:1/0", workers_per_trial=0)
    with pytest.raises(SpecError, match="workers_per_trial") as err:
        parse_spec(zero._job_spec(x, y, None, 0.25, 1, 8, None, True, {})[0])
    assert "\n" not in str(err.value)


def test_refusals_are_one_line() -> None:
    tuner = kt.RandomSearch(build_model, objective="val_accuracy", cluster="redis://h:1/0")
    x, y = np.zeros((10, 2)), np.arange(10) % 2
    odd = keras.callbacks.CSVLogger("log.csv")
    odd.filename = object()
    with pytest.raises(SpecError, match="callbacks: CSVLogger cannot travel to the workers:"
                                        " its attribute 'filename' holds a object") as err:
        tuner._job_spec(x, y, (x, y), None, 1, 8, [odd, keras.callbacks.EarlyStopping()],
                        True, {})
    assert "\n" not in str(err.value)
    with pytest.raises(SpecError, match="validation_data=\\(x, y\\) or validation_split"):
        tuner._job_spec(x, y, None, None, 1, 8, None, True, {})
    with pytest.raises(SpecError, match="not supported on a cluster: steps_per_epoch"):
        tuner._job_spec(x, y, (x, y), None, 1, 8, None, True, {"steps_per_epoch": 3})
    with pytest.raises(SpecError, match=r"sample_weight: one number per row \(10\)"):
        tuner._job_spec(x, y, (x, y), None, 1, 8, None, True, {"sample_weight": np.ones(3)})
    with pytest.raises(SpecError, match=r"validation_data\[2\]: weights must be finite"):
        tuner._job_spec(x, y, (x, y, -np.ones(10)), None, 1, 8, None, True, {})
    spec, _ = tuner._job_spec(x, y, (x, y), None, 1, 8, None, True, {"class_weight": {0: 2}})
    assert parse_spec(spec).train.class_weight == {0: 2.0}
    with pytest.raises(SpecError, match="labels must be numeric"):
        tuner._job_spec(x, np.array(["a", "b"] * 5), (x, y), None, 1, 8, None, True, {})
    with pytest.raises(TypeError, match="not supported on a cluster: distribution_strategy"):
        kt.RandomSearch(build_model, distribution_strategy=None)


def test_a_tensorboard_callback_names_where_the_trials_are_written(tmp_path) -> None:
    tuner = kt.RandomSearch(build_model, objective="val_accuracy", cluster="redis://h:1/0")
    x, y = np.zeros((10, 2)), np.arange(10) % 2
    spec, _ = tuner._job_spec(x, y, (x, y), None, 1, 8,
                              [keras.callbacks.TensorBoard(str(tmp_path / "tb")),
                               keras.callbacks.EarlyStopping("val_accuracy", patience=2)],
                              True, {})
    assert tuner._tensorboard == [str(tmp_path / "tb")]
    assert parse_spec(spec).train.early_stopping.patience == 2
    # what the cluster does not record is said, not dropped silently
    with pytest.warns(UserWarning, match="histogram_freq=1"):
        tuner._job_spec(x, y, (x, y), None, 1, 8,
                        [keras.callbacks.TensorBoard(str(tmp_path), histogram_freq=1)],
                        True, {})


def test_labels_reach_the_model_unchanged() -> None:
    from tunecluster.api.tuner_inputs import task as _task

    assert _task(np.array([0, 1, 2]), np.array([1, 2])) == "classification"
    assert _task(np.array([1, 2, 3]), np.array([1])) == "regression"  # not 0..k-1: raw
    assert _task(np.array([0.5, 1.5]), np.array([2.0])) == "regression"
    assert _task(np.eye(3), np.eye(3)) == "classification"


def test_errors_are_of_keras_tuners_types() -> None:
    """KerasTuner raises ValueError for a missing hypermodel and RuntimeError for a new
    entry under allow_new_entries=False; code that catches those must work unchanged
    (issue 24, point 7)."""
    with pytest.raises(ValueError, match="Received `hypermodel=None`"):
        kt.RandomSearch(objective="val_accuracy", max_trials=1)
    with pytest.raises(ValueError, match="`hypermodel` argument should be either"):
        kt.RandomSearch("build_model", objective="val_accuracy", max_trials=1)
    with pytest.raises(ValueError, match="Could not infer optimization direction"):
        kt.RandomSearch(build_model, objective="custom_metric", max_trials=1)
    declared = kt.HyperParameters()
    declared.Choice("other", [1, 2])
    tuner = kt.RandomSearch(build_model, objective="val_accuracy", max_trials=1,
                            hyperparameters=declared, allow_new_entries=False,
                            cluster="redis://127.0.0.1:9/0")
    x, y = np.zeros((8, 2), "float32"), np.zeros(8, "int64")
    with pytest.raises(RuntimeError, match="`allow_new_entries` is `False`") as info:
        tuner.search(x, y, validation_data=(x, y), epochs=1, verbose=0)
    assert "size" in str(info.value) and "\n" not in str(info.value)


def test_reloading_a_project_with_another_tuner_class_is_refused(tmp_path) -> None:
    """KerasTuner refuses to reload a project another tuner made (RuntimeError naming
    overwrite=True); the same class reloads it, overwrite=True starts afresh
    (issue 24, point 6)."""
    from tunecluster.api.tuner_project import write_project as _write_project

    _write_project(str(tmp_path), "proj", "proj-abc123", "RandomSearch")
    with pytest.raises(RuntimeError, match="overwrite=True") as info:
        kt.BayesianOptimization(build_model, objective="val_accuracy", max_trials=1,
                                directory=str(tmp_path), project_name="proj")
    assert "RandomSearch" in str(info.value) and "\n" not in str(info.value)
    kt.RandomSearch(build_model, objective="val_accuracy", max_trials=1,
                    directory=str(tmp_path), project_name="proj")
    kt.BayesianOptimization(build_model, objective="val_accuracy", max_trials=1,
                            directory=str(tmp_path), project_name="proj", overwrite=True)


def test_a_hypermodels_own_fit_travels_with_it() -> None:
    """A HyperModel's own fit() runs on the workers (it was silently ignored: trials
    trained with plain model.fit; issue 24, point 1): the job names its shipped wrapper,
    and the search() arguments it is given are those its user gave."""
    class TunesBatchSize(kt.HyperModel):
        def build(self, hp):
            return build_model(hp)

        def fit(self, hp, model, *args, **kwargs):
            return model.fit(*args, batch_size=hp.Choice("batch_size", [16, 32]), **kwargs)

    tuner = kt.RandomSearch(TunesBatchSize(), objective="val_accuracy", max_trials=1,
                            executions_per_trial=2)
    source, build, fit, *_ = ship(TunesBatchSize())
    assert fit == "TunesBatchSize_fit" and tuner._fit == fit
    build_fn, fit_fn = load_functions(source, [build, fit])
    hp = kt.HyperParameters()
    fit_fn(hp, build_fn(hp), np.zeros((4, 2), "float32"), np.arange(4) % 3, epochs=1,
           verbose=0)
    assert hp.values["batch_size"] == 16  # the user's fit ran, declaring its own entry
    x = np.zeros((4, 1), dtype="float32")
    spec, _ = tuner._job_spec(x, np.arange(4) % 2, None, 0.5, 1, 8, None, True, {},
                              ["validation_data", "epochs"])
    job = parse_spec(spec)
    assert job.model.fit == fit and job.model.fit_kwargs == ["validation_data", "epochs"]
    assert job.train.executions_per_trial == 2


def test_a_tuners_own_run_trial_travels_with_its_attributes() -> None:
    """A tuner subclass's run_trial() runs on the workers (it was silently ignored, then
    refused; issue 24, point 2): its class travels as source, with the attributes it set
    itself, and the job names the shipped run_trial."""
    class Scaled(kt.RandomSearch):
        def __init__(self, *args, scale=1.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.scale = scale  # set after the base class's __init__

        def run_trial(self, trial, *args, **kwargs):
            return {"val_accuracy": self.scale * trial.hyperparameters.get("size_len")}

    tuner = Scaled(build_model, objective="val_accuracy", max_trials=1, scale=0.5,
                   executions_per_trial=2, cluster="redis://127.0.0.1:1/0")
    assert tuner.user_attributes() == {"scale": 0.5}
    x = np.zeros((4, 2), dtype="float32")
    spec = parse_spec(tuner._job_spec(x, np.arange(4) % 3, None, 0.5, 1, 8, None, True, {},
                                      ["epochs"])[0])
    assert spec.model.run_trial == "Scaled_run_trial" and spec.model.fit is None
    assert spec.model.fit_kwargs == ["epochs"]
    build_fn, run_trial = load_functions(spec.model.source,
                                         [spec.model.function, spec.model.run_trial])
    shipped = run_trial.__globals__["_tc_tuner"]
    assert shipped.scale == 0.5 and shipped.executions_per_trial == 2
    assert shipped.objective.name == "val_accuracy"
    hp = kt.HyperParameters()
    hp.Fixed("size_len", 4)
    trial = keras_tuner.engine.trial.Trial(hp, trial_id="0")
    assert run_trial(trial) == {"val_accuracy": 2.0}  # the user's own code, shipped


def test_what_a_tuners_run_trial_would_not_reach_is_refused() -> None:
    class Hooked(kt.RandomSearch):
        def on_epoch_end(self, trial, model, epoch, logs=None):
            pass

    with pytest.raises(NotImplementedError, match="Hooked.on_epoch_end") as info:
        Hooked(build_model, objective="val_accuracy", max_trials=1)
    assert "\n" not in str(info.value)



def test_a_black_box_search_needs_no_hypermodel_and_no_data() -> None:
    """KerasTuner's run_trial as a black-box optimizer: no hypermodel, search() without
    data (refused before, issue 24): the job has no data and no build function."""
    class Quadratic(kt.RandomSearch):
        def run_trial(self, trial, *args, **kwargs):
            x = trial.hyperparameters.Float("x", -2.0, 2.0)
            return x * x + 2 * x + 1

    tuner = Quadratic(objective=kt.Objective("score", "min"), max_trials=3,
                      cluster="redis://127.0.0.1:1/0")
    spec, files = tuner._job_spec(None, None, None, None, 1, 32, None, True, {})
    job = parse_spec(spec)
    assert job.data is None and job.model.function is None and files == {}
    (run_trial,) = load_functions(job.model.source, [job.model.run_trial])
    hp = kt.HyperParameters()
    hp.values["x"] = 1.0
    assert run_trial(keras_tuner.engine.trial.Trial(hp, trial_id="0")) == 4.0
    with pytest.raises(SpecError, match="data: null"):
        parse_spec({**spec, "model": {"builtin": "mlp"}})


def test_the_tuners_own_attributes_are_known() -> None:
    """CLUSTER_ATTRIBUTES names every attribute the drop-in's tuners set themselves: an
    attribute missing from it would travel with a subclass's run_trial as the user's."""
    from tunecluster.api.tuner_on_worker import CLUSTER_ATTRIBUTES

    for cls in (kt.RandomSearch, kt.GridSearch, kt.BayesianOptimization, kt.Hyperband):
        tuner = cls(build_model, objective="val_accuracy", cluster="redis://127.0.0.1:1/0")
        assert set(vars(tuner)) <= CLUSTER_ATTRIBUTES, set(vars(tuner)) - CLUSTER_ATTRIBUTES
        assert tuner.user_attributes() == {}


def test_compile_overrides_travel_as_kerass_own_config() -> None:
    """KerasTuner's Tuner(optimizer=, loss=, metrics=) (refused before, issue 24 point
    3): the built model is compiled again with them, on the workers as here."""
    tuner = kt.RandomSearch(build_model, objective="val_sparse_top_k_categorical_accuracy",
                            optimizer=keras.optimizers.Adam(learning_rate=0.05),
                            loss="sparse_categorical_crossentropy",
                            metrics=[keras.metrics.SparseTopKCategoricalAccuracy(k=2)],
                            cluster="redis://127.0.0.1:1/0")
    build = load_build_function(tuner._source, tuner._function)
    model = build(kt.HyperParameters())
    assert type(model.optimizer).__name__ == "Adam"
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.05)
    assert model.get_compile_config()["metrics"][0]["class_name"] == \
        "SparseTopKCategoricalAccuracy"

    def my_loss(y_true, y_pred):
        return y_pred

    with pytest.raises(SpecError, match="loss: function is not one of Keras's own") as info:
        kt.RandomSearch(build_model, objective="val_loss", loss=my_loss)
    assert "\n" not in str(info.value)


def test_hyperband_iterations_alpha_and_beta_are_the_jobs() -> None:
    x, y = np.zeros((8, 2), dtype="float32"), np.arange(8) % 3
    hyperband = kt.Hyperband(build_model, objective="val_accuracy", max_epochs=4,
                             hyperband_iterations=2, cluster="redis://127.0.0.1:1/0")
    spec = parse_spec(hyperband._job_spec(x, y, None, 0.5, 1, 8, None, True, {})[0])
    assert spec.search.hyperband_iterations == 2
    bayes = kt.BayesianOptimization(build_model, objective="val_accuracy", alpha=1e-3,
                                    beta=3.0, cluster="redis://127.0.0.1:1/0")
    spec = parse_spec(bayes._job_spec(x, y, None, 0.5, 1, 8, None, True, {})[0])
    assert (spec.search.bayesian_alpha, spec.search.bayesian_beta) == (1e-3, 3.0)


def test_keras_tuners_base_tuner_takes_an_oracle_object() -> None:
    """Tuner(oracle=..., hypermodel=...) as in KerasTuner (refused before, issue 24 point
    3): the oracle's configuration becomes the job's search; the chief hosts the same."""
    oracle = kt.oracles.BayesianOptimizationOracle(
        objective=kt.Objective("val_accuracy", "max"), max_trials=3, num_initial_points=2,
        alpha=1e-3, beta=4.0, seed=11)
    tuner = kt.Tuner(oracle=oracle, hypermodel=build_model, cluster="redis://127.0.0.1:1/0")
    x, y = np.zeros((8, 2), dtype="float32"), np.arange(8) % 3
    search = parse_spec(tuner._job_spec(x, y, None, 0.5, 1, 8, None, True, {})[0]).search
    assert (search.algorithm, search.max_trials, search.seed) == ("bayesian", 3, 11)
    assert (search.num_initial_points, search.bayesian_alpha, search.bayesian_beta) == \
        (2, 1e-3, 4.0)
    assert search.objective_name == "val_accuracy"

    class MyOracle(kt.oracles.RandomSearchOracle):
        pass

    with pytest.raises(NotImplementedError, match="MyOracle: an oracle of your own") as info:
        kt.Tuner(MyOracle(objective="val_loss", max_trials=1), build_model)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="Expected `oracle` argument to be an instance"):
        kt.Tuner("random", build_model)


def test_a_tf_data_dataset_travels_as_arrays() -> None:
    """tf.data datasets (refused before, issue 24 point 9) are materialized into the
    upload, batches as Keras reads them; an endless one is refused in one line."""
    import tensorflow as tf

    tuner = kt.RandomSearch(build_model, objective="val_accuracy",
                            cluster="redis://127.0.0.1:1/0")
    x = np.arange(40, dtype="float32").reshape(20, 2)
    y = np.arange(20) % 3
    train = tf.data.Dataset.from_tensor_slices((x[:16], y[:16])).batch(5)
    valid = tf.data.Dataset.from_tensor_slices((x[16:], y[16:])).batch(5)
    spec, files = tuner._job_spec(train, None, valid, None, 1, 32, None, True, {})
    assert spec["train"]["batch_size"] == 5  # the dataset's batches
    assert np.array_equal(_npz(files["train.npz"])["x"], x[:16])
    assert np.array_equal(_npz(files["valid.npz"])["y"], y[16:])
    with pytest.raises(SpecError, match="endless dataset") as info:
        tuner._job_spec(train.repeat(), None, valid, None, 1, 32, None, True, {})
    assert "\n" not in str(info.value)
    with pytest.raises(SpecError, match="give y=None"):
        tuner._job_spec(train, y, valid, None, 1, 32, None, True, {})


def test_a_list_objective_is_keras_tuners_multi_objective() -> None:
    """A list objective (refused before, issue 24 point 3): the sum of the parts, each
    negated where bigger is better, minimized, as KerasTuner's MultiObjective."""
    from tunecluster.spec.objective import with_objective

    tuner = kt.RandomSearch(build_model, objective=["val_loss", "val_accuracy"],
                            cluster="redis://127.0.0.1:1/0")
    assert tuner.objective.name == "multi_objective"
    x, y = np.zeros((8, 2), dtype="float32"), np.arange(8) % 3
    search = parse_spec(tuner._job_spec(x, y, None, 0.5, 1, 8, None, True, {})[0]).search
    assert (search.objective_name, search.direction) == ("multi_objective", "min")
    assert search.objective_parts == [("val_loss", "min"), ("val_accuracy", "max")]
    logs = with_objective({"val_loss": 0.5, "val_accuracy": 0.75}, "multi_objective",
                          search.objective_parts)
    assert logs["multi_objective"] == pytest.approx(0.5 - 0.75)
    with pytest.raises(SpecError, match="'val_nope_loss' is not reported by the builtin"):
        parse_spec({"name": "j", "data": {"dataset": "digits"}, "model": {"builtin": "mlp"},
                    "search": {"objective": ["val_loss", "val_nope_loss"]}})


class CountingModel(keras.Model):
    def __init__(self, units):
        super().__init__()  # zero-arg super(): a closure cell named __class__
        self.dense = keras.layers.Dense(units)

    def call(self, x):
        return self.dense(x)


class BuildsCounting(kt.HyperModel):
    def build(self, hp):
        model = CountingModel(hp.Int("units", 1, 3))
        model.compile(loss="mse")
        return model


def test_classes_that_each_call_super_ship_together() -> None:
    """Each method's zero-arg super() holds its own class in a cell named __class__: two
    shipped classes both doing so failed with 'two globals named __class__'."""
    class Fits(BuildsCounting):
        def fit(self, hp, model, *args, **kwargs):
            return super().fit(hp, model, *args, **kwargs)

    shipped = ship(Fits())
    build = load_build_function(shipped.source, shipped.function)
    assert build(kt.HyperParameters()).dense.units == 1


def test_shipping_ignores_pytests_rewritten_assert_names() -> None:
    """pytest's assertion rewriting makes a test module's code load globals named
    '@pytest_ar': the shipped source held 'import ... as @pytest_ar' (a SyntaxError)."""
    class Asserts(kt.HyperModel):
        def build(self, hp):
            model = build_model(hp)
            assert model is not None, "a model"
            return model

    source = ship(Asserts()).source
    assert "@" not in source
    compile(source, "hypermodel.py", "exec")


def test_labels_keep_the_shape_they_were_given() -> None:
    """(n, 1) integer labels reach the model as (n, 1), as Keras gives them (they were
    flattened to (n,), which a broadcasting loss such as mse then refused)."""
    from tunecluster.data.split import encode_labels

    ys, kind, names = encode_labels([np.array([[1], [0], [1]]), np.array([[0], [1]])],
                                    "classification")
    assert kind == "sparse" and ys[0].shape == (3, 1) and ys[1].tolist() == [[0], [1]]


def test_the_searchs_callbacks_travel_as_a_function_of_the_module() -> None:
    """All but EarlyStopping (the job's early stopping) and TensorBoard (written from the
    records): the shipped module's callbacks() returns a new copy of them per call."""
    tuner = kt.RandomSearch(build_model, objective="val_accuracy", cluster="redis://h:1/0")
    x, y = np.zeros((10, 2)), np.arange(10) % 2
    csv = keras.callbacks.CSVLogger("log.csv", separator=";")
    spec = parse_spec(tuner._job_spec(x, y, (x, y), None, 1, 8, [
        csv, keras.callbacks.EarlyStopping(patience=2), keras.callbacks.TensorBoard("tb")],
        True, {})[0])
    assert spec.train.early_stopping is not None and spec.train.early_stopping.patience == 2
    namespace: dict = {}
    exec(compile(spec.model.source, "hypermodel.py", "exec"), namespace)  # noqa: S102
    made = namespace[spec.model.callbacks]()
    assert [type(cb) for cb in made] == [keras.callbacks.CSVLogger]
    assert (made[0].filename, made[0].sep) == ("log.csv", ";") and made[0] is not csv
    assert namespace[spec.model.callbacks]()[0] is not made[0]  # a copy per execution
    plain = parse_spec(tuner._job_spec(x, y, (x, y), None, 1, 8, None, True, {})[0])
    assert plain.model.callbacks is None


def test_run_trial_called_by_hand_runs_here_as_keras_tuners_does(tmp_path) -> None:
    """Outside a search, ``tuner.run_trial(tuner.oracle.create_trial(...), x, y)`` trains
    in this process (KerasTuner's users and its own tests call it so): one fit per
    execution, each with its own copy of the callbacks, and the compile overrides."""
    seen: list[int] = []

    class Notes(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append(id(self))

    class Counted(kt.RandomSearch):
        def _build_and_fit_model(self, trial, *args, **kwargs):
            self.calls = getattr(self, "calls", 0) + 1
            return super()._build_and_fit_model(trial, *args, **kwargs)

    tuner = Counted(build_model, objective="val_loss", max_trials=2, executions_per_trial=2,
                    loss="mse", cluster="redis://127.0.0.1:1/0", directory=str(tmp_path))
    x, y = np.random.default_rng(0).random((16, 2)), np.eye(3)[np.arange(16) % 3]
    results = tuner.run_trial(tuner.oracle.create_trial("tuner0"), x, y, epochs=1, verbose=0,
                              validation_data=(x, y), callbacks=[Notes()])
    assert tuner.calls == 2 and len(results) == 2
    assert all(isinstance(r, keras.callbacks.History) for r in results)
    assert len(set(seen)) == 2  # a copy of the callback per execution
    assert all("val_loss" in r.history for r in results)
    assert results[0].model.loss == "mse"  # Tuner(loss=...) compiled in, as on the workers


def test_sample_weights_travel_with_their_rows() -> None:
    """Keras's sample_weight and validation_data=(x, y, w), and validation_split cutting
    the weights with the rows, in the npz files the workers read back (read_weights)."""
    tuner = kt.RandomSearch(build_model, objective="val_accuracy", cluster="redis://h:1/0")
    x, y, w = np.zeros((10, 2)), np.arange(10) % 2, np.arange(10, dtype="float32")
    _, files = tuner._job_spec(x, y, (x[:4], y[:4], w[:4] * 2), None, 1, 8, None, True,
                               {"sample_weight": w})
    assert _npz(files["train.npz"])["sample_weight"].tolist() == w.tolist()
    assert _npz(files["valid.npz"])["sample_weight"].tolist() == (w[:4] * 2).tolist()
    _, files = tuner._job_spec(x, y, None, 0.3, 1, 8, None, True, {"sample_weight": w})
    assert _npz(files["train.npz"])["sample_weight"].tolist() == w[:7].tolist()
    assert _npz(files["valid.npz"])["sample_weight"].tolist() == w[7:].tolist()
    _, files = tuner._job_spec(x, y, (x, y), None, 1, 8, None, True, {})
    assert "sample_weight" not in _npz(files["train.npz"])


def test_read_weights_checks_each_row_has_one(tmp_path) -> None:
    from tunecluster.data import DataError
    from tunecluster.data.files import read_weights

    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((3, 2)), y=np.zeros(3), sample_weight=np.array([1, 2, 3]))
    assert read_weights(path, 3).tolist() == [1.0, 2.0, 3.0]
    np.savez(path, x=np.zeros((3, 2)), y=np.zeros(3), sample_weight=np.array([1.0, np.nan, 3]))
    with pytest.raises(DataError, match="d.npz: sample_weight: weights must be finite"):
        read_weights(path, 3)
    np.savez(path, x=np.zeros((3, 2)), y=np.zeros(3), sample_weight=np.ones((3, 2)))
    with pytest.raises(DataError, match=r"one number per row \(3\), got shape \(3, 2\)"):
        read_weights(path, 3)
    np.savez(path, x=np.zeros((3, 2)), y=np.zeros(3))
    assert read_weights(path, 3) is None
