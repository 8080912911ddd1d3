"""The grid's live display: splits, fits and cells done / running / failed, and seconds per stage."""

from __future__ import annotations

from typing import Any

LABELS = {"split": "splits", "serve": "recommender fits", "cell": "cells"}


class GridProgress:
    """A rich progress display fed by :func:`miars_core.engine.run.run_grid`'s events."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=False)
        self.tasks: dict[str, Any] = {}
        self.running = {k: 0 for k in LABELS}
        self.failed = {k: 0 for k in LABELS}

    def __enter__(self) -> "GridProgress":
        self.started = False  # the display starts with the plan: a grid refused before it prints nothing
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.progress.__exit__(*exc)

    def _kind(self, info: dict) -> str:
        if info.get("kind") == "cell":
            return "cell"
        return "serve" if info.get("what", "").startswith("serve") else "split"

    def _describe(self, kind: str) -> None:
        if kind in self.tasks:
            extra = f" [dim]{self.running[kind]} running"
            if self.failed[kind]:
                extra += f", [red]{self.failed[kind]} failed"
            self.progress.update(self.tasks[kind], description=f"{LABELS[kind]:<17}{extra}")

    def __call__(self, event: str, name: str, info: dict) -> None:
        if event == "plan":
            if not self.started:
                self.progress.__enter__()
                self.started = True
            for kind, total in info["tasks"].items():
                self.tasks[kind] = self.progress.add_task(LABELS[kind], total=total)
                self._describe(kind)
            return
        if event == "warning":  # a broken stored output, computed again: shown even with --quiet
            line = f"miars: warning: {' '.join(str(info['message']).split())}"
            if self.console.quiet:
                import sys

                try:
                    print(line, file=sys.stderr, flush=True)
                except (OSError, ValueError):
                    pass
            else:
                self.console.print(line, markup=False, highlight=False, soft_wrap=True)
            return
        kind = self._kind(info)
        if event == "start":
            self.running[kind] += 1
        elif event == "done":
            self.running[kind] = max(0, self.running[kind] - 1)
            if not info.get("ok"):
                self.failed[kind] += 1
                self.console.log(f"[red]failed[/red] {name.split(':')[0]} {info.get('what', '')}: {info.get('error')}")
            self.progress.advance(self.tasks[kind])
        self._describe(kind)

    @staticmethod
    def summary_table(summary):
        from rich.table import Table

        table = Table(title=f"grid: {len(summary.cells) - len(summary.failed)} of {len(summary.cells)} cells done, "
                            f"{summary.wall_seconds:.1f} s wall ({summary.executor.get('executor')}, "
                            f"{summary.executor.get('workers')} workers)")
        table.add_column("stage computed in this run")
        table.add_column("seconds (all workers)", justify="right")
        for stage, secs in sorted(summary.stage_seconds.items(), key=lambda kv: -kv[1]):
            table.add_row(stage, f"{secs:.1f}")
        if not summary.stage_seconds:
            table.add_row("(everything was cached)", "0.0")
        return table
