"""Reporting: the metrics table, result.json and the authors' TSV export. Writes are atomic."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import MiarsError
from .metrics import DESCRIPTIONS
from .pipeline import AttackResult

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
    table.caption = (
        f"target: {m['members']} members, {m['non_members']} non-members; "
        f"stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items())
    )
    return table


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_dir(path: str | Path, flag: str) -> Path:
    """Check early that an output folder can be created (before minutes of work)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise MiarsError(f"{flag} {str(p)!r} is a file, not a folder; pass a folder path")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MiarsError(f"{flag} {str(p)!r} cannot be created ({exc.strerror}); pass a writable folder") from None
    return p


def write_result(result: AttackResult, out_dir: str | Path) -> Path:
    """Write ``result.json`` and ``scores.tsv`` into ``out_dir``; return the path of result.json.

    ``scores.tsv`` has one line per target user: original user id, 1 for a member, and the
    attack score (higher = more likely member), for ROC curves and threshold choices of your own.
    """
    out = Path(out_dir)
    target = result.artifacts["split"].target
    lines = ["user_id\tis_member\tscore\n"] + [
        f"{u}\t{int(m)}\t{s:.9g}\n"
        for u, m, s in zip(target.interactions.user_ids, target.is_member, result.artifacts["scores"])
    ]
    _atomic_write_text(out / "scores.tsv", "".join(lines))
    path = out / "result.json"
    _atomic_write_text(path, json.dumps(result.to_json(), indent=2, sort_keys=False) + "\n")
    return path


def export_miars(result: AttackResult, out_dir: str | Path) -> list[Path]:
    """Write shadow/target interactions and recommendations and the item vectors in the authors' TSV formats.

    Interactions and recommendations are ``UserID\\tItemID\\tScore`` lines: user ids 0..n-1 with the
    members first (the first n/2), item ids index the lines of ``item_vectors.tsv``. Interactions
    have score 1; a recommendation at rank j (0-based) has score k - j, so the order is kept.
    """
    vectors = result.artifacts.get("item_vectors")
    if vectors is None:
        raise MiarsError(f"--export-miars needs item vectors; featurizer {result.config.featurizer!r} exposes none (item_vectors_)")
    split = result.artifacts["split"]
    final = Path(out_dir)
    final.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final, prefix=".export-"))
    names = []
    try:
        for part, lists in ((split.shadow, result.artifacts["shadow_lists"]), (split.target, result.artifacts["target_lists"])):
            order = np.concatenate([np.flatnonzero(part.is_member), np.flatnonzero(~part.is_member)])
            m = part.interactions.matrix[order].tocoo()
            _write_tsv(staging / f"{part.name}_interactions.tsv", m.row, m.col, np.ones(m.nnz, dtype=np.int64))
            recs = lists[order]
            n, k = recs.shape
            _write_tsv(staging / f"{part.name}_recommendations.tsv", np.repeat(np.arange(n), k), recs.ravel(), np.tile(np.arange(k, 0, -1), n))
            names += [f"{part.name}_interactions.tsv", f"{part.name}_recommendations.tsv"]
        np.savetxt(staging / "item_vectors.tsv", vectors, fmt="%.6g", delimiter="\t")
        _atomic_write_text(staging / "item_ids.tsv", "".join(f"{i}\t{item}\n" for i, item in enumerate(split.item_ids)))
        names += ["item_vectors.tsv", "item_ids.tsv"]
        for name in names:
            os.replace(staging / name, final / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [final / n for n in names]


def _write_tsv(path: Path, users, items, scores) -> None:
    np.savetxt(path, np.column_stack([users, items, scores]).astype(np.int64), fmt="%d", delimiter="\t")
