"""Loading a data set for a cell: a registered name, or the path of an interactions file."""

from __future__ import annotations

from pathlib import Path

from ..contracts.errors import MiarsError
from ..contracts.plugins import Plugins
from ..contracts.types import Interactions
from .config import AttackConfig


DATASET_SUFFIXES = (".gz", ".tsv", ".csv", ".inter", ".dat", ".txt")


def dataset_file(name: str, registry) -> Path | None:
    """The file ``--dataset`` names, or None for a registered dataset; a path that is no file fails in one line."""
    if name in registry.entries:
        return None
    path = Path(name).expanduser()
    if not (path.exists() or "/" in name or name.endswith(DATASET_SUFFIXES)):
        return None
    if not path.is_file():
        raise MiarsError(f"--dataset {name!r}: no such file; pass an existing file or one of: {', '.join(registry.names())}")
    return path


def load_named(name: str, data_dir: str | None, download: bool, plugins: Plugins) -> Interactions:
    """Load a registered dataset by name, or an interactions file by path."""
    registry = plugins.registry("dataset")
    path = dataset_file(name, registry)
    if path is not None:
        dataset = registry.create("file", path=str(path))
    else:
        dataset = registry.create(name)
    data = dataset.load(data_dir=Path(data_dir).expanduser() if data_dir else None, download=download)
    if data.n_interactions == 0:
        raise MiarsError(f"dataset {name!r} holds no interactions; check the file")
    return data


def load_dataset(config: AttackConfig, plugins: Plugins) -> Interactions:
    """Load ``config.dataset``: a registered name, or the path of an interactions file."""
    return load_named(config.dataset, config.data_dir, config.download, plugins)


def dataset_has_order(name: str, data_dir: str | None, plugins: Plugins) -> bool | None:
    """Whether the dataset ``--dataset name`` would load carries an order (each interaction's time or position),
    told without loading it: True, False, or None when the dataset cannot tell (it says so when loaded)."""
    registry = plugins.registry("dataset")
    path = dataset_file(name, registry)
    dataset = registry.create("file", path=str(path)) if path is not None else registry.create(name)
    ask = getattr(dataset, "has_order", None)
    if ask is None:
        return None
    return ask(Path(data_dir).expanduser() if data_dir else None)


def is_sequential(recommender) -> bool:
    """Whether a recommender reads each user's history in order (class attribute ``sequential = True``)."""
    return bool(getattr(recommender, "sequential", False))
