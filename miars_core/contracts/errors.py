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
