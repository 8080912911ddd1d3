"""Per-stage seeds derived from one master seed, so each stage is a pure function of (inputs, seed)."""

from __future__ import annotations

import zlib

import numpy as np


def stage_seed(seed: int, stage: str) -> int:
    """A 31-bit seed for ``stage`` derived from the master ``seed`` (stable across runs and platforms)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(stage.encode())]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)
