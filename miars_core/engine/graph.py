"""The stage graph, declared: each stage a small record, one walker for all of them.

A stage is a function decorated with :meth:`Graph.stage`. Its parameters after ``(cell, node)``
are its inputs, by name (the edges of the graph, in the spirit of Hamilton's functions-as-nodes):
``inputs`` maps each name to the node of another stage it reads, resolved per node. The key of
a node is the digest of a record holding the stage's name, the version of the stage code, the
key of every input (under the input's name) and what ``covers`` adds: component identities,
seeds, options. So a key covers exactly what its computation reads, and adding a stage touches
one place: its declaration.

A *node* is one instance of a stage: ``Node("serve", "target", defended=True)``. A stored stage
returns ``(arrays, record)`` (or ``(arrays, record, value)`` when what it hands downstream is
something else than its output, e.g. a live fitted model) and its output goes to the store; a
*derived* stage (``stored=False``) returns a value kept in memory only: its key still flows into
the keys that read it (the visible part of a split under a utility hold-out, say).

The walker (:class:`Walker`; the cell binds it to a store and a config) computes keys without
touching data, reads a stored output and checks it (``check``, then ``decode``), or gathers the
inputs, computes, stores, and times the computation (excluding stages computed inside it, and
excluding the process's one-time warm-up, :mod:`miars_core.engine.warmup`). Everything that
plans (the grid's tasks, the list of a cell's stored outputs) reads the same declarations.

**The device.** The walker computes every stored stage, and decodes every stored output (a
fitted model is rebuilt there), inside :func:`~miars_core.kit.torch_utils.use_device` for the
run's device (``--device``): a run option, in no key. ``auto`` is resolved only when a stage's
code asks, and the device a stage's torch work ran on goes into its stored record (``device``,
``device_name``).
"""

from __future__ import annotations

import contextlib
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from ..contracts.errors import MiarsError
from ..kit.torch_utils import DeviceUse, use_device, warm_seconds
from .keys import core_version, digest
from .store import Output


class Node(NamedTuple):
    """One instance of a stage: ``part`` names a side or part (``shadow``, ``target``) or is empty;
    ``defended``: under the cell's defense; ``index``: a member of a family (reference model number)."""

    stage: str
    part: str = ""
    defended: bool = False
    index: int = 0


class Unusable(Exception):
    """Raised by a ``decode``: the stored output passed its checksums but cannot be used (a stored model
    written by another library version, say). The walker then computes the stage again, in one line."""

    def __init__(self, reason: str, name: str = ""):
        super().__init__(reason)
        self.reason, self.name = reason, name


@dataclass(frozen=True)
class Stage:
    """A stage's declaration (see the module docstring); built by :meth:`Graph.stage`."""

    name: str
    compute: Callable[..., Any]
    inputs: dict[str, Callable[[Any, Node], Node]]
    covers: Callable[[Any, Node], dict] | None = None
    stored: bool = True
    #: The result.json timing this stage's seconds count under (``serve:<part>`` -> ``<part>_recommender``, ...).
    timing: Callable[[Node], str] | None = None
    #: The progress line shown when the stage is computed.
    message: Callable[[Any, Node], str] | None = None
    #: What is wrong with a stored output read back (ids and indices in range, shapes, finite values), or None.
    check: Callable[[Any, Node, Output], Any] | None = None
    #: The value handed downstream from a stored output (default: the output itself); may raise :class:`Unusable`.
    decode: Callable[[Any, Node, Output], Any] | None = None
    #: Called before the inputs are gathered when the stage is computed (cheap checks that save a long fit).
    before: Callable[[Any, Node], None] | None = None
    #: The grid runs this stage as its own task, shared by every cell that needs it (splits, fits).
    task: bool = False
    #: A family: members differ by ``node.index`` alone (in the key as ``index``), asked for on demand
    #: (:class:`~miars_core.engine.stages.FamilyRunner`); ``covers`` must not depend on the index.
    family: bool = False

    def time_name(self, node: Node) -> str:
        return self.timing(node) if self.timing else self.name


