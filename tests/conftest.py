"""Shared fixtures: small synthetic interaction files that make end-to-end runs take seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def write_clustered_interactions(
    path: Path,
    *,
    n_users: int = 300,
    n_items: int = 150,
    n_groups: int = 5,
    n_global: int = 20,
    p_global: float = 0.5,
    own_share: float = 0.9,
    min_per_user: int = 25,
    max_per_user: int = 60,
    seed: int = 0,
) -> Path:
    """Write a headerless ``user<TAB>item`` file with clustered taste and return ``path``.

    Items ``0..n_global-1`` are liked by everybody (each with probability ``p_global``), so the
    most popular items are the same in every part of the split. The other items form
    ``n_groups`` equal blocks; user ``u`` is in group ``u % n_groups`` and takes about
    ``own_share`` of the rest of their interactions from their group's block. Every user has
    between ``min_per_user`` and ``max_per_user`` interactions. Seeded: same file every time.
    """
    rng = np.random.default_rng(seed)
    block = (n_items - n_global) // n_groups
    lines = []
    for user in range(n_users):
        group = user % n_groups
        own = np.arange(n_global + group * block, n_global + (group + 1) * block)
        rest = np.setdiff1d(np.arange(n_global, n_items), own)
        total = int(rng.integers(min_per_user, max_per_user + 1))
        liked = np.flatnonzero(rng.random(n_global) < p_global)[: total // 3]
        n_own = min(block, int(round((total - len(liked)) * own_share)))
        n_rest = total - len(liked) - n_own
        items = np.concatenate([liked, rng.choice(own, n_own, replace=False), rng.choice(rest, n_rest, replace=False)])
        lines += [f"{user}\t{item}\n" for item in np.sort(items)]
    path = Path(path)
    path.write_text("".join(lines))
    return path


def pytest_configure(config):
    """Stage caches of CLI runs go to a temporary folder, never to the user's ~/.cache; only the plugins
    shipped with miars load (in this process and the console scripts tests start), whatever else is
    installed, so names and lists in messages are the built-ins' (miars_core.contracts.plugins.AUTOLOAD_VAR)."""
    import os
    import tempfile

    from miars_core.contracts.plugins import AUTOLOAD_VAR

    os.environ["MIARS_CACHE"] = tempfile.mkdtemp(prefix="miars-test-cache-")
    os.environ[AUTOLOAD_VAR] = "1"


@pytest.fixture
def third_party_plugins():
    """Entry-point plugins of other distributions load again, for the tests of plugin discovery."""
    import os

    from miars_core.contracts.plugins import AUTOLOAD_VAR, get_plugins

    old = os.environ.pop(AUTOLOAD_VAR, None)
    try:
        yield
    finally:
        if old is not None:
            os.environ[AUTOLOAD_VAR] = old
        get_plugins(reload=True)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """A 300 users x 150 items TSV (``user<TAB>item``, no header) with 5 taste clusters, 25-60 interactions each."""
    return write_clustered_interactions(tmp_path_factory.mktemp("data") / "clustered.tsv")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Tests never touch the network: any connection outside this machine fails loudly."""
    import socket

    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if self.family == socket.AF_UNIX or str(host) in ("127.0.0.1", "::1", "localhost"):
            return real_connect(self, address)
        raise RuntimeError(f"test tried to reach the network: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", guarded)
