"""Reports of a grid run: paper-style tables with Student-t CIs over seeds, heatmaps (of matrices larger than one
row and column), ROC curves, one HTML file.

``write_report(run_dir)`` reads what ``miars grid --out RUN_DIR`` wrote::

    RUN_DIR/grid.json                     spec, cells, failed, wall and stage seconds (optional)
    RUN_DIR/cells/<id>/result.json        miars-attack's result.json plus a "cell" block
    RUN_DIR/cells/<id>/scores.tsv         user_id, is_member, score (headline attacker)
    RUN_DIR/cells/<id>/scores_defense_unaware.tsv   with a defense
    RUN_DIR/cells/<id>/error.json         a failed cell: {"cell", "stage", "error"}

and writes ``RUN_DIR/report/``: ``tables.md``, ``tables.csv``, ``img/*.png`` and
``report.html`` (self-contained: images are base64 data URIs, CSS inline, no links).
A folder written by ``miars-attack --out`` (``result.json`` at its top) reports as one cell.

Cells that differ only in ``seed`` form a *setting*; each table shows, per setting, the mean of
a metric over seeds and the Student-t 95% CI of that mean (:func:`miars_core.science.intervals.mean_ci`,
the interval of every report; exact for normal per-seed values, no resampling), with the
number of seeds. A setting with one seed shows its value and no CI. Settings sharing dataset, shadow dataset, defense and
its parameters, top-k, featurizer, attack and attacker form one *group*: one target x shadow
matrix per metric, like the paper's tables.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..contracts.errors import MiarsError
from ..science.intervals import DESCRIPTION as CI_DESCRIPTION
from ..science.intervals import mean_ci
from .shared import (CONTROLS_NOTE, NO_SIGNAL_NOTE, CellRecord, _figure, _fmt_estimate, _img, _png, _slug, _usual_n,
                     row_markers, seeds_line)

#: Metrics shown in the tables: key, label. ``balanced_accuracy`` is what the CCS'21 paper calls "AUC".
TABLE_METRICS = [
    ("roc_auc", "ROC-AUC"),
    ("balanced_accuracy", "balanced accuracy = the CCS'21 paper's \"AUC\""),
    ("tpr_at_fpr_0.01", "TPR at 1% FPR"),
    ("tpr_at_fpr_0.001", "TPR at 0.1% FPR"),
    ("advantage", "membership advantage (max TPR - FPR)"),
]
#: Metrics drawn as target x shadow heatmaps, with their (short) titles.
HEATMAP_METRICS = {"roc_auc": "ROC-AUC", "balanced_accuracy": "balanced accuracy (the paper's \"AUC\")"}
#: Columns that name a group (one matrix per metric); target and shadow are its rows and columns.
GROUP_KEYS = ("dataset", "shadow_dataset", "service", "defense", "defense_params", "top_k", "featurizer", "attack", "attacker")
#: Bump when roc_png draws differently: stored ROC images of earlier reports are then redrawn.
REPORT_PLOT_VERSION = 3
SCORE_FILES = {"headline": "scores.tsv", "defense_aware": "scores.tsv", "defense_unaware": "scores_defense_unaware.tsv"}


# ----------------------------------------------------------------------------- loading


def _read_json(path: Path) -> dict:
    with open(path) as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return _printable(data)


def _printable(value):
    """Strings as printable UTF-8 text: bytes of a path that were not UTF-8 (kept by JSON as lone
    surrogates) become ``\\xNN``, so tables, plots and report.html can show them."""
    if isinstance(value, str):
        return value if value.isascii() else value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value


def _cell_from_config(config: dict, cell_id: str) -> dict:
    """The "cell" block of a result written before grids (plain ``miars-attack --out``)."""
    return {
        "id": cell_id,
        "dataset": config.get("dataset", "?"),
        "shadow_dataset": config.get("shadow_dataset") or config.get("dataset", "?"),
        "target": config.get("target", "?"),
        "shadow": config.get("shadow") or config.get("target", "?"),
        "defense": config.get("defense") or "none",
        "defense_params": config.get("defense_params") or {},
        "top_k": config.get("top_k", "?"),
        "seed": config.get("seed", 0),
        "featurizer": config.get("featurizer", "?"),
        "attack": config.get("attack", "?"),
    }


def _normalize_cell(cell: dict, cell_id: str) -> dict:
    out = dict(cell)
    out.setdefault("id", cell_id)
    out["dataset"] = str(out.get("dataset", "?"))
    out["shadow_dataset"] = str(out.get("shadow_dataset") or out["dataset"])
    out["defense"] = str(out.get("defense") or "none")
    out["service"] = str(out.get("service") or "popular")
    out["defense_params"] = out.get("defense_params") or {}
    for key in ("target", "shadow", "featurizer", "attack"):
        out[key] = str(out.get(key, "?"))
    out.setdefault("top_k", "?")
    out.setdefault("seed", 0)
    return out


def _load_one(path: Path, cell_id: str) -> CellRecord:
    result_path, error_path = path / "result.json", path / "error.json"
    if result_path.exists():
        try:
            result = _read_json(result_path)
            cell = result.get("cell") or _cell_from_config(result.get("config") or {}, cell_id)
            cell = _normalize_cell(cell, cell_id)
            if not isinstance(result.get("metrics"), dict):
                raise ValueError("no metrics")
            return CellRecord(cell_id, path, cell, "ok", result=result)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            return CellRecord(cell_id, path, _normalize_cell({}, cell_id), "failed", stage="report",
                              error=f"unreadable result.json ({exc})")
    if error_path.exists():
        try:
            err = _read_json(error_path)
            return CellRecord(cell_id, path, _normalize_cell(err.get("cell") or {}, cell_id), "failed",
                              stage=str(err.get("stage", "?")), error=str(err.get("error", "?")).splitlines()[0] if err.get("error") else "?")
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            return CellRecord(cell_id, path, _normalize_cell({}, cell_id), "failed", stage="?", error=f"unreadable error.json ({exc})")
    return CellRecord(cell_id, path, _normalize_cell({}, cell_id), "missing", error="no result.json or error.json (not finished)")


def _check_run_dir(run_dir: str | Path) -> Path:
    p = Path(run_dir)
    if not p.exists():
        raise MiarsError(f"RUN_DIR {str(p)!r} does not exist; pass the folder given to `miars grid --out`")
    if not p.is_dir():
        raise MiarsError(f"RUN_DIR {str(p)!r} is a file, not a folder; pass the folder given to `miars grid --out`")
    if not (p / "cells").is_dir() and not (p / "result.json").exists():
        raise MiarsError(f"RUN_DIR {str(p)!r} has no cells/ folder and no result.json; pass the folder given to "
                         "`miars grid --out` (or to `miars-attack --out`)")
    return p


def load_grid(run_dir: str | Path) -> dict | None:
    """``RUN_DIR/grid.json`` as a dict, or None when absent or unreadable."""
    try:
        record = _read_json(Path(run_dir) / "grid.json")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None  # e.g. [1, 2, 3]: not a run record


def _skipped(grid: dict | None, pairs: bool) -> list[str]:
    """The reasons of ``spec.skipped``: the (target, shadow) pairs left out (``pairs``), or everything else."""
    spec = (grid or {}).get("spec") if isinstance(grid, dict) else None
    skipped = spec.get("skipped") if isinstance(spec, dict) else None
    return [str(s["reason"]) for s in skipped or []
            if isinstance(s, dict) and s.get("reason") and ("target" in s and "shadow" in s) == pairs]


def skipped_reasons(grid: dict | None) -> list[str]:
    """Why requested defense work was left out of the grid (``spec.skipped``: default sweep values a catalogue
    cannot serve, default defenses that train none of the targets), one line each."""
    return _skipped(grid, pairs=False)


#: Heads the list of (target, shadow) pairs a grid left out; their table entries stay empty.
LEFT_OUT_NOTE = ("Pairs the grid left out, before any work (their table entries are empty): a sequential target "
                 "needs a sequential shadow (docs/sequential.md).")


def refused_pairs(grid: dict | None) -> list[str]:
    """The (target, shadow) pairs the grid left out (``spec.skipped`` entries with a target and a shadow: a
    sequential target crossed with a general shadow), one reason each; the tables show them as "left out"."""
    return _skipped(grid, pairs=True)


def load_cells(run_dir: str | Path) -> list[CellRecord]:
    """Every cell of a run, sorted by id: finished ("ok"), failed, and listed in grid.json but not written ("missing").

    Raises :class:`MiarsError` when ``run_dir`` is not a run folder. A folder written by
    ``miars-attack --out`` (``result.json`` at its top, no ``cells/``) is one cell.
    """
    root = _check_run_dir(run_dir)
    cells_dir = root / "cells"
    if not cells_dir.is_dir():
        return [_load_one(root, _printable(root.resolve().name) or "cell")]
    records = {d.name: _load_one(d, d.name) for d in sorted(cells_dir.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    grid = load_grid(root) or {}
    for entry in list(grid.get("cells") or []) + list(grid.get("failed") or []):
        cell_id = str(entry.get("id", "?") if isinstance(entry, dict) else entry)
        if cell_id not in records:
            records[cell_id] = CellRecord(cell_id, cells_dir / cell_id, _normalize_cell({}, cell_id), "missing",
                                          error="listed in grid.json, but its folder has no result.json or error.json")
    return [records[k] for k in sorted(records)]


def read_scores(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(is_member bool, score float64)`` from a scores.tsv (header ``user_id\\tis_member\\tscore``)."""
    members, scores = [], []
    with open(path) as fh:
        header = fh.readline().rstrip("\n").split("\t")
        try:
            im, sc = header.index("is_member"), header.index("score")
        except ValueError:
            raise ValueError(f"{path.name}: header must name is_member and score") from None
        for line in fh:
            if line.strip():
                parts = line.rstrip("\n").split("\t")
                members.append(int(parts[im]))
                scores.append(float(parts[sc]))
    return np.asarray(members, dtype=bool), np.asarray(scores, dtype=np.float64)


