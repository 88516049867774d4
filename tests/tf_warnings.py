"""What counts as a TensorFlow or Keras warning in a process's stderr.

Counted: TensorFlow's Python log at WARNING or above (`WARNING:tensorflow:…`,
`WARNING:absl:…`), its C++ log at WARNING (`W0000 00:00:… file.cc:12] …`, or
the older `2026-01-01 12:00:00.0: W tensorflow/…` form), and Python warnings
(`path.py:12: UserWarning: …`), whoever raises them.

Not counted, because they are start-up notices of the machine, not of the
code: INFO lines (oneDNN, "Could not find cuda drivers"), absl's own
"WARNING: All log messages before absl::InitializeLog() is called are written
to STDERR", the lines that TensorFlow's CUDA build writes at import on a
machine without a GPU (`cuInit`, "Unable to register cuDNN factory", and on
TensorFlow 2.16 the WARNING "TF-TRT Warning: Could not find TensorRT"),
oneDNN's notice that it falls back for `DT_BOOL`, and the "Local rendezvous
is aborting with status: ABORTED: Cleanup" that a parameter-server cluster's
tasks log at random steps (TensorFlow's runtime, whatever the loop). Every
other ERROR line counts too.

Run the process with `TF_CPP_MIN_LOG_LEVEL=0` and Python's default warning
filters, so that nothing hides a warning that a user would see.
"""

import re

_WARNING = re.compile(
    r"^(WARNING|ERROR|CRITICAL|FATAL):(?!\s*All log messages before absl)"
    r"|^[WEF]\d{4} [\d:.]+ +\d+ \S+:\d+\]"
    r"|^\d{4}-\d\d-\d\d [\d:.]+: [WEF] "
    r"|^\S+:\d+: \w*Warning: ",
    re.M,
)
# What a CUDA build of TensorFlow logs at import on a CPU machine, and
# oneDNN's notice that it falls back to Eigen for booleans. And what the
# parameter-server and worker tasks of a `ParameterServerStrategy` cluster log,
# now and then, when TensorFlow's distributed runtime cleans up a step
# (`RendezvousMgr::Cleanup`): measured with TensorFlow 2.16 and 2.21, in a
# plain `ClusterCoordinator` loop as with `keras_lookup.distribute.fit`, at
# random steps; a guide's in-process cluster prints its tasks' log.
_MACHINE_NOTICES = re.compile(
    r"cuInit|Unable to register cu(DNN|FFT|BLAS) factory|oneDNN supports DT_BOOL"
    r"|TF-TRT Warning: Could not find TensorRT"
    r"|Local rendezvous is aborting with status: ABORTED: Cleanup"
)


def tf_warnings(stderr):
    """The lines of `stderr` that are warnings (see the module docstring)."""
    lines = stderr.splitlines()
    return [
        line
        for line in lines
        if _WARNING.match(line) and not _MACHINE_NOTICES.search(line)
    ]
