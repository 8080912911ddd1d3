"""What one attack cell is (:class:`AttackConfig`, checked against :data:`SETTINGS`) and what it returns (:class:`AttackResult`).

Below the stage graph (:mod:`miars_core.engine.stages`) and :func:`~miars_core.engine.pipeline.run_attack` that
both use them; the Python API imports them from :mod:`miars_core.engine.pipeline` as before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..contracts.errors import MiarsError
from ..contracts.params import AnyOf, Constraint, Flag, Interval, Mapping, Options, OrNone, Text
from ..kit.torch_utils import Device, check_device
from ..science.protocol import SPLIT_MODES
from .lengths import ShadowLengths


#: What each setting of a cell may be, with an example value: the one declaration that
#: :meth:`AttackConfig.validate`, the grid's flags and its TOML keys (:mod:`miars_core.engine.grid`) are
#: checked against, by type and range, before any work.
SETTINGS: dict[str, tuple[Constraint, Any]] = {
    "dataset": (Text(), "ml-100k"),
    "shadow_dataset": (OrNone(Text()), "ml-1m"),
    "data_dir": (OrNone(Text()), "~/data"),
    "download": (Flag(), True),
    # a file of user attributes (user id, then attribute columns): cold start by attributes, reference-rec
    "user_attributes": (OrNone(Text()), "users.dat.gz"),
    "target": (Text(), "item"),
    "shadow": (OrNone(Text()), "lfm"),
    "featurizer": (Text(), "center-diff"),
    "attack": (Text(), "mlp"),
    "defense": (OrNone(Text()), "popularity-randomization"),
    "service": (Text(), "popular"),
    "top_k": (Interval(int, 1), 100),
    "seed": (Interval(int, 0, 2**32 - 1), 0),
    "split": (Options(SPLIT_MODES), "interactions"),
    "min_interactions": (Interval(int, 1), 20),
    # 0: no hold-out; below 1%, no member of usual size holds out a single interaction (round(share x n) = 0)
    "utility_holdout": (AnyOf((Interval(float, 0.01, 0.9), Options((0,)))), 0.2),
    "query_budget": (Interval(int, 0), 5),
    # None: one shadow (the paper's); "auto" or epochs: one shadow per length, features stacked (engine/lengths.py)
    "shadow_lengths": (OrNone(ShadowLengths()), "auto"),
    **{f"{kind}_params": (Mapping(), {"epochs": 5})
       for kind in ("target", "shadow", "featurizer", "attack", "defense", "service")},
    # a run option, not a setting of the result: in no stage key nor cell id (miars_core.kit.torch_utils)
    "device": (Device(), "cuda"),
}


def flag_of(setting: str) -> str:
    """The command-line flag of a setting (``top_k`` -> ``--top-k``, ``target_params`` -> ``--target-param``)."""
    name = setting[:-1] if setting.endswith("_params") else setting
    return "--" + name.replace("_", "-")


def shown(value: Any) -> str:
    """A value as an error message quotes it: repr, at most 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + "..." + text[-15:]


@dataclass
class AttackConfig:
    """Everything needed to rerun one attack (written to result.json as ``config``)."""

    dataset: str = "ml-100k"
    shadow_dataset: str | None = None
    data_dir: str | None = None
    download: bool = False
    #: A file of user attributes (miars_core.science.attributes): its content enters the keys of the stages that read it.
    user_attributes: str | None = None
    target: str = "item"
    shadow: str | None = None  # None: the target's algorithm (same-algorithm attack)
    featurizer: str = "center-diff"
    attack: str = "mlp"
    defense: str | None = None
    service: str = "popular"
    top_k: int = 100
    seed: int = 0
    split: str = "interactions"
    min_interactions: int = 20
    utility_holdout: float = 0.0
    query_budget: int = 5  # queries per target user an attack of threat "queries" may ask the target service
    shadow_lengths: Any = None  # None: one shadow; "auto" or [epochs, ...]: one shadow per length (engine/lengths.py)
    target_params: dict[str, Any] = field(default_factory=dict)
    shadow_params: dict[str, Any] = field(default_factory=dict)
    featurizer_params: dict[str, Any] = field(default_factory=dict)
    attack_params: dict[str, Any] = field(default_factory=dict)
    defense_params: dict[str, Any] = field(default_factory=dict)
    service_params: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"  # where torch stages run: auto (a GPU when torch sees one), cpu, cuda, cuda:N

    def validate(self) -> "AttackConfig":
        """Reject impossible plain values before any component is built or data is read (fills the default shadow)."""
        self.shadow = self.shadow or self.target
        if isinstance(self.shadow_lengths, tuple):
            self.shadow_lengths = list(self.shadow_lengths)
        for name, (rule, example) in SETTINGS.items():
            value = getattr(self, name)
            problem = rule.problem(value)
            if problem is not None:
                flag = flag_of(name)
                shown_example = f"{flag} {example}" if not name.endswith("_params") else f"{flag} epochs=5"
                raise MiarsError(f"{flag} {shown(value)} {problem}; it must be {rule.describe()}, e.g. {shown_example}")
        if self.defense_params and not self.defense:
            keys = ", ".join(f"{k}={shown(v)}" for k, v in sorted(self.defense_params.items()))
            raise MiarsError(f"--defense-param {keys} is given without a defense, so nothing would use it; add "
                             "--defense NAME (`miars list defense`) or drop --defense-param")
        check_device(self.device)  # cuda without a usable GPU: refused here, before any work
        return self


@dataclass
class AttackResult:
    """Metrics, timings and provenance of one run; ``artifacts`` holds arrays for export (not JSON)."""

    config: AttackConfig
    metrics: dict
    timings: dict
    split: dict
    recommenders: dict
    components: dict
    versions: dict
    attackers: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict, repr=False)
    cache: dict = field(default_factory=dict, repr=False)
    cell: dict | None = None
    utility: dict | None = None
    queries: dict | None = None
    interaction: dict | None = None
    attack_record: dict | None = None
    attributes: dict | None = None

    def to_json(self) -> dict:
        """result.json's content; it follows the JSON Schema of :data:`~miars_core.engine.schema.SCHEMA_VERSION`."""
        from .schema import SCHEMA_VERSION

        out = {
            "schema_version": SCHEMA_VERSION,
            "metrics": self.metrics,
            "timings": self.timings,
            "config": asdict(self.config),
            "split": self.split,
            "recommenders": self.recommenders,
            "components": self.components,
            "versions": self.versions,
        }
        if self.attackers:
            out["attackers"] = self.attackers
        if self.utility is not None:
            out["utility"] = self.utility
        if self.queries:
            out["queries"] = self.queries
        if self.interaction:
            out["interaction"] = self.interaction
        if self.attack_record:
            out["attack_record"] = self.attack_record
        if self.attributes:
            out["attributes"] = self.attributes
        if self.cell is not None:
            out["cell"] = self.cell
        return out
