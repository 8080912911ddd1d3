"""The engine: one attack cell as a graph of cached stages, and grids of cells run by executors.

``stages`` (the stage graph of a cell), ``store`` (content-addressed stage outputs), ``config``
(what a cell is), ``datasets`` (loading by name or path), ``pipeline`` (:func:`run_attack`, one
cell), ``grid`` (grid specs), ``run`` (running a grid into a run folder), ``executors``,
``progress``, ``rundir`` (run folders and their markers), ``audit`` (``miars audit-dp``).
On the contracts, the science and the kit; the reports and the command line sit above it.
"""

#: Names of the grid-engine module this package replaced (``from miars_core.engine import run_grid``
#: keeps working); they live in :mod:`miars_core.engine.run`.
_RUN_NAMES = ("FAILED_EXIT", "GridSummary", "Progress", "Task", "plan", "run_grid", "run_task", "write_cell")


def __getattr__(name: str):
    if name in _RUN_NAMES:
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
