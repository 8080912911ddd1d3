"""The defense benchmark's table and privacy-utility frontier, from a run folder's cells.

For every (dataset, recommender, defense, parameters) the cells of all seeds give: both
attackers' leakage, ``static`` (shadow served without the defense: the CCS'21 paper's setting,
``attackers.defense_unaware``) and ``adaptive`` (shadow trained and served under the defense,
``attackers.defense_aware``); the utility of the defended target service on its members'
held-out items, and on its new accounts' (the target non-members' lists on their own held-out
items: ``new_accounts``, "–" for cells written before result.json had it); and the cost in
seconds of the defended service (its fit plus the defense).
Undefended cells (``none``) give both attackers the same numbers. A defense that reports a
differential-privacy guarantee (``privacy_``) adds its epsilon and the unit epsilon is counted
in: ``record`` (one interaction) or ``user`` (a user with all her interactions); the two are
not comparable, so every table has the unit as a column and the frontier labels it.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

from ..science.intervals import DESCRIPTION as CI_DESCRIPTION
from ..science.intervals import Estimate, mean_ci
from .shared import CONTROLS_NOTE, NO_SIGNAL_NOTE, CellRecord, _fmt_estimate, _img, _usual_n, row_markers, seeds_line

LEAKAGE = [("roc_auc", "ROC-AUC"), ("roc_auc_distance", "|ROC-AUC - 0.5|"), ("balanced_accuracy", "balanced accuracy"),
           ("tpr_at_fpr_0.01", "TPR@1%FPR"), ("advantage", "advantage")]
ATTACKERS = {"static": "defense_unaware", "adaptive": "defense_aware"}


@dataclass
class DefenseRow:
    dataset: str
    target: str
    defense: str
    params: dict
    k: int
    values: dict[str, list[float]] = field(default_factory=dict)
    estimates: dict[str, Estimate] = field(default_factory=dict)
    #: the target is a control recommender (random, pop)
    control: bool = False
    #: ids of the row's cells whose target lists carry no signal
    flagged: list[str] = field(default_factory=list)
    #: The unit of the defense's DP epsilon: "record", "user", "" (no DP guarantee), or both joined
    #: by "/" if cells disagree.
    levels: list[str] = field(default_factory=list)

    @property
    def level(self) -> str:
        return "/".join(sorted(set(self.levels)))

    @property
    def label(self) -> str:
        text = self.defense
        if self.params:
            text += f" ({', '.join(f'{k}={v}' for k, v in sorted(self.params.items()))})"
        return " ".join([text, *row_markers(False, bool(self.flagged))])


def _attacker_metrics(rec: CellRecord, attacker: str) -> dict:
    result = rec.result or {}
    if rec.cell.get("defense", "none") == "none":
        return result.get("metrics", {})
    return (result.get("attackers") or {}).get(ATTACKERS[attacker], {})


def _utility(rec: CellRecord) -> dict:
    u = (rec.result or {}).get("utility") or {}
    return u.get("defended") or u.get("undefended") or {}


def _scores(block: dict) -> dict[str, float]:
    """The finite recall / NDCG / HR numbers of a utility block (``holdout``, ``users``, nested blocks left out)."""
    return {name: float(value) for name, value in block.items()
            if name not in ("holdout", "users") and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)}


def _cost(rec: CellRecord) -> float | None:
    result = rec.result or {}
    report = (result.get("recommenders") or {}).get("target") or {}
    fit = report.get("fit_seconds")
    if fit is None:
        return None
    return float(fit) + float((result.get("timings") or {}).get("defense", 0.0))


def _privacy(rec: CellRecord) -> dict:
    """The target's DP record (``privacy_`` as result.json copies it), or {}."""
    report = ((rec.result or {}).get("recommenders") or {}).get("target") or {}
    privacy = report.get("privacy")
    return privacy if isinstance(privacy, dict) else {}


def _params_key(params: dict) -> tuple:
    """Sort parameter sweeps by value, numbers numerically (epsilon 5 before 10)."""
    return tuple((k, (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, repr(v)))
                 for k, v in sorted(params.items()))


