"""The course's KerasTuner example, notebook style, with only the import changed.

Module-level globals (a constant, a helper, the training array for ``adapt``) are read
by ``build_model``, as a notebook's cells would leave them.
"""

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import tunecluster.keras_tuner as kt  # was: import keras_tuner as kt

digits = load_digits()
X = digits.data.astype("float32")
y = digits.target
X_train_full, X_test, y_train_full, y_test = train_test_split(X, y, test_size=0.2,
                                                              random_state=42, stratify=y)
X_train, X_valid, y_train, y_valid = train_test_split(X_train_full, y_train_full,
                                                      test_size=0.2, random_state=42,
                                                      stratify=y_train_full)
N_CLASSES = 10


def hidden_layer(hp, units):
    return keras.layers.Dense(units, activation=hp.Choice("activation", ["relu", "tanh"]))


def build_model(hp):
    n_hidden = hp.Int("n_hidden", min_value=1, max_value=2)
    n_neurons = hp.Int("n_neurons", min_value=16, max_value=64)
    learning_rate = hp.Float("learning_rate", min_value=1e-3, max_value=1e-2, sampling="log")
    norm = keras.layers.Normalization()
    norm.adapt(X_train)
    model = keras.Sequential([keras.Input(shape=X_train.shape[1:]), norm])
    for _ in range(n_hidden):
        model.add(hidden_layer(hp, n_neurons))
    model.add(keras.layers.Dense(N_CLASSES, activation="softmax"))
    model.compile(loss="sparse_categorical_crossentropy",
                  optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                  metrics=["accuracy"])
    return model


def run(directory, cluster=None, max_trials=2, epochs=2):
    """The example's own lines; returns what the test checks."""
    random_search_tuner = kt.RandomSearch(
        build_model, objective="val_accuracy", max_trials=max_trials, overwrite=True,
        directory=directory, project_name="my_digits", seed=42, cluster=cluster)
    random_search_tuner.search(X_train, y_train, epochs=epochs,
                               validation_data=(X_valid, y_valid),
                               callbacks=[keras.callbacks.EarlyStopping(patience=2)])
    top3_models = random_search_tuner.get_best_models(num_models=3)
    best_model = top3_models[0]
    top3_params = random_search_tuner.get_best_hyperparameters(num_trials=3)
    best_trial = random_search_tuner.oracle.get_best_trials(num_trials=1)[0]
    random_search_tuner.results_summary()
    test_loss, test_accuracy = best_model.evaluate(X_test, y_test, verbose=0)
    valid_scores = best_model.evaluate(X_valid, y_valid, verbose=0, return_dict=True)
    return {"tuner": random_search_tuner, "models": top3_models, "params": top3_params,
            "best_trial": best_trial, "test_accuracy": test_accuracy,
            "valid_accuracy": valid_scores["accuracy"], "n_test": len(np.asarray(y_test))}
