"""Training and evaluation input, as each strategy needs it.

`x` is one of three things, as for `model.fit`: a `dataset_fn(input_context)`
that returns a `tf.data.Dataset` of batches, a `tf.data.Dataset` of batches,
or arrays (NumPy or tensors) batched here. `Data` keeps it and makes, on
demand, the dataset one process reads (`local`) and the one a worker of a
`ParameterServerStrategy` builds for itself (`for_worker`), each from the
position (batches already consumed) that training resumes at.
"""

import numpy as np
import tensorflow as tf
from tensorflow.python.distribute.coordinator import values as coordinator_values

# As `model.fit`.
DEFAULT_BATCH_SIZE = 32


class Data:
    """`x` (and `y`, `sample_weight` for arrays) for one `fit` or `evaluate`.

    `kind` is `"fn"` for a `dataset_fn`, `"dataset"` for a `tf.data.Dataset`
    (arrays are batched into one here).
    """

    def __init__(
        self,
        x,
        y=None,
        sample_weight=None,
        batch_size=None,
        shuffle=False,
        name="x",
        drop_remainder=False,
    ):
        if isinstance(x, tf.distribute.DistributedDataset):
            raise ValueError(
                f"`{name}` is a `tf.distribute` distributed dataset; pass the "
                "`tf.data.Dataset` itself, or a `dataset_fn(input_context)`: "
                "`keras_lookup.distribute` distributes it for the strategy. "
                f"Received: {name}={x!r}"
            )
        dataset_like = isinstance(x, tf.data.Dataset) or callable(x)
        if dataset_like and (y is not None or sample_weight is not None):
            what = (
                "a `tf.data.Dataset`"
                if isinstance(x, tf.data.Dataset)
                else ("a `dataset_fn`")
            )
            raise ValueError(
                f"`{name}` is {what}, which yields `(x, y)` or "
                "`(x, y, sample_weight)` batches itself, so `y` and "
                "`sample_weight` must be None. Received: "
                f"y={type(y).__name__}, sample_weight={type(sample_weight).__name__}"
            )
        if dataset_like and batch_size is not None:
            raise ValueError(
                f"`batch_size` applies to arrays; `{name}` is already batched "
                f"(a dataset or a `dataset_fn`). Received: batch_size={batch_size}"
            )
        self.name = name
        self._serialized = None
        self._default = None  # `local()`, built once
        if isinstance(x, tf.data.Dataset):
            self.kind, self._dataset, self._fn = "dataset", x, None
        elif callable(x):
            self.kind, self._dataset, self._fn = "fn", None, x
        else:
            self.kind, self._fn = "dataset", None
            self._dataset = _from_arrays(
                x, y, sample_weight, batch_size, shuffle, drop_remainder
            )

    @classmethod
    def from_validation(cls, validation_data, batch_size):
        """`validation_data` as `fit` takes it: data, or an `(x, y[, w])` tuple."""
        if isinstance(validation_data, (list, tuple)):
            if not 2 <= len(validation_data) <= 3:
                raise ValueError(
                    "`validation_data` must be `(x_val, y_val)`, "
                    "`(x_val, y_val, sample_weight_val)`, a `tf.data.Dataset` "
                    "or a `dataset_fn`. Received: a tuple of "
                    f"{len(validation_data)} items"
                )
            return cls(*validation_data, batch_size=batch_size, name="validation_data")
        return cls(validation_data, name="validation_data")

    def local(self, context=None, skip=0):
        """The dataset that one process reads (`context` for a `dataset_fn`)."""
        if context is None and self.kind == "fn":
            if self._default is None:
                self._default = self.local(tf.distribute.InputContext())
            dataset = self._default
        elif self.kind == "fn":
            dataset = self._fn(context)
            if not isinstance(dataset, tf.data.Dataset):
                raise ValueError(
                    f"`{self.name}` must return a `tf.data.Dataset`. It "
                    f"returned {type(dataset).__name__}."
                )
        else:
            dataset = self._dataset
        return dataset.skip(skip) if skip else dataset

    def for_worker(self, context, skip=0):
        """The dataset that a worker builds for itself (in a `tf.function`).

        A `dataset_fn` gets `context`; a dataset, built in this process, is
        sent to the workers as a graph, and each reads its own shard of the
        batches (`context.input_pipeline_id` of `num_input_pipelines`),
        repeated: the coordinator hands steps to whichever worker is free, so
        a faster worker reads further into its shard.
        """
        if self.kind == "fn":
            return self.local(context, skip)
        if self._serialized is None:
            self._serialized = coordinator_values.serialize_dataset_to_graph(
                self._dataset
            )
        dataset = coordinator_values.deserialize_dataset_from_graph(
            self._serialized, self._dataset.element_spec
        )
        if context.num_input_pipelines > 1:
            dataset = dataset.shard(
                context.num_input_pipelines, context.input_pipeline_id
            )
        dataset = dataset.repeat()
        return dataset.skip(skip) if skip else dataset

    @property
    def element_spec(self):
        return self.local().element_spec

    def cardinality(self):
        """Batches in one pass, or None if unknown or infinite."""
        count = int(self.local().cardinality())
        return count if count >= 0 else None


def _from_arrays(x, y, sample_weight, batch_size, shuffle, drop_remainder):
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(
            "`batch_size` must be a positive integer. Received: "
            f"batch_size={batch_size}"
        )
    # Several inputs as a list, as `model.fit` takes them: a tuple here, so
    # that tf.data keeps them apart instead of stacking them.
    x = tuple(x) if isinstance(x, list) else x
    parts = tuple(p for p in (x, y, sample_weight) if p is not None)
    dataset = tf.data.Dataset.from_tensor_slices(parts if len(parts) > 1 else x)
    if shuffle:
        count = int(dataset.cardinality())
        # One seed for the whole run, drawn from NumPy's generator (which
        # `keras.utils.set_random_seed` seeds): pass `i` of the data is the
        # same in every run of the same script.
        seed = int(np.random.randint(0, 2**31 - 1))
        dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(int(batch_size), drop_remainder=drop_remainder)