def defense_rows(records: list[CellRecord]) -> list[DefenseRow]:
    """One row per (dataset, target, defense, parameters, k), its values over seeds and their estimates."""
    rows: dict[tuple, DefenseRow] = {}
    for rec in records:
        if rec.status != "ok" or not (rec.result or {}).get("utility"):
            continue
        c = rec.cell
        key = (c["dataset"], c["target"], c.get("defense", "none"), repr(sorted((c.get("defense_params") or {}).items())),
               int(c["top_k"]))
        row = rows.setdefault(key, DefenseRow(c["dataset"], c["target"], c.get("defense", "none"),
                                              dict(c.get("defense_params") or {}), int(c["top_k"]), control=rec.control))
        if rec.no_signal:
            row.flagged.append(rec.id)
        for attacker in ATTACKERS:
            m = dict(_attacker_metrics(rec, attacker))
            if "roc_auc" in m:
                m["roc_auc_distance"] = abs(m["roc_auc"] - 0.5)
            for metric, _ in LEAKAGE:
                if metric in m:
                    row.values.setdefault(f"{attacker}:{metric}", []).append(float(m[metric]))
        utility = _utility(rec)
        for name, value in _scores(utility).items():
            row.values.setdefault(f"utility:{name}", []).append(value)
        # the new accounts' (non-members'); a cell written before result.json had them adds nothing: "–", never 0
        for name, value in _scores(utility.get("new_accounts") or {}).items():
            row.values.setdefault(f"new_accounts:{name}", []).append(value)
        cost = _cost(rec)
        if cost is not None:
            row.values.setdefault("cost:seconds", []).append(cost)
        privacy = _privacy(rec)
        level = str(privacy.get("level") or "")
        if level and level not in row.levels:
            row.levels.append(level)
        for key in ("epsilon", "delta"):
            value = privacy.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                row.values.setdefault(f"privacy:{key}", []).append(float(value))
    out = sorted(rows.values(), key=lambda r: (r.dataset, r.control, r.target, r.defense != "none", r.defense,
                                               _params_key(r.params)))
    for row in out:
        row.estimates = {k: mean_ci(v, bounds=_bounds(k)) for k, v in row.values.items()}
    return out


def _bounds(column: str) -> tuple[float, float] | None:
    """The range a column's values can take (the interval is clipped to it): rates in [0, 1], seconds >= 0."""
    if column == "cost:seconds":
        return (0.0, math.inf)
    if column.endswith(":roc_auc_distance"):
        return (0.0, 0.5)
    return (0.0, 1.0)  # leakage metrics and the utility's recall, NDCG and HR


def _n(row: DefenseRow) -> str:
    """The row's number of seeds (cells), as its tables show it."""
    n = _usual_n(row.estimates.values())
    return str(n) if n else "–"


def _columns(rows: list[DefenseRow]) -> list[str]:
    utility = sorted({k for r in rows for k in r.values if k.startswith("utility:")})
    new_accounts = sorted({k for r in rows for k in r.values if k.startswith("new_accounts:")})
    leak = [f"{a}:{m}" for a in ATTACKERS for m, _ in LEAKAGE]
    return ["privacy:epsilon"] + leak + utility + new_accounts + ["cost:seconds"]


def _label(column: str) -> str:
    kind, _, name = column.partition(":")
    names = dict(LEAKAGE)
    if kind in ATTACKERS:
        return f"{kind} {names.get(name, name)}"
    if kind == "utility":
        return name
    if kind == "new_accounts":
        return f"new accounts {name}"
    if kind == "privacy":
        return "DP epsilon"
    return "cost (s)"


def _title(rows: list[DefenseRow], dataset: str, target: str) -> str:
    """``ml-100k: target random [control: random items]``."""
    from ..engine.grid import CONTROLS

    control = any(r.control for r in rows if (r.dataset, r.target) == (dataset, target))
    return f"{dataset}: target {target}" + (f" [control: {CONTROLS.get(target, 'no signal by construction')}]"
                                            if control else "")