# ----------------------------------------------------------------------------- statistics


def _params_text(params: dict) -> str:
    return ",".join(f"{k}={json.dumps(params[k], sort_keys=True)}" for k in sorted(params)) if params else ""


def _group_key(cell: dict, attacker: str) -> tuple:
    return (cell["dataset"], cell["shadow_dataset"], cell["service"], cell["defense"], _params_text(cell["defense_params"]),
            str(cell["top_k"]), cell["featurizer"], cell["attack"], attacker)


def _sort_key(value) -> tuple:
    """Numbers in numeric order, then text; stable for mixed types."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


@dataclass
class Group:
    """One target x shadow matrix per metric, for settings sharing everything else."""

    key: tuple
    targets: list
    shadows: list
    #: (target, shadow) -> metric -> Estimate
    estimates: dict
    #: (target, shadow) -> ids of the cells averaged
    cell_ids: dict
    #: targets that are control recommenders
    controls: set = field(default_factory=set)
    #: (target, shadow) -> ids of the cells whose target lists carry no signal
    flagged: dict = field(default_factory=dict)

    def row_label(self, target) -> str:
        """The target's name with its markers: ``[control]``, ``[no signal]`` (any of its cells flagged)."""
        return str(target) + "".join(f" {m}" for m in row_markers(target in self.controls,
                                                                    any(self.flagged.get((target, s)) for s in self.shadows)))

    @property
    def fields(self) -> dict:
        return dict(zip(GROUP_KEYS, self.key))

    @property
    def title(self) -> str:
        f = self.fields
        parts = [f"dataset {f['dataset']}"]
        if f["shadow_dataset"] != f["dataset"]:
            parts.append(f"shadow dataset {f['shadow_dataset']}")
        if f["service"] != "popular":
            parts.append(f"service {f['service']}")
        parts.append("no defense" if f["defense"] == "none" else
                     f"defense {f['defense']}" + (f" ({f['defense_params']})" if f["defense_params"] else ""))
        parts += [f"top-{f['top_k']}", f"featurizer {f['featurizer']}", f"attack {f['attack']}"]
        if f["attacker"] != "headline":
            parts.append(f"{f['attacker'].replace('_', '-')} attacker")
        return ", ".join(parts)

    @property
    def slug(self) -> str:
        return _slug("-".join(str(x) for x in self.key if x != ""))


