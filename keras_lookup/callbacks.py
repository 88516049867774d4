"""Keras callbacks for keras_lookup's layers."""

import keras


class DynamicEmbeddingCounters(keras.callbacks.Callback):
    """Adds the counters of a model's `DynamicEmbedding` layers to its logs.

    At the end of each training epoch, for every `DynamicEmbedding` in the
    model (found by itself), it adds to the epoch's logs, so that `History`,
    the progress bar, `CSVLogger` and `TensorBoard` record them:

    - `{layer}_admitted`: ids given a row during the epoch;
    - `{layer}_evicted`: ids that lost their row during the epoch;
    - `{layer}_no_row`: training lookups that found no row during the epoch;
    - `{layer}_vocabulary_size`: ids holding a row at the end of the epoch.

    `layer.counters()` gives the totals since the layer was built. Keras
    calls callbacks in the order given and adds `History` and the progress
    bar after them: list this one before `keras.callbacks.TensorBoard` or
    `CSVLogger` so that they see its entries.

    Example:

    >>> import keras, numpy as np, keras_lookup
    >>> model = keras.Sequential([
    ...     keras.Input((), dtype="int64"),
    ...     keras_lookup.DynamicEmbedding(8, 2, name="users"),
    ...     keras.layers.Dense(1),
    ... ])
    >>> model.compile("sgd", "mse")
    >>> history = model.fit(
    ...     np.arange(6), np.ones(6), epochs=2, verbose=0,
    ...     callbacks=[keras_lookup.DynamicEmbeddingCounters()],
    ... )
    >>> history.history["users_admitted"], history.history["users_vocabulary_size"]
    ([6, 0], [6, 6])
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._start = {layer.name: layer.counters() for layer in self._layers()}

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        start = getattr(self, "_start", {})
        for layer in self._layers():
            before = start.get(layer.name, {})
            for name, total in layer.counters().items():
                logs[f"{layer.name}_{name}"] = total - before.get(name, 0)
            logs[f"{layer.name}_vocabulary_size"] = layer.vocabulary_size()

    def _layers(self):
        from keras_lookup.dynamic_embedding import DynamicEmbedding

        return [
            layer
            for layer in self.model._flatten_layers(include_self=False)
            if isinstance(layer, DynamicEmbedding)
        ]