def _notes(rows: list[DefenseRow]) -> list[str]:
    """The lines under the tables: flagged cells by id, how to read controls."""
    flagged = [cid for r in rows for cid in r.flagged]
    out = []
    if flagged:
        out.append(f"{NO_SIGNAL_NOTE} No signal in: " + ", ".join(f"`{c}`" for c in flagged) + ".")
    if any(r.control for r in rows):
        out.append(CONTROLS_NOTE.replace("Rows marked [control] are", "Targets marked [control] are"))
    return out


#: Header of the column that gives epsilon's unit (record / user; "–": no DP guarantee).
UNIT = "epsilon unit"


def _unit(row: DefenseRow) -> str:
    return row.level or "–"


def defenses_markdown(rows: list[DefenseRow], skipped: list[str] = ()) -> str:
    cols = _columns(rows)
    lines = ["# Defense benchmark", "",
             f"Mean over seeds with, in brackets, the {CI_DESCRIPTION}; `n`: seeds per row. `static`: shadow served without the defense (the CCS'21 paper's "
             "attacker); `adaptive`: shadow trained and served under the defense. |ROC-AUC - 0.5| counts an inverted "
             "attack as leakage. Utility: the defended target service's lists on its members' held-out interactions; "
             "`new accounts`: its lists of the target non-members (the service's new accounts) on their own held-out "
             "interactions (– : cells written before result.json had them). "
             "Cost: seconds to fit the defended service plus the defense itself. DP epsilon: the guarantee the "
             "defense reports (its accountant's epsilon), counted per `record` (one interaction) or per `user` (all "
             "of a user's interactions): epsilons of different units are not comparable.", ""]
    for note in _notes(rows):
        lines += [note, ""]
    if skipped:
        lines += ["Left out of this benchmark (defaults that cannot run here):", ""] + [f"* {why}" for why in skipped] + [""]
    for (dataset, target) in dict.fromkeys((r.dataset, r.target) for r in rows):
        mine = [r for r in rows if (r.dataset, r.target) == (dataset, target)]
        lines += [f"## {_title(rows, dataset, target)}", "", seeds_line([e for r in mine for e in r.estimates.values()]), "",
                  f"| defense | n | {UNIT} | " + " | ".join(_label(c) for c in cols) + " |",
                  "|---|---:|---|" + "---:|" * len(cols)]
        for r in mine:
            n = _usual_n(r.estimates.values())
            lines.append(f"| {r.label} | {_n(r)} | {_unit(r)} | "
                         + " | ".join(_fmt_estimate(r.estimates.get(c), n) for c in cols) + " |")
        lines.append("")
    return "\n".join(lines)


def defenses_csv(rows: list[DefenseRow]) -> str:
    out = ["dataset,target,defense,params,top_k,column,mean,ci_low,ci_high,ci_method,n_seeds,control,no_signal_cells,"
           "epsilon_unit"]
    for r in rows:
        params = ";".join(f"{k}={v}" for k, v in sorted(r.params.items()))
        for col, est in sorted(r.estimates.items()):
            cells = [r.dataset, r.target, r.defense, params, str(r.k), col, repr(est.mean),
                     "" if est.ci_low is None else repr(est.ci_low), "" if est.ci_high is None else repr(est.ci_high),
                     est.method, str(est.n_seeds), str(r.control).lower(), str(len(r.flagged)), r.level]
            out.append(",".join(f'"{c}"' if "," in c else c for c in cells))
    return "\n".join(out) + "\n"


#: Marker of a defended row's adaptive point by the unit of its DP epsilon ("" : no DP guarantee).
UNIT_MARKERS = {"user": "D", "record": "^", "": "o"}
UNIT_WORDS = {"user": "epsilon per user", "record": "epsilon per record"}


def _unit_marker(level: str) -> str:
    return UNIT_MARKERS.get(level, "X")  # "X": cells of the row disagree on the unit


def frontier_points(rows: list[DefenseRow], dataset: str, target: str) -> list[tuple[int, DefenseRow]]:
    """The defended rows the frontier of ``(dataset, target)`` draws, numbered from 1 in table order.

    The number is the point's label on the plot, its entry in the plot's key and the ``#`` column
    of the HTML table; the undefended row (``none``) is the star, without a number.
    """
    mine = [r for r in rows if (r.dataset, r.target) == (dataset, target)]
    k = mine[0].k if mine else 0
    drawn = [r for r in mine if r.defense != "none" and f"utility:ndcg@{k}" in r.estimates
             and any(f"{a}:roc_auc" in r.estimates for a in ATTACKERS)]
    return list(enumerate(drawn, start=1))