def flagged_cells(records: list[CellRecord]) -> list[CellRecord]:
    """Finished cells whose target lists carry no signal, by id."""
    return [r for r in records if r.status == "ok" and r.no_signal]


def build_groups(records: list[CellRecord]) -> list[Group]:
    """Aggregate finished cells over seeds into groups (deterministic order)."""
    values: dict[tuple, dict[tuple, dict[str, list]]] = {}
    ids: dict[tuple, dict[tuple, list]] = {}
    controls: dict[tuple, set] = {}
    flagged: dict[tuple, dict[tuple, list]] = {}
    for rec in records:
        if rec.status != "ok":
            continue
        for attacker, metrics in rec.attackers.items():
            gk = _group_key(rec.cell, attacker)
            cellkey = (rec.cell["target"], rec.cell["shadow"])
            if rec.control:
                controls.setdefault(gk, set()).add(rec.cell["target"])
            if rec.no_signal:
                flagged.setdefault(gk, {}).setdefault(cellkey, []).append(rec.id)
            slot = values.setdefault(gk, {}).setdefault(cellkey, {})
            seed = rec.cell["seed"]
            ids.setdefault(gk, {}).setdefault(cellkey, []).append((_sort_key(seed), rec.id))
            for metric, _ in TABLE_METRICS:
                x = metrics.get(metric)
                slot.setdefault(metric, []).append((seed, float(x) if isinstance(x, (int, float)) else None))
    groups = []
    for gk in sorted(values, key=lambda k: tuple(_sort_key(x) for x in k)):
        cells = values[gk]
        estimates = {}
        for ck, per_metric in cells.items():
            estimates[ck] = {}
            for metric, pairs in per_metric.items():
                pairs = sorted(pairs, key=lambda p: _sort_key(p[0]))
                est = mean_ci([x for _, x in pairs])  # every table metric is a rate in [0, 1]
                est.seeds = [seed for seed, x in pairs if x is not None and math.isfinite(x)]
                estimates[ck][metric] = est
        targets = sorted({t for t, _ in cells}, key=_sort_key)
        shadows = sorted({s for _, s in cells}, key=_sort_key)
        cell_ids = {ck: [i for _, i in sorted(v)] for ck, v in ids[gk].items()}
        groups.append(Group(gk, targets, shadows, estimates, cell_ids, controls.get(gk, set()),
                            {ck: sorted(v) for ck, v in flagged.get(gk, {}).items()}))
    return groups


