"""Errors that the command line turns into a one-line message and exit code 2."""

from __future__ import annotations


class MiarsError(Exception):
    """A user-facing error: bad input, unknown name, unusable data.

    The message is one line that names the input, the allowed values and the next step.
    """


class UnknownNameError(MiarsError, KeyError):
    """A component name that no plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(MiarsError):
    """Two plugins registered the same component name."""


class PluginError(MiarsError):
    """An exception raised inside a component's code, named in one line (component, plugin, method).

    ``traceback`` keeps the original exception's traceback as text (file and line in the
    plugin), so that ``MIARS_DEBUG=1`` can print it and a grid cell's error.json can hold it;
    the original exception is also the ``__cause__`` while the error stays in its process.
    Text, not the traceback object, so the error pickles from a worker process to the grid.
    """

    def __init__(self, message: str, traceback: str = ""):
        super().__init__(message)
        self.traceback = traceback

    def __reduce__(self):
        return (type(self), (str(self), self.traceback))


def format_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` as text, whole chain included (what ``traceback.print_exception`` prints)."""
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def plugin_traceback(exc: BaseException) -> str:
    """The original traceback a :class:`PluginError` in ``exc``'s chain (itself, its causes) carries; "" if none."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, PluginError) and exc.traceback:
            return exc.traceback
        exc = exc.__cause__ or exc.__context__
    return ""


class Terminated(BaseException):
    """Raised by the command line's handler of SIGTERM/SIGHUP, so ``finally`` blocks and
    temporary folders clean up on the way out (a BaseException: ``except Exception`` in
    component code does not swallow it)."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signum)
        self.signum = int(signum)
        try:
            self.name = signal.Signals(signum).name
        except ValueError:
            self.name = f"signal {signum}"
