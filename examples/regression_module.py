"""The course's regression MLP written as your own module: a Normalization layer
adapted on the training split only, then hidden Dense ReLU layers and one output.

``build_model(hp, data)``: tunecluster passes the trial's own data as ``data``
(``x_train``, ``y_train``, ``x_valid``, ``y_valid``, ``feature_names``, ``task``; never
the test split). ``build_model(hp)`` with one parameter works too, without the data.
"""

import keras


def build_model(hp, data):
    normalizer = keras.layers.Normalization()
    normalizer.adapt(data.x_train)  # the training split only: no peeking at valid/test
    model = keras.Sequential([keras.Input(shape=data.x_train.shape[1:]), normalizer])
    for _ in range(hp.Int("n_hidden", 1, 3)):
        model.add(keras.layers.Dense(hp.Choice("n_neurons", [16, 32, 64]), activation="relu"))
    model.add(keras.layers.Dense(1))
    model.compile(
        optimizer=keras.optimizers.Adam(hp.Float("learning_rate", 1e-3, 3e-2, sampling="log")),
        loss="mse",
        metrics=["mae", keras.metrics.RootMeanSquaredError(name="rmse")],
    )
    return model