# ----------------------------------------------------------------------------- tables


def tables_markdown(groups: list[Group], records: list[CellRecord], left_out: list[str] = ()) -> str:
    """All tables as markdown: per group, per metric, a target (rows) x shadow (columns) matrix.

    ``left_out``: why (target, shadow) pairs were left out of the grid (:func:`refused_pairs`), listed first.
    """
    lines = ["# miars grid report: tables", "",
             f"Each entry is the mean over seeds and, in brackets, the {CI_DESCRIPTION}. "
             "An entry with another number of seeds than its table says so: (n=2). "
             "Rows: target recommender; columns: shadow recommender. "
             "Balanced accuracy is what the CCS'21 paper calls \"AUC\".", ""]
    if left_out:
        lines += [LEFT_OUT_NOTE, ""] + [f"* {why}" for why in left_out] + [""]
    lines += checks_markdown(groups, records)
    for g in groups:
        every = [e for per in g.estimates.values() for e in per.values()]
        n_usual = _usual_n(every)
        lines += [f"## {g.title}", "", seeds_line(every), ""]
        for metric, label in TABLE_METRICS:
            lines += [f"### {label} (`{metric}`)", "",
                      "| target \\ shadow | " + " | ".join(map(str, g.shadows)) + " |",
                      "|---|" + "---:|" * len(g.shadows)]
            for t in g.targets:
                row = [_fmt_estimate(g.estimates.get((t, s), {}).get(metric), n_usual) for s in g.shadows]
                marks = g.row_label(t)[len(str(t)):]
                lines.append(f"| **{t}**{marks} | " + " | ".join(row) + " |")
            lines.append("")
    bad = [r for r in records if r.status != "ok"]
    if bad:
        lines += ["## Cells without a result", "", "| cell | status | stage | error |", "|---|---|---|---|"]
        for r in bad:
            lines.append(f"| {r.id} | {r.status} | {r.stage or ''} | {(r.error or '').replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


def checks_markdown(groups: list[Group], records: list[CellRecord]) -> list[str]:
    """The "Controls and checks" section of tables.md: flagged cells by id, how to read the control rows."""
    flagged = flagged_cells(records)
    has_controls = any(g.controls for g in groups)
    if not flagged and not has_controls:
        return []
    lines = ["## Controls and checks", ""]
    if flagged:
        lines += [NO_SIGNAL_NOTE, "", f"No signal in {len(flagged)} cell(s):", ""]
        lines += [f"- `{r.id}` ({r.signal.get('method', '?')}: lift {r.signal.get('lift')})" for r in flagged]
        lines.append("")
    if has_controls:
        lines += [CONTROLS_NOTE, ""]
    return lines


CSV_COLUMNS = list(GROUP_KEYS[:-1]) + ["attacker", "target", "shadow", "metric", "mean", "ci_low", "ci_high", "ci_method",
                                       "n_seeds", "seeds", "cells", "control", "no_signal_cells"]


def tables_csv(groups: list[Group]) -> str:
    """Long form: one row per (group, target, shadow, metric)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for g in groups:
        for t in g.targets:
            for s in g.shadows:
                per = g.estimates.get((t, s))
                if not per:
                    continue
                for metric, _ in TABLE_METRICS:
                    e = per.get(metric)
                    if e is None or e.n_seeds == 0:
                        continue
                    w.writerow(list(g.key) + [t, s, metric, _csvnum(e.mean), _csvnum(e.ci_low), _csvnum(e.ci_high), e.method,
                                              e.n_seeds, " ".join(map(str, e.seeds)), " ".join(g.cell_ids[(t, s)]),
                                              str(t in g.controls).lower(), len(g.flagged.get((t, s), []))])
    return buf.getvalue()


def _csvnum(x: float | None) -> str:
    return "" if x is None else repr(round(float(x), 10))


# ----------------------------------------------------------------------------- plots


def has_heatmap(group: Group) -> bool:
    """Whether the group's matrices are drawn: only a matrix of more than one row (target) and one
    column (shadow); a single cell, row or column is just its table (a benchmark of defenses, each
    target its own shadow, would otherwise draw two one-square heatmaps per defense setting)."""
    return len(group.targets) > 1 and len(group.shadows) > 1


def heatmap_png(group: Group, metric: str, label: str) -> bytes:
    """Target x shadow heatmap of one metric's means, each square annotated (with its CI when there is one)."""
    data = np.full((len(group.targets), len(group.shadows)), np.nan)
    for i, t in enumerate(group.targets):
        for j, s in enumerate(group.shadows):
            e = group.estimates.get((t, s), {}).get(metric)
            if e is not None and e.n_seeds:
                data[i, j] = e.mean
    fig = _figure(max(4.2, 1.6 + 1.25 * len(group.shadows)), max(2.6, 1.3 + 0.8 * len(group.targets)))
    ax = fig.add_subplot()
    # 0.5 (chance) to 1 unless a value lies below chance (a defense-unaware attacker can)
    vmin = min(0.5, float(np.nanmin(data))) if np.isfinite(data).any() else 0.5
    im = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=vmin, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(group.shadows)), [str(s) for s in group.shadows])
    ax.set_yticks(range(len(group.targets)), [str(t) for t in group.targets])
    ax.set_xlabel("shadow recommender")
    ax.set_ylabel("target recommender")
    every = [e for per in group.estimates.values() for e in [per.get(metric)] if e is not None]
    n_usual = _usual_n(every)
    ax.set_title(f"{label}\nmean [Student-t 95% CI] over n={n_usual} seeds" if n_usual and n_usual > 1 else
                 f"{label}\none seed: no CI", fontsize=9)
    for i, t in enumerate(group.targets):
        for j, s in enumerate(group.shadows):
            e = group.estimates.get((t, s), {}).get(metric)
            if e is None or not e.n_seeds:
                ax.text(j, i, "–", ha="center", va="center", color="black")
                continue
            text = f"{e.mean:.3f}" + (f"\n[{e.ci_low:.3f}, {e.ci_high:.3f}]" if e.ci_low is not None else "")
            if e.n_seeds != n_usual:
                text += f"\nn={e.n_seeds}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if (e.mean - vmin) / (1.0 - vmin) < 0.6 else "black")
    fig.colorbar(im, ax=ax, shrink=0.9)
    return _png(fig)


