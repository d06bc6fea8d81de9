"""Sweeps: a grid of runs (scenarios x methods x settings x seeds x models x stream
options) on a local process pool or a Ray cluster, gathered into one store.

- `spec`: sweep files and their expansion into planned runs with deterministic ids
- `worker`: one run in one process (its own store, a lock, an attempt row, the runtime)
- `executors`: the local pool and the Ray cluster
- `gather`: copying each run's store into `OUT/sweep.db`, with provenance
- `progress`: the whole sweep's progress on stderr
- `command`: `lifelong sweep` (docs/sweep.md)

Importing this package is cheap (no torch): the command imports the rest when it runs.
"""

from .command import sweep as sweep_command

__all__ = ["sweep_command"]
