"""Reporting: the metrics table, result.json and the authors' TSV export. Writes are atomic."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np

from ..contracts.errors import MiarsError
from ..contracts.files import _non_finite, _os_error, _publish, prepare_dir, scores_tsv, tsv_id
from ..engine.config import AttackResult
from ..science.metrics import DESCRIPTIONS

METRIC_ORDER = list(DESCRIPTIONS)


def metrics_table(result: AttackResult):
    """A rich Table of the metrics (one column per attacker when a defense is set)."""
    from rich.table import Table

    cfg = result.config
    title = f"{cfg.dataset}: target {cfg.target}, shadow {cfg.shadow}, top-{cfg.top_k}, seed {cfg.seed}"
    if cfg.defense:
        title += f", defense {cfg.defense}"
    columns = result.attackers or {"attack": result.metrics}
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name.replace("_", "-"), justify="right")
    table.add_column("meaning", overflow="fold")
    for key in METRIC_ORDER:
        table.add_row(key, *(f"{m[key]:.4f}" for m in columns.values()), DESCRIPTIONS[key])
    m = result.metrics
    utility = (result.recommenders.get("target") or {}).get("utility") or {}
    table.caption = ("WARNING: " + utility["warning"] + "\n" if utility.get("warning") else "") + (
        f"target: {m['members']} members, {m['non_members']} non-members; "
        f"stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items())
    )
    return table


#: The files ``--out`` writes, as one set.
OUT_FILES = ("result.json", "scores.tsv")
#: The files ``--export-miars`` writes.
EXPORT_FILES = ("shadow_interactions.tsv", "shadow_recommendations.tsv", "target_interactions.tsv",
                "target_recommendations.tsv", "item_vectors.tsv", "item_ids.tsv")


def check_outputs(config, out: str | Path | None, export_dir: str | Path | None, force: bool = False) -> None:
    """Before any work: each output folder can be created and written, holds no folder where a
    result file goes, and no output file would overwrite the input dataset; ``--out`` is new,
    empty or an output folder of miars-attack (:func:`miars_core.engine.rundir.claim`; ``force``: any)."""
    from ..engine.rundir import claim

    inputs = _input_files(config)
    dirs = {}
    for flag, folder, names in (("--out", out, OUT_FILES), ("--export-miars", export_dir, EXPORT_FILES)):
        if not folder:
            continue
        p = prepare_dir(folder, flag)
        dirs[flag] = p
        for name in names:
            target = p / name
            try:
                is_dir = target.is_dir() and not target.is_symlink()
                exists = target.exists()
            except OSError as exc:
                raise _os_error(exc, target, "check", f"pass another {flag} folder") from None
            if is_dir:
                raise MiarsError(f"{flag} {str(p)!r} holds a folder named {name}, where the result file goes; "
                                 f"move it away or pass another {flag} folder")
            for source in inputs:
                if exists and _same_file(source, target):
                    raise MiarsError(f"{flag} {str(p)!r} would overwrite the input file {str(source)!r} ({name}); "
                                     f"pass another {flag} folder or move the input")
    if len(dirs) == 2 and _same_file(dirs["--out"], dirs["--export-miars"]):
        pass  # different file names: both sets fit in one folder
    if out:
        claim(dirs["--out"], "attack", "--out", force)


def _input_files(config) -> list[Path]:
    files = []
    for raw in (getattr(config, "dataset", None), getattr(config, "data_dir", None)):
        if not raw:
            continue
        try:
            p = Path(raw).expanduser()
            if p.is_file():
                files.append(p)
            elif p.is_dir():
                files += [c for c in p.iterdir() if c.name in OUT_FILES + EXPORT_FILES]
        except OSError:
            continue
    return files


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def render_result(result: AttackResult) -> str:
    """result.json's text: strict JSON (no NaN or Infinity token), or a MiarsError saying where a
    non-finite number came from. Attack scores must be finite too."""
    scores = np.asarray(result.artifacts.get("scores", []), dtype=np.float64)
    if scores.size and not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        raise MiarsError(f"the attack produced {bad} non-finite scores of {scores.size}; the run is broken "
                         "(check the components' parameters, e.g. a learning rate too high) and nothing was written")
    payload = result.to_json()
    where = _non_finite(payload)
    if where is not None:
        raise MiarsError(f"the run produced a non-finite number at {where}; the run is broken "
                         "(check that component's parameters, e.g. a learning rate too high) and nothing was written")
    try:
        return json.dumps(payload, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise MiarsError(f"result.json cannot be written as JSON ({exc}); a component reported a value that is not plain data") from None


def flag_no_signal(result: AttackResult) -> str | None:
    """The warning of the no-signal check when the target's lists carry no signal, else None.

    Every cell computes the check (:meth:`miars_core.engine.stages.Cell.signal`) into
    ``recommenders.target.utility``: its ``method``, ``hits`` against ``expected_by_chance``,
    ``lift``, ``no_signal`` and, for a flagged target, the ``warning`` returned here.
    """
    utility = (result.recommenders.get("target") or {}).get("utility") or {}
    return utility.get("warning")


def write_result(result: AttackResult, out_dir: str | Path, text: str | None = None) -> Path:
    """Write ``result.json`` and ``scores.tsv`` into ``out_dir`` as one set; return result.json's path.

    Both files are written into a staging folder inside ``out_dir`` and renamed into place:
    the old ``result.json`` is removed first and the new one is renamed last, so a
    ``result.json`` always belongs to the ``scores.tsv`` beside it, whatever fails when.

    ``scores.tsv`` has one line per target user: original user id (see :func:`tsv_id`), 1 for
    a member, and the attack score (higher = more likely member).
    """
    out = Path(out_dir).expanduser()
    text = render_result(result) if text is None else text
    target = result.artifacts["target_part"]
    scores = scores_tsv(target.interactions.user_ids, target.is_member, result.artifacts["scores"])
    from ..engine.rundir import MARKER, marker_bytes, new_marker, read_marker

    # The marker first (a killed write still leaves a folder miars-attack recognises), result.json last.
    files = {MARKER: marker_bytes(new_marker("attack", read_marker(out))), "scores.tsv": scores.encode("utf-8"),
             "result.json": text.encode("utf-8")}
    _publish(out, files, "--out")
    return out / "result.json"


def export_miars(result: AttackResult, out_dir: str | Path) -> list[Path]:
    """Write shadow/target interactions and recommendations and the item vectors in the authors' TSV formats.

    Interactions and recommendations are ``UserID\\tItemID\\tScore`` lines: user ids 0..n-1 with the
    members first (the first n/2), item ids index the lines of ``item_vectors.tsv``. Interactions
    have score 1; a recommendation at rank j (0-based) has score k - j, so the order is kept.
    The files are staged and renamed into place together (``item_ids.tsv`` last).
    """
    vectors = result.artifacts.get("item_vectors")
    if vectors is None:
        raise MiarsError(f"--export-miars needs item vectors; featurizer {result.config.featurizer!r} exposes none (item_vectors_)")
    split = result.artifacts["split"]
    final = Path(out_dir).expanduser()
    files: dict[str, bytes] = {}
    for part, lists in ((split.shadow, result.artifacts["shadow_lists"]), (split.target, result.artifacts["target_lists"])):
        order = np.concatenate([np.flatnonzero(part.is_member), np.flatnonzero(~part.is_member)])
        m = part.interactions.matrix[order].tocoo()
        files[f"{part.name}_interactions.tsv"] = _tsv_bytes(m.row, m.col, np.ones(m.nnz, dtype=np.int64))
        recs = lists[order]
        n, k = recs.shape
        files[f"{part.name}_recommendations.tsv"] = _tsv_bytes(np.repeat(np.arange(n), k), recs.ravel(), np.tile(np.arange(k, 0, -1), n))
    buf = io.BytesIO()
    np.savetxt(buf, vectors, fmt="%.6g", delimiter="\t")
    files["item_vectors.tsv"] = buf.getvalue()
    files["item_ids.tsv"] = "".join(f"{i}\t{tsv_id(item)}\n" for i, item in enumerate(split.item_ids)).encode("utf-8")
    _publish(final, files, "--export-miars")
    return [final / n for n in files]


def _tsv_bytes(users, items, scores) -> bytes:
    buf = io.BytesIO()
    np.savetxt(buf, np.column_stack([users, items, scores]).astype(np.int64), fmt="%d", delimiter="\t")
    return buf.getvalue()