def _key_label(row: DefenseRow) -> str:
    """A numbered point's entry in the frontier's key: its table label, and a DP epsilon with its unit."""
    est = row.estimates.get("privacy:epsilon")
    text = row.label
    if row.level and est is not None and est.n_seeds:
        text += f", ε={est.mean:.3g} " + ("per " + row.level if "/" not in row.level else f"({row.level})")
    new = row.estimates.get(f"new_accounts:ndcg@{row.k}")
    if new is not None and new.n_seeds:  # the x axis is the members' utility: what the new accounts got beside it
        text += f"; new accounts NDCG@{row.k} {new.mean:.3g}"
    return text


def frontier_png(rows: list[DefenseRow], dataset: str, target: str) -> bytes:
    """Privacy-utility frontier: x = NDCG@k of the defended service, y = ROC-AUC of each attacker."""
    from .shared import _png

    return _png(frontier_figure(rows, dataset, target))


def frontier_figure(rows: list[DefenseRow], dataset: str, target: str):
    """The frontier as a matplotlib Figure: numbered points, a key beside the axes, the undefended star on top.

    Each defended row is a numbered pair of points joined by a thin line: its adaptive attacker
    (filled; a diamond when its DP epsilon counts users, a triangle when it counts records, a circle
    without a DP guarantee) and its static attacker (hollow square). Numbers are placed where
    they overlap no other number (:func:`_place_labels`); the key beside the axes names each.
    """
    from matplotlib.lines import Line2D

    from .shared import _figure

    mine = [r for r in rows if (r.dataset, r.target) == (dataset, target)]
    k = mine[0].k if mine else 0
    util_key = f"utility:ndcg@{k}"
    numbered = frontier_points(rows, dataset, target)
    colours: dict[str, str] = {}
    for _, r in numbered:
        colours.setdefault(r.defense, f"C{len(colours) % 10}")
    style_entries = 2 + len({r.level for _, r in numbered})
    entries = style_entries + len(numbered)
    ncols = 1 if entries <= 28 else 2
    fig = _figure(7.0 + 3.0 * ncols, max(4.8, 1.2 + 0.16 * math.ceil(entries / ncols)))
    ax = fig.add_subplot(1, 1, 1)
    points, labels = [], []  # (x, y) of every drawn point (obstacles); (number, x, y, colour) of each label
    for n, r in numbered:
        x = r.estimates[util_key].mean
        colour = colours[r.defense]
        ys = {a: r.estimates[f"{a}:roc_auc"].mean for a in ATTACKERS if f"{a}:roc_auc" in r.estimates}
        if len(ys) == 2:
            ax.plot([x, x], [ys["static"], ys["adaptive"]], color=colour, lw=0.6, alpha=0.45, zorder=2)
        if "static" in ys:
            ax.scatter([x], [ys["static"]], marker="s", s=36, facecolors="none", edgecolors=colour, linewidths=1.0, zorder=3)
            points.append((x, ys["static"]))
        if "adaptive" in ys:
            ax.scatter([x], [ys["adaptive"]], marker=_unit_marker(r.level), s=42, color=colour, zorder=4)
            points.append((x, ys["adaptive"]))
        labels.append((str(n), x, ys.get("adaptive", ys.get("static")), colour))
    for r in mine:  # the undefended point, on top of every other (both attackers are the same one)
        y = r.estimates.get("adaptive:roc_auc") or r.estimates.get("static:roc_auc")
        if r.defense == "none" and util_key in r.estimates and y is not None:
            ax.scatter([r.estimates[util_key].mean], [y.mean], marker="*", s=220, color="black", edgecolors="white",
                       linewidths=0.8, zorder=10)
            points.append((r.estimates[util_key].mean, y.mean))
    ax.axhline(0.5, color="gray", lw=0.8, ls="--", zorder=1)
    ax.set_xlabel(f"utility: NDCG@{k} of the defended service on its members' held-out items")
    ax.set_ylabel("attack ROC-AUC (0.5 = chance)")
    ax.set_title(f"privacy-utility frontier: {target} on {dataset.rsplit('/', 1)[-1]}", fontsize=10)
    star = "none (undefended, drawn on top)"
    for r in mine:
        new = r.estimates.get(f"new_accounts:ndcg@{k}")
        if r.defense == "none" and new is not None and new.n_seeds:
            star += f"; new accounts NDCG@{k} {new.mean:.3g}"
    handles = [Line2D([], [], ls="", marker="*", markersize=12, color="black", label=star),
               Line2D([], [], ls="", marker="s", markersize=6, markerfacecolor="none", color="gray",
                      label="static attacker (hollow)")]
    for level in sorted({r.level for _, r in numbered}, key=lambda u: (u not in UNIT_MARKERS, u)):
        what = UNIT_WORDS.get(level, "no DP guarantee" if not level else f"epsilon units disagree ({level})")
        handles.append(Line2D([], [], ls="", marker=_unit_marker(level), markersize=6, color="gray",
                              label=f"adaptive attacker (filled), {what}"))
    for n, r in numbered:
        handles.append(Line2D([], [], ls="", marker=f"${n}$", markersize=6 + 2.5 * len(str(n)), color=colours[r.defense],
                              label=_key_label(r)))
    fig.legend(handles=handles, loc="outside right upper", fontsize=7, ncols=ncols, frameon=False,
               title="key (numbers: the table's # column)", title_fontsize=7, alignment="left")
    _place_labels(fig, ax, points, labels)
    return fig


