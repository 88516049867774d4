"""Moved: the lookup benchmark is `python -m keras_lookup.bench` now.

It lives in the package (`keras_lookup/bench.py`) so that anyone can run it on
their own device. This script runs it with the same arguments and writes to
`benchmarks/results/lookup/` unless `--out` is given:

    python benchmarks/lookup.py --quick
    python -m keras_lookup.bench --help
"""

import os
import sys

from keras_lookup.bench import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--out" not in argv:
        here = os.path.dirname(os.path.abspath(__file__))
        argv += ["--out", os.path.join(here, "results", "lookup")]
    main(argv)
