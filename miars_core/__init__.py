"""miars: membership inference attacks against recommender systems, on a pluggy core."""

import os as _os

__version__ = "0.1.0"

# OpenMP threads that spin while waiting make two torch processes on the same cores collapse
# (measured: two concurrent ml-100k lfm runs took 36 s each instead of 6 s). Passive waiting
# costs ~10% when running alone. Takes effect only if torch is not imported yet; an explicit
# OMP_WAIT_POLICY wins. See benchmarks/README.md.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
