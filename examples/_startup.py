"""Imports Keras and TensorFlow for the examples, without their start-up log.

A plain `import tensorflow` on a CPU machine writes a screenful to stderr before
the example's own output: oneDNN and CPU-instruction notices, "Could not find
cuda drivers", a `cuInit` error, a oneDNN `DT_BOOL` fallback notice during
training. Two mechanisms are needed to quiet them (measured with TensorFlow
2.21):

- `TF_CPP_MIN_LOG_LEVEL=3` silences what TensorFlow logs once its logging is
  set up: the `cuInit` and `DT_BOOL` lines are ERROR level, so level 2 is not
  enough.
- The oneDNN and "cuda drivers" notices are INFO lines written while the
  shared libraries load, before absl's logging is initialized ("WARNING: All
  log messages before absl::InitializeLog() is called are written to STDERR");
  no environment variable reaches them (`TF_ENABLE_ONEDNN_OPTS=0` drops one of
  them, but it also switches oneDNN off and so changes the numbers). So the
  import runs with stderr captured, and everything but those INFO lines is
  written back afterwards.

Both apply only when the user has not set `TF_CPP_MIN_LOG_LEVEL` themselves:
`TF_CPP_MIN_LOG_LEVEL=0 python examples/...` shows TensorFlow's full log.
"""

import os
import re
import sys
import tempfile

# What absl writes before it is initialized: its own warning, and INFO lines
# in the glog format (I<mmdd> <time> <thread> <file>:<line>] <message>).
_EARLY_INFO = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\)"
    r"|I\d{4} [\d:.]+ +\d+ \S+:\d+\] "
)


def import_keras():
    """Imports Keras (TensorFlow backend) and TensorFlow; returns `(keras, tf)`."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    chosen = "TF_CPP_MIN_LOG_LEVEL" in os.environ
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if chosen or sys.stderr is None:
        # The user chose a log level (show TensorFlow's log as it comes), or
        # there is no stderr to quiet.
        import keras
        import tensorflow as tf

        return keras, tf
    if sys.stdout is not None:
        sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import keras
            import tensorflow as tf

            # The first op initializes the devices, which logs too.
            tf.constant(0).numpy()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", "replace").splitlines(True)
            kept = [line for line in lines if not _early_info(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
    return keras, tf


def _early_info(line):
    # A notice's continuation line has no prefix of its own.
    return _EARLY_INFO.match(line) or line.startswith(
        "To enable the following instructions:"
    )
