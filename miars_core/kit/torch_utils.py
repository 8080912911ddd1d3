"""Torch helpers (torch is imported only when these are called): threads, and the device a stage runs on.

**Devices.** A run asks for ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``--device``, ``device =``
in a grid's TOML, ``AttackConfig(device=...)``). The engine computes every stage inside
:func:`use_device`; a component reads :func:`current_device` where it builds tensors (``"cpu"``
or ``"cuda:N"``; ``"cpu"`` outside the engine, so a component used on its own behaves as
before). ``auto`` becomes ``cuda:0`` when torch sees a usable GPU, else ``cpu``; it is resolved
the first time a stage asks, so a run whose stages all come from the cache never imports torch.
The device is a run option, not a setting of the result: it is not in any stage key (a stage
computed on the GPU is read back on the CPU and the other way round); what each stage ran on is
recorded in its stored record (``device``) and in result.json (``versions.device``).
"""

from __future__ import annotations

import os
import re
import sys
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ..contracts.errors import MiarsError
from ..contracts.params import Constraint


@contextmanager
def single_thread() -> Iterator[None]:
    """Run small-tensor torch work on one thread: thread hand-offs cost more than the maths there."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- devices ---------------------------------------------------------------------------------------
#: The device names a run may ask for (besides ``cuda:N``).
DEVICES = ("auto", "cpu", "cuda")
_CUDA_N = re.compile(r"cuda:(0|[1-9][0-9]{0,3})")
ALLOWED = "auto, cpu, cuda or cuda:N (N the index of a GPU)"


def device_problem(value: Any) -> str | None:
    """What is wrong with ``value`` as a device name (None: nothing); never imports torch."""
    if not isinstance(value, str):
        return "is not a string"
    if value in DEVICES or _CUDA_N.fullmatch(value):
        return None
    return "is not a device"


@dataclass(frozen=True)
class Device(Constraint):
    """A device name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (the setting ``device``; checked without torch)."""

    def problem(self, value: Any) -> str | None:
        return device_problem(value)

    def describe(self) -> str:
        return ALLOWED


def _torch():
    import torch

    return torch


def resolve_device(device: str | None, flag: str = "--device") -> str:
    """The torch device string for a device name: ``cpu`` or ``cuda:N``.

    ``auto`` (or None) is ``cuda:0`` when torch sees a usable GPU, else ``cpu``; ``cuda`` is
    ``cuda:0``. A name that is not a device, or ``cuda`` without a usable GPU (a CPU build of
    torch, no driver, an index past the last GPU), is a one-line :class:`MiarsError` naming
    ``flag`` and the allowed values. ``cpu`` never imports torch.
    """
    device = "auto" if device is None else device
    problem = device_problem(device)
    if problem is not None:
        raise MiarsError(f"{flag} {device!r} {problem}; it must be {ALLOWED}, e.g. {flag} cuda")
    if device == "cpu":
        return "cpu"
    torch = _torch()
    available = bool(torch.cuda.is_available())
    if device == "auto":
        return "cuda:0" if available else "cpu"
    index = int(device.partition(":")[2] or 0)
    if not available:
        build = "a CPU-only build" if not getattr(torch.version, "cuda", None) else f"built for CUDA {torch.version.cuda}"
        raise MiarsError(f"{flag} {device}: no usable GPU here (torch {torch.__version__}, {build}, sees none); "
                         f"use {flag} cpu, or {flag} auto (a GPU when there is one, else the CPU)")
    count = int(torch.cuda.device_count())
    if index >= count:
        raise MiarsError(f"{flag} {device}: this machine has {count} usable GPU{'s' if count != 1 else ''} "
                         f"(cuda:0{f'..cuda:{count - 1}' if count > 1 else ''}); pass one of them, cpu or auto")
    return f"cuda:{index}"


def check_device(device: Any, flag: str = "--device") -> None:
    """Before any work: ``device`` is a device name and, when it asks for a GPU, one is usable.

    ``auto`` and ``cpu`` are accepted without importing torch (``auto`` is resolved when a stage runs).
    """
    problem = device_problem(device)
    if problem is not None:
        raise MiarsError(f"{flag} {device!r} {problem}; it must be {ALLOWED}, e.g. {flag} cuda")
    if device not in ("auto", "cpu"):
        resolve_device(device, flag)


@dataclass
class DeviceUse:
    """The device one stage was offered (``asked``), the one it resolved to once code asked (``used``), and every
    device its torch work ran on (``seen``: the resolved one, and those of fitted models it used, :func:`device_of`)."""

    asked: str
    used: str | None = None
    seen: list = field(default_factory=list)
    _restore: list = field(default_factory=list, repr=False)

    def resolve(self) -> str:
        if self.used is None:
            used = resolve_device(self.asked)
            self.note(used)
            self.used = used
        return self.used

    def note(self, device: str) -> None:
        """Torch work of the stage runs on ``device`` (``cpu``, ``cuda:N``): recorded, and on a GPU with
        deterministic kernels from now to the end of the stage."""
        if device in self.seen:
            return
        self.seen.append(device)
        if device.startswith("cuda"):
            start = time.perf_counter()
            self._restore.append(_deterministic_cuda(device))  # selecting the GPU creates its context
            if device not in _WARM:  # its first use in this process: warm it up, after the cuBLAS setting
                _warm_cuda(device)
                _WARM[device] = time.perf_counter() - start

    def record(self) -> dict:
        """What the stage's stored record says (empty when no code asked for a device: numpy/scipy only)."""
        if not self.seen:
            return {}
        out: dict[str, Any] = {"device": ",".join(sorted(self.seen))}
        gpus = [d for d in self.seen if d != "cpu"]
        if gpus:
            try:
                out["device_name"] = str(_torch().cuda.get_device_name(gpus[0]))
            except Exception:  # noqa: BLE001 - a name is nice to have, never a failure
                pass
        return out