def _place_labels(fig, ax, points, labels, fontsize: float = 8.0) -> list:
    """Write each label near its point where its box overlaps no label placed before it (greedy).

    ``points``: (x, y) in data coordinates of every marker (avoided when possible); ``labels``:
    (text, x, y, colour). Candidates lie on rings of growing radius around the point, eight
    directions each; the first one free of every label placed wins, looked for in three tiers:
    inside the axes and clear of markers, inside the axes, anywhere. A label away from its
    point gets a leader line. The layout is fixed first (one draw) and the labels are left out of
    it, so what is measured here is what the PNG shows. Returns the annotations.
    """
    import matplotlib.patheffects as pe
    from matplotlib.transforms import Bbox

    if not labels:
        return []
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    fig.draw_without_rendering()  # the constrained layout, without rasterizing
    renderer = canvas.get_renderer()
    to_px = ax.transData.transform
    frame = ax.get_window_extent(renderer)
    half = 5.5 * fig.dpi / 72.0  # half a marker, in pixels
    marks = [Bbox.from_extents(px - half, py - half, px + half, py + half)
             for px, py in (to_px(p) for p in points)]
    placed: list = []
    out = []
    directions = [(1, 1), (1, 0), (0, 1), (-1, 1), (-1, 0), (1, -1), (0, -1), (-1, -1)]
    inside = lambda b: frame.contains(b.x0, b.y0) and frame.contains(b.x1, b.y1)  # noqa: E731
    tiers = (lambda b: inside(b) and not any(b.overlaps(m) for m in marks), inside, lambda b: True)
    for text, x, y, colour in labels:
        style = dict(fontsize=fontsize, fontweight="bold", color=colour, zorder=11, ha="center", va="center")
        probe = ax.text(x, y, text, **style)
        box = probe.get_window_extent(renderer)
        probe.remove()
        w, h = box.width + 2.0, box.height + 1.0
        px, py = to_px((x, y))
        choice = None
        for tier in tiers:
            radius, limit = 0.5 * max(w, h) + half, 50.0 * (frame.width + frame.height)
            while choice is None and radius < limit:
                for dx, dy in directions:
                    cx, cy = px + dx * radius, py + dy * radius
                    cand = Bbox.from_extents(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                    if tier(cand) and not any(cand.overlaps(b) for b in placed):
                        choice = (cx - px, cy - py, cand)
                        break
                radius *= 1.3
                if tier is not tiers[-1] and radius > 2 * (frame.width + frame.height):
                    break  # no room inside the axes: the next tier
            if choice is not None:
                break
        if choice is None:  # not reached: the last tier's outer rings lie beyond every label placed
            choice = (0.0, 0.0, Bbox.from_extents(px - w / 2, py - h / 2, px + w / 2, py + h / 2))
        dx, dy, cand = choice
        far = math.hypot(dx, dy) > 2.5 * half + 0.5 * max(w, h)
        ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset pixels", annotation_clip=False,
                          path_effects=[pe.withStroke(linewidth=2.0, foreground="white")],
                          arrowprops=dict(arrowstyle="-", color=colour, lw=0.6, alpha=0.7, shrinkA=0, shrinkB=half)
                          if far else None, **style)
        ann.set_in_layout(False)
        ann.set_gid("frontier-label")
        placed.append(cand)
        out.append(ann)
    return out