@dataclass
class Graph:
    """A registry of stage declarations (see the module docstring)."""

    stages: dict[str, Stage] = field(default_factory=dict)

    def stage(self, *, inputs: dict[str, Callable[[Any, Node], Node]] | None = None, **options: Any):
        """Declare the decorated function ``name(cell, node, **inputs)`` as a stage named after it."""
        inputs = dict(inputs or {})

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            params = list(inspect.signature(fn).parameters)[2:]
            if sorted(params) != sorted(inputs):
                raise TypeError(f"stage {fn.__name__}: its parameters {params} must be its inputs {sorted(inputs)}")
            if fn.__name__ in self.stages:
                raise TypeError(f"stage {fn.__name__} is declared twice")
            self.stages[fn.__name__] = Stage(fn.__name__, fn, inputs, **options)
            return fn

        return register

    def __getitem__(self, name: str) -> Stage:
        return self.stages[name]

    def edges(self, cell: Any, node: Node) -> dict[str, Node]:
        """The nodes ``node`` reads, by input name."""
        return {name: resolve(cell, node) for name, resolve in self.stages[node.stage].inputs.items()}

    def upstream(self, cell: Any, roots: list[Node]) -> list[Node]:
        """Every node the ``roots`` need (themselves included), each once, inputs before the nodes that read them."""
        out: list[Node] = []
        seen: set[Node] = set()

        def visit(node: Node) -> None:
            if node in seen:
                return
            seen.add(node)
            for up in self.edges(cell, node).values():
                visit(up)
            out.append(node)

        for root in roots:
            visit(root)
        return out


class Clock:
    """Seconds of stages computed while another stage computes, so each stage's time is its own.

    Holds numbers only: the reference models an attack asks for share it with the cell without
    reaching the cell (:mod:`miars_core.science.threat` isolation)."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: list[list[float]] = []  # per open run: [seconds of runs inside it, GPU warm-up inside those]

    def run(self, fn: Callable[[], Any]) -> tuple[Any, float, float]:
        """``fn()``, its own seconds (stages it computed inside excluded; they count for it in its caller) and the
        seconds of the process's one-time warm-up when this call paid it (else 0): the warm-up before the first
        stage, and a GPU's first use (:func:`~miars_core.kit.torch_utils.warm_seconds`) when ``fn`` paid it."""
        from .warmup import warm_up

        paid = warm_up()  # once per process: outside every stage's time
        self._open.append([0.0, 0.0])
        gpu = warm_seconds()
        start = time.perf_counter()
        try:
            result = fn()
        finally:
            inner, inner_gpu = self._open.pop()
            total = time.perf_counter() - start
            gpu = warm_seconds() - gpu
            if self._open:
                self._open[-1][0] += total
                self._open[-1][1] += gpu
        own_gpu = gpu - inner_gpu  # a GPU's first use paid by fn itself (not by a stage computed inside it)
        return result, max(0.0, total - inner - own_gpu), paid + own_gpu


def on_device(device: str | None) -> contextlib.AbstractContextManager[DeviceUse | None]:
    """:func:`~miars_core.kit.torch_utils.use_device` for ``device``; with None, no device context (the caller's)."""
    return use_device(device) if device is not None else contextlib.nullcontext()


def read(store: Any, stage: Stage, key: str, cell: Any, node: Node, device: str | None = None) -> tuple[Output, Any] | None:
    """A stored output and its decoded value, or None when missing or broken (a broken one is moved away
    by the store, with one line naming the file, and is then computed again by the caller).
    ``device``: where the decode builds what it rebuilds (a fitted model), see :func:`on_device`."""
    out = store.get(stage.name, key)
    if out is None:
        return None
    problem = None
    try:
        problem = stage.check(cell, node, out) if stage.check else None
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        problem = ("", f"cannot be used ({type(exc).__name__}: {exc})")
    value: Any = out
    if not problem and stage.decode is not None:
        try:
            with on_device(device):
                value = stage.decode(cell, node, out)
        except Unusable as exc:
            problem = (exc.name, exc.reason)
    if problem:
        store.reject(stage.name, key, problem[1], problem[0] or None)
        return None
    return out, value


def compute(store: Any, stage: Stage, key: str, clock: Clock, fn: Callable[[], Any],
            device: str | None = None) -> tuple[Output, Any, float]:
    """Compute a stage (``fn() -> (arrays, record[, value])``) and store it with its seconds.

    Returns (output, value, seconds): the value is the output itself when ``fn`` gave none.
    ``fn`` runs on ``device`` (:func:`on_device`); the record says where its torch work ran
    (``device``, ``device_name``; nothing when it asked for no device).

    When the stored output was broken and computing it again fails, the error names the file.
    """
    try:
        with on_device(device) as use:
            result, seconds, warmup = clock.run(fn)
    except Exception as exc:
        broken = getattr(store, "broken", {}).get((stage.name, key))
        if broken is None:
            raise
        line = str(exc) if isinstance(exc, MiarsError) else f"{type(exc).__name__}: {exc}"
        raise MiarsError(f"cached file {broken[0]!r} {broken[1]}, and computing the {stage.name} stage again failed: "
                         f"{' '.join(line.split())}") from exc
    arrays, meta = result[0], result[1]
    meta = {**meta, "seconds": round(seconds, 3), **(use.record() if use is not None else {})}
    if warmup:
        meta["warmup"] = round(warmup, 3)
    out = store.put(stage.name, key, arrays, meta)
    return out, (result[2] if len(result) > 2 else out), seconds