class RocFigure:
    """One figure (linear ROC, log-log ROC) redrawn for each cell of a report.

    The axes, their ticks, labels and fixed margins are drawn once into a background (again
    only when the log plot's lower limit, 0.5/n, changes); each cell restores it and draws just
    its curves, legends and title on top (matplotlib's blitting). Building a figure, solving its
    layout and drawing its tick labels cost several times more than the curves, and a benchmark
    draws one ROC plot per cell.
    """

    def __init__(self):
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.fig = Figure(figsize=(9.0, 3.9), dpi=100)
        self.canvas = FigureCanvasAgg(self.fig)
        self.fig.subplots_adjust(left=0.065, right=0.985, bottom=0.13, top=0.84, wspace=0.25)
        self.lin, self.log = self.fig.subplots(1, 2)
        self.lin.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title="ROC")
        self.lin.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="chance")
        self.log.set(xscale="log", yscale="log", xlabel="false positive rate (log)", ylabel="true positive rate (log)",
                     title="ROC, log-log (zero rates drawn at 0.5/n)")
        (self.chance,) = self.log.plot([1e-3, 1], [1e-3, 1], ls="--", color="grey", lw=0.8, label="chance")
        self.title = self.fig.suptitle("", fontsize=9)
        self.curves: list = []
        self.background: tuple[float, object] | None = None  # (floor, the pixels of the empty axes)

    def png(self, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> bytes:
        import matplotlib.image
        from sklearn.metrics import roc_auc_score, roc_curve

        drawn, floor = [], 1.0
        for label, (y, s) in curves.items():
            fpr, tpr, _ = roc_curve(y, s)
            n_neg, n_pos = int((~y).sum()), int(y.sum())
            floor = min(floor, 0.5 / max(n_neg, 1), 0.5 / max(n_pos, 1))
            drawn.append((label, fpr, tpr, roc_auc_score(y, s), n_neg, n_pos))
        for line in self.curves:
            line.remove()
        self.curves = []
        for ax in (self.lin, self.log):
            if ax.get_legend() is not None:
                ax.get_legend().remove()
        if self.background is None or self.background[0] != floor:
            self.chance.set_data([floor, 1], [floor, 1])
            self.log.set(xlim=(floor, 1), ylim=(floor, 1.05))
            self.title.set_text("")
            self.canvas.draw()
            self.background = (floor, self.canvas.copy_from_bbox(self.fig.bbox))
        self.canvas.restore_region(self.background[1])
        for i, (label, fpr, tpr, auc, n_neg, n_pos) in enumerate(drawn):
            self.curves += self.lin.plot(fpr, tpr, color=f"C{i % 10}", label=f"{label} (ROC-AUC {auc:.3f})")
            self.curves += self.log.plot(np.maximum(fpr, 0.5 / n_neg), np.maximum(tpr, 0.5 / n_pos), color=f"C{i % 10}",
                                         label=label)
        for line in self.curves:
            line.axes.draw_artist(line)
        for ax in (self.lin, self.log):  # the curves, then chance
            ax.draw_artist(ax.legend(handles=ax.lines[1:] + ax.lines[:1], loc="lower right", fontsize=7))
        self.title.set_text(title)
        self.fig.draw_artist(self.title)
        buf = io.BytesIO()
        matplotlib.image.imsave(buf, np.asarray(self.canvas.buffer_rgba()), format="png", dpi=self.fig.dpi,
                                metadata={"Software": None})
        return buf.getvalue()


def roc_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, figure: RocFigure | None = None) -> bytes:
    """Linear ROC and log-log ROC (low-FPR view) of one cell; ``curves`` maps a label to (is_member, score).

    ``figure``: a :class:`RocFigure` to redraw (a report draws every cell's plot on one).
    """
    return (figure or RocFigure()).png(curves, title)