def defense_section(records: list[CellRecord], images: dict[str, bytes], skipped: list[str] = ()) -> tuple[str, str, str]:
    """HTML of the defense benchmark (and its markdown and CSV); adds the frontier PNGs to ``images``.

    ``skipped``: why requested defaults were left out (listed under the section's heading).
    """
    rows = defense_rows(records)
    if not rows:
        return "", "", ""
    e = html.escape
    cols = _columns(rows)
    parts = ['<h2 id="defenses">Defense benchmark</h2>',
             '<p class="note">static: shadow served without the defense (the paper\'s attacker); adaptive: shadow trained '
             "and served under the defense. Utility: the defended target service's lists on its members' held-out "
             "interactions; new accounts: its lists of the target non-members (the service's new accounts) on their "
             "own held-out interactions (– : cells written before result.json had them). Cost: seconds to fit the "
             "defended service plus the defense. DP epsilon: the guarantee the "
             "defense reports, per <em>record</em> (one interaction) or per <em>user</em> (all of her interactions): "
             "epsilons of different units are not comparable. "
             f"Entries: mean over seeds with, in brackets, the {e(CI_DESCRIPTION)}; n: seeds per row.</p>"]
    if skipped:
        parts.append('<p class="note">Left out of this benchmark (defaults that cannot run here):</p><ul class="note">'
                     + "".join(f"<li>{e(why)}</li>" for why in skipped) + "</ul>")
    from .shared import _slug

    parts += [f'<p class="{"warn" if "No signal in" in note else "note"}">{e(note)}</p>' for note in _notes(rows)]
    for (dataset, target) in dict.fromkeys((r.dataset, r.target) for r in rows):
        parts.append(f"<h3>{e(_title(rows, dataset, target))}</h3>")
        numbers = {id(r): n for n, r in frontier_points(rows, dataset, target)}
        parts.append(f'<table class="defenses"><tr><th title="the point\'s number on the frontier below">#</th>'
                     f'<th class="l">defense</th><th>n</th><th class="l">{e(UNIT)}</th>'
                     + "".join(f"<th>{e(_label(c))}</th>" for c in cols) + "</tr>")
        for r in rows:
            if (r.dataset, r.target) == (dataset, target):
                n = _usual_n(r.estimates.values())
                css = " ".join(c for c, on in (("control", r.control), ("nosignal", bool(r.flagged))) if on)
                parts.append(f'<tr{f" class={chr(34)}{css}{chr(34)}" if css else ""}><td>{numbers.get(id(r), "")}</td>'
                             f'<td class="l">{e(r.label)}</td>'
                             f'<td>{_n(r)}</td><td class="l">{e(_unit(r))}</td>'
                             + "".join(f"<td>{e(_fmt_estimate(r.estimates.get(c), n))}</td>" for c in cols) + "</tr>")
        parts.append("</table>")
        name = f"frontier-{_slug(dataset.rsplit('/', 1)[-1])}-{_slug(target)}.png"
        images[name] = frontier_png(rows, dataset, target)
        parts.append(_img(name, images, f"privacy-utility frontier of {target}"))
    return "\n".join(parts), defenses_markdown(rows, skipped), defenses_csv(rows)
