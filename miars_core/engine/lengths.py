"""Length-robust shadows (``--shadow-lengths``): the shadow recommender trained at several training lengths.

Auto training length picks each model's length on its own data, so the target's owner and the
adversary choose different lengths, and the paper's attack, trained on one shadow's lists, can
read worse than chance against a target trained longer or shorter (benchmarks/README.md). With
``shadow_lengths`` the adversary trains its shadow recommender once per length (the same data and
seed; each fit is a ``model`` stage keyed by its epochs, so a cell given ``--shadow-param
epochs=N`` shares it) and a feature-based attack trains on the shadow features of every length
stacked, labels repeated: its classifier sees members' lists at every plausible length.

The value is ``None`` (one shadow, as before), ``"auto"`` or a list of distinct lengths in epochs.
``auto`` is the shadow's own length (chosen automatically on the shadow's data, or the one given
with ``--shadow-param epochs=N``) times :data:`AUTO_FACTORS`: half, the same and twice, rounded
half up, at least one epoch, duplicates dropped. The adversary cannot know the target owner's
choice; it can only bracket its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..contracts.errors import MiarsError
from ..contracts.params import Constraint

#: ``auto``: the shadow's own length times each of these.
AUTO_FACTORS = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class ShadowLengths(Constraint):
    """``"auto"`` or a non-empty list of distinct integers >= 1 (epochs)."""

    def problem(self, value: Any) -> str | None:
        if value == "auto":
            return None
        if isinstance(value, str):
            return "is not 'auto' nor a list of lengths"
        if not isinstance(value, (list, tuple)):
            return "is not 'auto' nor a list"
        if not value:
            return "is empty"
        for i, v in enumerate(value):
            if not isinstance(v, int) or isinstance(v, bool):
                return f"has element {i} = {v!r}, not an integer"
            if v < 1:
                return f"has element {i} = {v}, not a length >= 1 epoch"
        dup = sorted({v for v in value if list(value).count(v) > 1})
        if dup:
            return f"repeats {', '.join(map(str, dup))}"
        return None

    def describe(self) -> str:
        return "'auto' or a list of distinct integers >= 1 (epochs)"


def parse_shadow_lengths(text: str | None) -> Any:
    """The setting from its command-line text: None, ``"auto"``, or a list (``"4,8,16"`` -> ``[4, 8, 16]``).

    Tokens that are not integers are kept as text so that validation names them in its one-line error."""
    if text is None:
        return None
    text = text.strip()
    if text.lower() == "auto":
        return "auto"
    out: list[Any] = []
    for token in (t.strip() for t in text.split(",")) if text else ():
        try:
            out.append(int(token))
        except ValueError:
            out.append(token)
    return out


def auto_lengths(own: int) -> list[int]:
    """The lengths ``auto`` trains at, around the shadow's own length ``own``: ``own`` x :data:`AUTO_FACTORS`."""
    out: list[int] = []
    for f in AUTO_FACTORS:
        n = max(1, int(own * f + 0.5))
        if n not in out:
            out.append(n)
    return out


def check_shadow_lengths(asked: Any, recommender: Any, name: str, threat: str, level: str, attack: str) -> None:
    """Refuse ``--shadow-lengths`` in one line, before any work, where it cannot act: a shadow recommender
    without an ``epochs`` parameter, or an attack that does not train on shadow features."""
    if asked is None:
        return
    from ..contracts.components import get_params

    if "epochs" not in get_params(recommender):
        raise MiarsError(f"--shadow-lengths {shown_lengths(asked)} needs a shadow recommender trained for a number of "
                         f"epochs, but {name!r} has no epochs parameter; drop --shadow-lengths or use e.g. --shadow lfm")
    if threat != "features" or level != "user":
        raise MiarsError(f"--shadow-lengths {shown_lengths(asked)} stacks the shadow features of every length for an "
                         f"attack trained on them (threat features, user level, e.g. --attack mlp); attack {attack!r} "
                         f"has threat {threat!r} at {level} level; drop --shadow-lengths")


def shown_lengths(value: Any) -> str:
    """The setting as a flag would give it: ``auto`` or ``4,8,16``."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)