class Walker:
    """Walks one cell's declared graph: keys, reads, computations, timings and progress.

    ``cell`` is what the declarations receive (config, components); the walker holds the store,
    the in-process values (by stage and key) and what was computed or read. ``device``: the run's
    device (``auto``, ``cpu``, ``cuda:N``) every stage is computed and decoded on; None: the caller's.
    """

    def __init__(self, graph: Graph, cell: Any, store: Any, progress: Callable[[str], None] | None = None,
                 device: str | None = None):
        self.graph = graph
        self.cell = cell
        self.store = store
        self.progress = progress
        self.device = device
        self.clock = Clock()
        self.timings: dict[str, float] = {}
        self.computed: dict[str, float] = {}  # timing name -> seconds computed in this process
        self.hits: list[str] = []
        self.current: str | None = None  # the timing name of the stage computed last (named in a failed cell's error)
        self._keys: dict[Node, str] = {}
        self._values: dict[tuple[str, str], Any] = {}
        self._outputs: dict[tuple[str, str], Output] = {}
        self._counted: set[tuple[str, str]] = set()

    # -- keys ----------------------------------------------------------------------------------
    def record(self, node: Node) -> dict:
        """The key record of ``node``: stage, code version, the inputs' keys, what the stage covers."""
        stage = self.graph[node.stage]
        rec: dict[str, Any] = {"stage": stage.name, "core": core_version()}
        for name, up in self.graph.edges(self.cell, node).items():
            rec[name] = self.key(up)
        if stage.covers is not None:
            rec.update(stage.covers(self.cell, node))
        if stage.family:
            rec["index"] = node.index
        return rec

    def key(self, node: Node) -> str:
        if node not in self._keys:
            self._keys[node] = digest(self.record(node))
        return self._keys[node]

    # -- values --------------------------------------------------------------------------------
    def value(self, node: Node) -> Any:
        """What ``node`` hands downstream: read (checked, decoded) or computed (and stored)."""
        stage, key = self.graph[node.stage], self.key(node)
        memo = (stage.name, key)
        if memo in self._values:
            return self._values[memo]
        if not stage.stored:
            inputs = {name: self.value(up) for name, up in self.graph.edges(self.cell, node).items()}
            value = stage.compute(self.cell, node, **inputs)
        else:
            value = self._stored(stage, node, key)
        self._values[memo] = value
        return value

    def output(self, node: Node) -> Output:
        """The stored output of ``node`` (computed first when missing)."""
        stage, key = self.graph[node.stage], self.key(node)
        if (stage.name, key) not in self._outputs:
            self.value(node)
        return self._outputs[(stage.name, key)]

    def _stored(self, stage: Stage, node: Node, key: str) -> Any:
        found = read(self.store, stage, key, self.cell, node, self.device)
        timing = stage.time_name(node)
        if found is None:
            if stage.before is not None:
                stage.before(self.cell, node)
            inputs = {name: self.value(up) for name, up in self.graph.edges(self.cell, node).items()}
            self.current = timing
            if self.progress and stage.message:
                self.progress(stage.message(self.cell, node))
            out, value, seconds = compute(self.store, stage, key, self.clock,
                                          lambda: stage.compute(self.cell, node, **inputs), self.device)
            if value is out and stage.decode is not None:
                with on_device(self.device):
                    value = stage.decode(self.cell, node, out)
            self.computed[timing] = round(self.computed.get(timing, 0.0) + seconds, 3)
        else:
            out, value = found
            self.hits.append(timing)
        self._outputs[(stage.name, key)] = out
        if (stage.name, key) not in self._counted:  # a stage shared by both sides counts once
            self._counted.add((stage.name, key))
            self.timings[timing] = round(self.timings.get(timing, 0.0) + float(out.meta.get("seconds", 0.0)), 3)
        return value