_CURRENT: ContextVar[DeviceUse | None] = ContextVar("miars_device", default=None)


def current_device() -> str:
    """The torch device the running stage should build its tensors on: ``"cpu"`` or ``"cuda:N"``.

    Inside the engine (a stage of ``miars-attack``, ``miars grid``, ``bench-defenses``,
    ``audit-dp``, ``run_attack``) it is the run's ``--device`` (``auto`` resolved); anywhere
    else ``"cpu"``. A plugin calls it inside ``fit``/``recommend``/``decision_function`` (never
    at import or in ``__init__``) and returns numpy arrays as before.
    """
    use = _CURRENT.get()
    return "cpu" if use is None else use.resolve()


@contextmanager
def use_device(device: str | None = "auto") -> Iterator[DeviceUse]:
    """Run the body with :func:`current_device` answering for ``device`` (resolved on first use).

    On a GPU it also makes torch pick deterministic kernels for the body (cuDNN, cuBLAS,
    ``torch.use_deterministic_algorithms(warn_only=True)``) and restores the previous settings
    afterwards, so the same seed gives the same results on the same GPU wherever torch has a
    deterministic kernel (docs/notes.md). Bad names fail here, before the body runs.
    """
    device = "auto" if device is None else device
    problem = device_problem(device)
    if problem is not None:
        raise MiarsError(f"--device {device!r} {problem}; it must be {ALLOWED}, e.g. --device cuda")
    use = DeviceUse(device)
    token = _CURRENT.set(use)
    try:
        yield use
    finally:
        _CURRENT.reset(token)
        while use._restore:
            use._restore.pop()()


#: Seconds the first use of each GPU took in this process (CUDA context, cuBLAS handle, first kernels).
_WARM: dict[str, float] = {}


def warm_seconds() -> float:
    """Seconds this process has spent on the first use of its GPUs so far (0 on the CPU): the engine's clock
    counts them as warm-up, not as the time of the stage that happened to use a GPU first."""
    return sum(_WARM.values())


def _warm_cuda(device: str) -> None:
    """A GPU's one-time initialisation: its context, cuBLAS, a top-k and an Adam step; no random draw."""
    torch = _torch()
    with torch.no_grad():
        x = torch.ones((64, 64), device=device)
        torch.topk(x @ x, 4, dim=1)
    w = torch.zeros((8, 4), device=device, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.01)
    ((w @ torch.ones((4, 1), device=device)).sum() ** 2).backward()
    opt.step()
    torch.cuda.synchronize(device)


def _deterministic_cuda(device: str) -> Callable[[], None]:
    """Deterministic GPU kernels for a stage; returns what restores the previous settings."""
    torch = _torch()
    # cuBLAS reads this when its handle is created: a fixed workspace makes its reductions repeatable.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    previous = torch.cuda.current_device()
    torch.cuda.set_device(torch.device(device))  # for code that says "cuda" without an index

    def restore() -> None:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]
        torch.cuda.set_device(previous)

    return restore


def device_of(obj: Any, default: str = "cpu") -> Any:
    """The torch device of a tensor, a module (its first parameter or buffer) or a RecBole model (``.device``).

    Call it where torch work starts on a fitted model (scoring, fold-in, training steps): inside a
    stage it also tells the stage that its work runs there (:meth:`DeviceUse.note`), so a stage
    handed a model fitted on a GPU by an earlier stage records the GPU and runs with deterministic
    kernels, although it never asked :func:`current_device` itself.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return default
    found: Any = None
    if torch.is_tensor(obj):
        found = obj.device
    elif isinstance(obj, torch.nn.Module):
        found = next(iter(obj.parameters()), None)
        found = found if found is not None else next(iter(obj.buffers()), None)
        found = found.device if found is not None else None
    if found is None:
        found = getattr(obj, "device", None)
    found = torch.device(found) if found is not None else torch.device(default)
    use = _CURRENT.get()
    if use is not None:
        use.note(_name(found))
    return found


def _name(device: Any) -> str:
    """``cpu`` or ``cuda:N`` for a torch device (``cuda`` without an index: the current GPU)."""
    if device.type != "cuda":
        return device.type
    return f"cuda:{device.index if device.index is not None else _torch().cuda.current_device()}"