# ----------------------------------------------------------------------------- writing


def _atomic_write(path: Path, data: bytes) -> None:
    from ..contracts.files import atomic_write

    atomic_write(path, data)


def _utf8(text: str) -> bytes:
    """UTF-8 text; bytes of a path or name that were not UTF-8 (surrogate escapes) become ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace").encode("utf-8")


def _cell_title(rec: CellRecord) -> str:
    c = rec.cell
    text = f"{rec.id}: {c['dataset']}"
    if c["shadow_dataset"] != c["dataset"]:
        text += f" (shadow data {c['shadow_dataset']})"
    text += f", target {c['target']}, shadow {c['shadow']}, seed {c['seed']}"
    if c["defense"] != "none":
        text += f", defense {c['defense']}" + (f" ({_params_text(c['defense_params'])})" if c["defense_params"] else "")
    return text


def _roc_curves(rec: CellRecord) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    names = list(rec.attackers) or ["headline"]
    curves = {}
    for name in names:
        path = rec.path / SCORE_FILES.get(name, "scores.tsv")
        if path.exists():
            y, s = read_scores(path)
            if y.any() and not y.all():
                curves[name.replace("_", "-") if name != "headline" else "attack"] = (y, s)
    return curves


DIGESTS = ".roc-digests.json"


def _curves_digest(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> str:
    h = hashlib.sha256(f"{REPORT_PLOT_VERSION}|{title}".encode())
    for label in sorted(curves):
        y, s = curves[label]
        h.update(label.encode())
        h.update(np.ascontiguousarray(y, dtype=np.bool_).tobytes())
        h.update(np.ascontiguousarray(s, dtype=np.float64).tobytes())
    return h.hexdigest()


def _read_digests(img: Path) -> dict[str, str]:
    try:
        data = json.loads((img / DIGESTS).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_report(run_dir: str | Path, force: bool = False) -> Path:
    """Write ``RUN_DIR/report/`` (tables.md, tables.csv, img/*.png, report.html); return the path of report.html.

    Failed and missing cells are listed, never fatal; a cell whose scores cannot be read has no
    ROC plot and a note saying why. Raises :class:`MiarsError` when ``run_dir`` is not a run folder,
    or when report/ holds files miars did not write at the paths it writes (unless ``force``);
    only files the previous report wrote (its marker lists them) are replaced or removed.
    """
    from ..engine.rundir import MARKER, check_report_dir, new_marker, read_marker, write_marker

    root = _check_run_dir(run_dir)
    records = load_cells(root)
    if not records:
        raise MiarsError(f"RUN_DIR {str(root)!r} has no cells yet; run `miars grid --out {root}` first")
    grid = load_grid(root)
    groups = build_groups(records)
    out = root / "report"
    img = out / "img"
    left_out = refused_pairs(grid)
    files: dict[str, bytes] = {"tables.md": _utf8(tables_markdown(groups, records, left_out)),
                               "tables.csv": _utf8(tables_csv(groups))}

    images: dict[str, bytes] = {}
    heatmaps: dict[str, list[tuple[str, str]]] = {}
    for g in groups:
        if not has_heatmap(g):  # a one-row or one-column matrix reads better as the table below it
            continue
        for metric, label in HEATMAP_METRICS.items():
            name = f"heatmap-{metric}-{g.slug}.png"
            images[name] = heatmap_png(g, metric, label)
            heatmaps.setdefault(g.slug, []).append((name, label))
    rocs: list[tuple[CellRecord, str | None, str | None]] = []
    rendered = _read_digests(img)  # ROC plots are the slow part: redraw only those whose scores changed
    figure: RocFigure | None = None  # built at the first plot drawn
    digests: dict[str, str] = {}
    for rec in records:
        if rec.status != "ok":
            continue
        try:
            curves = _roc_curves(rec)
        except (OSError, ValueError, IndexError) as exc:
            rocs.append((rec, None, f"scores unreadable ({exc})"))
            continue
        if not curves:
            rocs.append((rec, None, "no scores.tsv with both members and non-members"))
            continue
        name = f"roc-{_slug(rec.id)}.png"
        title = _cell_title(rec)
        digest = _curves_digest(curves, title)
        previous = img / name
        if rendered.get(name) == digest and previous.is_file():
            images[name] = previous.read_bytes()  # same scores, same title: the same picture
        else:
            figure = figure or RocFigure()
            images[name] = roc_png(curves, title, figure)
        digests[name] = digest
        rocs.append((rec, name, None))
    from .defensereport import defense_section

    defenses_html, defenses_md, defenses_csv = defense_section(records, images, skipped_reasons(grid))
    files.update({f"img/{name}": data for name, data in images.items()})
    files[f"img/{DIGESTS}"] = json.dumps(digests, sort_keys=True, indent=0).encode()
    if defenses_html:
        files["defenses.md"] = _utf8(defenses_md)
        files["defenses.csv"] = _utf8(defenses_csv)
    files["report.html"] = _utf8(_html(root, grid, records, groups, heatmaps, rocs, images, defenses_html))
    # Only what miars wrote is replaced: the marker lists the report's files before they are written
    # (so a killed report still owns them) and, at the end, exactly the files of this report.
    owned = check_report_dir(out, force, writing=list(files))
    before = read_marker(out)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, new_marker("report", before, files=sorted(owned | set(files))))
    for name, data in files.items():
        _atomic_write(out / name, data)
    for stale in sorted(owned - set(files) - {MARKER}):
        try:
            (out / stale).unlink()
        except FileNotFoundError:
            pass
    write_marker(out, new_marker("report", before, files=sorted(files)))
    return out / "report.html"


# ----------------------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5rem auto;max-width:1150px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
h3{font-size:1rem;margin:1rem 0 .3rem}
table{border-collapse:collapse;margin:.3rem 0 1rem;font-size:.85rem}
th,td{border:1px solid #ccc;padding:.25rem .55rem;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}.note{color:#555;font-size:.85rem}
caption{text-align:left;font-weight:600;padding:.2rem 0}.tables{display:flex;flex-wrap:wrap;gap:0 1.5rem}
.figs{display:flex;flex-wrap:wrap;gap:1rem}.figs img{max-width:100%;border:1px solid #eee}
.err{color:#a00}code{background:#f5f5f5;padding:0 .2rem}
details{margin:.5rem 0}summary{cursor:pointer}
tr.control th{font-style:italic}tr.nosignal th{color:#a00}.warn{color:#a00}
""".strip()


def _html_table(g: Group, metric: str, label: str) -> str:
    e = html.escape
    n_usual = _usual_n([x for per in g.estimates.values() for x in per.values()])
    rows = [f'<table class="metric" data-group="{e(g.slug)}" data-metric="{e(metric)}">',
            f'<caption class="l">{e(label)}</caption>',
            '<tr><th class="l">target \\ shadow</th>' + "".join(f"<th>{e(str(s))}</th>" for s in g.shadows) + "</tr>"]
    for t in g.targets:
        cells = "".join(f"<td>{e(_fmt_estimate(g.estimates.get((t, s), {}).get(metric), n_usual))}</td>" for s in g.shadows)
        flagged = any(g.flagged.get((t, s)) for s in g.shadows)
        css = " ".join(c for c, on in (("control", t in g.controls), ("nosignal", flagged)) if on)
        rows.append(f'<tr{f" class={chr(34)}{css}{chr(34)}" if css else ""}><th class="l">{e(g.row_label(t))}</th>{cells}</tr>')
    rows.append("</table>")
    return "\n".join(rows)


def _spec_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_spec_value(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _html(root, grid, records, groups, heatmaps, rocs, images, extra: str = "") -> str:
    e = html.escape
    ok = [r for r in records if r.status == "ok"]
    failed = [r for r in records if r.status == "failed"]
    missing = [r for r in records if r.status == "missing"]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>miars report: {e(_printable(root.resolve().name))}</title>", f"<style>{CSS}</style></head><body>",
             f"<h1>miars report: <code>{e(_printable(root.resolve().name))}</code></h1>",
             f'<p>{len(ok)} cells finished, {len(failed)} failed, {len(missing)} missing. '
             f"Entries are the mean over seeds with, in brackets, the {e(CI_DESCRIPTION)}; an entry with another number "
             "of seeds than its group says so (n=2). "
             "Rows: target recommender; columns: shadow recommender. Balanced accuracy is what the CCS'21 paper "
             "calls &ldquo;AUC&rdquo;; ROC-AUC is the true area under the ROC curve.</p>"]
    if grid:
        parts.append("<h2>Grid</h2>")
        runs = grid.get("runs") if isinstance(grid.get("runs"), list) else []
        if runs:
            parts.append('<table><tr><th class="l">run</th><th class="l">finished</th><th>wall s</th><th>fit s</th>'
                         '<th>attack s</th><th class="l">executor</th></tr>' + "".join(
                f'<tr><td class="l">{i + 1}</td><td class="l">{e(str(r.get("finished", "")))}</td>'
                f'<td>{float(r.get("wall_seconds") or 0):.1f}</td><td>{float(r.get("fit_seconds") or 0):.1f}</td>'
                f'<td>{float(r.get("attack_seconds") or 0):.1f}</td>'
                f'<td class="l">{e(json.dumps(r.get("executor", {}), sort_keys=True))}</td></tr>'
                for i, r in enumerate(runs) if isinstance(r, dict)) + "</table>"
                + '<p class="note">Each run of this grid (a resumed or repeated run computes only what was missing; '
                  "fit and attack seconds are summed over workers).</p>")
        elif "wall_seconds" in grid:
            parts.append(f"<p>Wall time: {float(grid['wall_seconds']):.1f} s.</p>")
        if grid.get("stage_seconds"):
            parts.append('<table><tr><th class="l">stage</th><th>seconds</th></tr>' + "".join(
                f'<tr><td class="l">{e(str(k))}</td><td>{float(v):.1f}</td></tr>' for k, v in grid["stage_seconds"].items()) + "</table>")
        spec = grid.get("spec")
        if isinstance(spec, dict) and spec:
            parts.append('<h3>Spec</h3><table class="spec">' + "".join(
                f'<tr><th class="l">{e(str(k))}</th><td class="l"><code>{e(_spec_value(spec[k]))}</code></td></tr>'
                for k in sorted(spec)) + "</table>")
        elif spec is not None:
            parts.append("<h3>Spec</h3><pre>" + e(json.dumps(spec, indent=1, sort_keys=True)) + "</pre>")
    if failed or missing:
        parts.append('<h2 id="failed">Cells without a result</h2>')
        parts.append('<table><tr><th class="l">cell</th><th class="l">status</th><th class="l">stage</th><th class="l">error</th></tr>')
        for r in failed + missing:
            parts.append(f'<tr><td class="l">{e(r.id)}</td><td class="l">{e(r.status)}</td><td class="l">{e(r.stage or "")}</td>'
                         f'<td class="l err">{e(r.error or "")}</td></tr>')
        parts.append("</table>")
    left_out = refused_pairs(grid)
    if left_out:
        parts.append(f'<h2 id="left-out">Left out</h2><p class="note">{e(LEFT_OUT_NOTE)}</p><ul>'
                     + "".join(f"<li>{e(why)}</li>" for why in left_out) + "</ul>")
    flagged = flagged_cells(records)
    if flagged or any(g.controls for g in groups):
        parts.append('<h2 id="checks">Controls and checks</h2>')
        if flagged:
            parts.append(f'<p class="warn">{e(NO_SIGNAL_NOTE)}</p><p>No signal in {len(flagged)} cell(s):</p><ul>' + "".join(
                f'<li class="nosignal"><code>{e(r.id)}</code>: {e(str(r.signal.get("warning", "")))}</li>' for r in flagged)
                + "</ul>")
        if any(g.controls for g in groups):
            parts.append(f'<p class="note">{e(CONTROLS_NOTE)}</p>')
    if not groups:
        parts.append("<p>No finished cell: no table.</p>")
    else:
        parts.append("<h2>Contents</h2><ul>" + "".join(f'<li><a href="#{e(g.slug)}">{e(g.title)}</a></li>' for g in groups)
                     + ('<li><a href="#roc">ROC curves per cell</a></li>' if rocs else "") + "</ul>")
    if extra:
        parts.append(extra)
    for g in groups:
        parts.append(f'<h2 id="{e(g.slug)}">{e(g.title)}</h2>')
        parts.append(f'<p class="note seeds">{e(seeds_line([x for per in g.estimates.values() for x in per.values()]))}</p>')
        if heatmaps.get(g.slug):
            parts.append('<div class="figs">' + "".join(_img(n, images, f"{label}: {g.title}") for n, label in heatmaps[g.slug])
                         + "</div>")
        parts.append('<div class="tables">' + "".join(_html_table(g, metric, f"{label} ({metric})") for metric, label in TABLE_METRICS) + "</div>")
    if rocs:
        parts.append('<h2 id="roc">ROC curves per cell</h2>'
                     '<p class="note">Left: linear ROC. Right: the same curve on log-log axes, where the low false-positive '
                     "region that matters for a confident attack is visible.</p>")
        for rec, name, why in rocs:
            parts.append(f"<h3>{e(_cell_title(rec))}</h3>")
            parts.append(_img(name, images, f"ROC curves of {rec.id}") if name else f'<p class="err">{e(why)}</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
