"""Argument checks shared by keras_lookup's optimizers.

Keras leaves most optimizer arguments unchecked (`beta_1=1.5` trains, badly);
these give every optimizer here the same messages for the same mistakes.
"""

import numpy as np


def is_real(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not (
        isinstance(value, (bool, np.bool_))
    )


def check_unit_interval(name, value, include_one):
    ok = is_real(value) and 0 <= value and (value <= 1 if include_one else value < 1)
    if not ok:
        interval = "[0, 1]" if include_one else "[0, 1)"
        raise ValueError(
            f"`{name}` must be a float in {interval}. Received: {name}={value!r}"
        )
    return float(value)


def check_non_negative(name, value):
    if not (is_real(value) and value >= 0 and np.isfinite(value)):
        raise ValueError(
            f"`{name}` must be a non-negative float. Received: {name}={value!r}"
        )
    return float(value)


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be a boolean. Received: {name}={value!r}")
    return bool(value)


def check_learning_rate(value):
    # Schedules and callables are left to Keras to check; numbers are checked
    # here so that `learning_rate=-1e-3` or `learning_rate=1` fail or work the
    # same way for every optimizer.
    if is_real(value):
        return check_non_negative("learning_rate", value)
    return value
