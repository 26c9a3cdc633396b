"""A build_model(hp) written exactly as for KerasTuner; tunecluster ships it with the job."""

import keras


def build_model(hp):
    model = keras.Sequential()
    model.add(keras.Input(shape=(8, 8)))
    model.add(keras.layers.Flatten())
    for i in range(hp.Int("num_layers", 1, 2)):
        model.add(keras.layers.Dense(hp.Int(f"units_{i}", 16, 128, step=16), activation="relu"))
    if hp.Boolean("dropout"):
        model.add(keras.layers.Dropout(0.2))
    model.add(keras.layers.Dense(10, activation="softmax"))
    model.compile(
        optimizer=keras.optimizers.Adam(hp.Float("lr", 1e-4, 1e-2, sampling="log")),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
