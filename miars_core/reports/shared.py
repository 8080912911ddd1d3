"""What the grid report and the defense report share: a cell's record, row markers and their notes,
estimates as text, and figures (PNG bytes, inline images).

Both reports import it; neither imports the other's helpers (gridreport.py, which writes the
whole report folder, calls the defense report's section).
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..science.intervals import Estimate


#: Attackers of a defended cell, in display order; "headline" is the only one of an undefended cell.
ATTACKERS = ("defense_aware", "defense_unaware")


@dataclass
class CellRecord:
    """One cell of a run: its description, and its result (finished) or error (failed / missing)."""

    id: str
    path: Path
    cell: dict
    status: str  # "ok", "failed" or "missing"
    result: dict | None = None
    stage: str | None = None
    error: str | None = None

    @property
    def control(self) -> bool:
        """Whether the cell's target is a control recommender (``--controls``: random, pop)."""
        from ..engine.grid import is_control

        return bool(self.cell.get("control", is_control(self.cell.get("target", ""))))

    @property
    def signal(self) -> dict:
        """The no-signal check of the cell's target (``recommenders.target.utility``), {} when absent."""
        found = ((self.result or {}).get("recommenders") or {}).get("target", {}).get("utility")
        return found if isinstance(found, dict) else {}

    @property
    def no_signal(self) -> bool:
        """Whether the cell's target lists carry no signal (the check's warning)."""
        return bool(self.signal.get("no_signal") or self.signal.get("warning"))

    @property
    def attackers(self) -> dict[str, dict]:
        """Metrics per attacker: {"headline": metrics}, or the defense-aware and -unaware ones."""
        if not self.result:
            return {}
        found = self.result.get("attackers") or {}
        if self.cell.get("defense", "none") != "none" and found:
            return {name: found[name] for name in ATTACKERS if name in found}
        return {"headline": self.result.get("metrics", {})}


#: Markers of a table row (a target): a control recommender, a target whose lists carry no signal.
CONTROL_MARK, NO_SIGNAL_MARK = "[control]", "[no signal]"


def row_markers(control: bool, no_signal: bool) -> list[str]:
    return [m for m, on in ((CONTROL_MARK, control), (NO_SIGNAL_MARK, no_signal)) if on]


#: How to read the control rows (tables.md, report.html, the defense report).
CONTROLS_NOTE = ("Rows marked [control] are control recommenders whose lists carry no membership signal by "
                 "construction: `random` serves every member k random items she does not know, `pop` the popular "
                 "items. Under the paper's service (non-members get the popular list) `random` reads ROC-AUC ~1.0: "
                 "that is the \"personalized vs popular list\" confound, not a leak, and a real target's number "
                 "means membership leakage only as far as it exceeds what the controls read. Under `foldin` "
                 "(everyone gets the model's lists) both controls should read ~0.5; `pop` reads ~0.5 under both.")


#: What a [no signal] marker means.
NO_SIGNAL_NOTE = ("Rows marked [no signal]: the target's lists do no better than random unknown items at finding "
                  "the members' own items the target never saw (with `--split users` and no hold-out: items popular "
                  "in data the target never saw); see `recommenders.target.utility` in each cell's result.json. "
                  "The recommender is probably untrained or broken, so those metrics do not measure a leak.")


def _fmt(x: float | None) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _fmt_estimate(est: Estimate | None, n_usual: int | None = None) -> str:
    """``mean [low, high]``; the number of seeds is added when it is not ``n_usual`` (the table's)."""
    if est is None or est.n_seeds == 0:
        return "–"
    if est.ci_low is None:
        return f"{_fmt(est.mean)} (1 seed)"
    n = "" if est.n_seeds == n_usual else f" (n={est.n_seeds})"
    return f"{_fmt(est.mean)} [{_fmt(est.ci_low)}, {_fmt(est.ci_high)}]{n}"


def _usual_n(estimates) -> int | None:
    """The most common number of seeds among ``estimates`` (None when there are none)."""
    counts = [e.n_seeds for e in estimates if e is not None and e.n_seeds]
    return max(sorted(set(counts)), key=counts.count) if counts else None


def seeds_line(estimates) -> str:
    """One line for a table: how many seeds its entries average, and how the CI is made."""
    counts = sorted({e.n_seeds for e in estimates if e is not None and e.n_seeds})
    if not counts:
        return "No entry."
    n = ", ".join(map(str, counts))
    method = "no CI (one seed)" if counts == [1] else "95% CI: Student-t over seeds"
    return f"Seeds per entry (n): {n}; {method}."


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:150] or "x"


def _img(name: str, images: dict[str, bytes], alt: str) -> str:
    data = base64.b64encode(images[name]).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
