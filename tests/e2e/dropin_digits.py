"""A small hypermodel on the embedded digits (64 features, 10 classes) for the drop-in's
end-to-end tests: one hidden layer whose width is tuned."""

import keras


def build_digits(hp):
    model = keras.Sequential([keras.Input((64,)),
                              keras.layers.Dense(hp.Int("units", 8, 32, step=8),
                                                 activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model
