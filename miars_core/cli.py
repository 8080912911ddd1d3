"""Command line: ``miars`` (attack, plugins, list) and ``miars-attack``.

Heavy modules (torch, recbole, the pipeline) load only inside the commands that need them,
so ``miars --help``, ``miars plugins`` and ``miars list`` stay fast.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, List, Optional

import click
import typer
from typer.core import TyperCommand, TyperGroup

from .api import _expand
from .contracts.errors import MiarsError, Terminated, plugin_traceback
from .contracts.registry import KINDS


#: Click's exceptions: typer >= 0.20 ships its own copy of click, older typer uses click itself.
_TYPER_CLICK = getattr(getattr(typer.core, "_click", None), "exceptions", None)
_CLICK_ERRORS = tuple({c for c in (getattr(typer, "TyperException", None), getattr(_TYPER_CLICK, "ClickException", None),
                                   click.ClickException) if c is not None})
_NO_ARGS_HELP = tuple({c for c in (getattr(_TYPER_CLICK, "NoArgsIsHelpError", None),
                                   getattr(click.exceptions, "NoArgsIsHelpError", None)) if c is not None})
_ABORTS = tuple({c for c in (getattr(typer, "Abort", None), getattr(_TYPER_CLICK, "Abort", None), click.exceptions.Abort)
                 if c is not None})


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _OneLineErrors:
    """Usage errors (bad option, missing value, not an integer) as one ``miars: error:`` line, exit 2.

    Click's own message is kept, without the usage box: ``miars: error: Invalid value for
    '--top-k': 'abc' is not a valid integer.``
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)  # type: ignore[misc]
        except _NO_ARGS_HELP as exc:  # bare `miars`: the help, as before
            exc.show()
            code = 2
        except _CLICK_ERRORS as exc:
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            got = _given_value(exc, sys.argv[1:] if args is None else list(args))
            if got is not None and repr(got) not in message:
                message += f" (got {got!r})"
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None and ctx.command_path else ""
            _echo_error(_one_line(message) + hint)
            code = int(getattr(exc, "exit_code", 2) or 2)
        except _ABORTS:
            _echo_error("aborted")
            code = 1
        except OSError as exc:  # help or usage text that standard output refused (commands catch their own)
            _silence_stdout()
            _echo_error(stdout_error(exc, "the help"))
            code = 2
        except SystemExit as exc:
            if exc.code != 1 or not _PACIFIED():  # click's quiet exit 1 on a broken pipe: one line instead
                raise
            _echo_error(stdout_error(BrokenPipeError(32, "Broken pipe"), "the help"))
            code = 2
        else:
            code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
        try:  # anything still buffered: a full disk shows here, not as a traceback at exit
            sys.stdout.flush()
        except (OSError, ValueError) as exc:
            _silence_stdout()
            if isinstance(exc, OSError):
                _echo_error(stdout_error(exc, "the output"))
                code = 2
        if not standalone_mode:
            return code
        sys.exit(code)


def _PACIFIED() -> bool:
    """Whether click or rich met a broken standard output and chose to exit 1 without a word.

    click swaps standard output for its ``PacifyFlushWrapper``; rich points its descriptor at
    the null device. No miars command calls ``sys.exit`` itself.
    """
    if type(sys.stdout).__name__ == "PacifyFlushWrapper":
        return True
    try:
        out, null = os.fstat(sys.stdout.fileno()), os.stat(os.devnull)
    except (OSError, ValueError, AttributeError):
        return False
    return (out.st_ino, out.st_dev, out.st_rdev) == (null.st_ino, null.st_dev, null.st_rdev)


def stdout_error(exc: OSError, what: str, where: str = "") -> str:
    """The one-line message for ``what`` that standard output refused (closed pipe, full disk)."""
    if isinstance(exc, BrokenPipeError) or getattr(exc, "errno", None) == 32:
        return f"standard output was closed before {what} was printed (broken pipe){where}"
    return (f"cannot write {what} to standard output ({getattr(exc, 'strerror', None) or exc}){where or '; '}"
            + ("" if where else "redirect it to a writable file with free space"))


def _given_value(exc: BaseException, args: list) -> Optional[str]:
    """The raw text the user gave the option a BadParameter is about (typer's message omits it)."""
    param = getattr(exc, "param", None)
    opts = list(getattr(param, "opts", None) or [])
    for i in reversed(range(len(args))):  # the last occurrence is the one click parsed
        arg = str(args[i])
        for opt in opts:
            if arg == opt and i + 1 < len(args):
                return str(args[i + 1])
            if arg.startswith(opt + "="):
                return arg[len(opt) + 1:]
    return None


#: A list of installed components in an option's help, ``{installed:KIND}``: filled in from the plugin
#: registry when the help is shown, so importing the CLI (and ``miars --help``) loads no plugin.
INSTALLED = re.compile(r"\{installed:(\w+)\}")


def installed_names(kind: str) -> str:
    """The components of ``kind`` the plugin registry knows (built-ins and installed plugins), comma-separated."""
    from .contracts.plugins import get_plugins

    registry = get_plugins().registry(kind)
    return ", ".join(list(registry.names()) + [f"{p}:<Name>" for p in sorted(registry.namespaces)])


def fill_help(text: str, names=installed_names) -> str:
    """``text`` with each ``{installed:KIND}`` replaced by ``names(KIND)`` (``see `miars list KIND```
    when that is empty or fails: help must show even when a plugin is broken)."""
    def one(match: re.Match) -> str:
        try:
            found = names(match.group(1))
        except Exception:  # noqa: BLE001
            found = ""
        return found or f"see `miars list {match.group(1)}`"

    return INSTALLED.sub(one, text)


class _RegistryHelp:
    """Options whose help names ``{installed:KIND}`` list the registry's components when ``--help`` is shown."""

    def format_help(self, ctx, formatter) -> None:
        for param in self.get_params(ctx):  # type: ignore[attr-defined]
            template = getattr(param, "_miars_help", None)
            if template is None and INSTALLED.search(getattr(param, "help", None) or ""):
                template = param._miars_help = param.help
            if template is not None:
                param.help = fill_help(template)
        super().format_help(ctx, formatter)  # type: ignore[misc]


class OneLineGroup(_OneLineErrors, TyperGroup):
    pass


class OneLineCommand(_OneLineErrors, _RegistryHelp, TyperCommand):
    pass


class RegistryHelpCommand(_RegistryHelp, TyperCommand):
    pass


def _echo_error(message: str) -> None:
    try:
        typer.echo(f"miars: error: {message}", err=True)
    except (OSError, UnicodeError):  # stderr closed or unencodable: nothing better to do
        pass


app = typer.Typer(
    cls=OneLineGroup,
    name="miars",
    help="Membership inference attacks against recommender systems (Zhang et al., CCS 2021).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

METRICS_HELP = (
    "Prints ROC-AUC, balanced accuracy (what the CCS'21 paper calls 'AUC': (TPR+TNR)/2 at one threshold), "
    "accuracy, precision, recall, TPR at 1% and 0.1% FPR and the membership advantage (max TPR-FPR)."
)


DEVICE_HELP = ("Where torch stages run (recommender fits, fold-in, scoring, the attack MLP, dp-sgd): auto (a GPU "
               "when torch sees one, else the CPU), cpu, cuda or cuda:N. A run option: same seed, same metrics on a given "
               "device; GPU floats may differ slightly from the CPU's (docs/engine.md).")


def _fail(message: str, code: int = 2) -> None:
    """Print ``miars: error: <message>`` as one line on stderr and exit ``code`` (2: bad input)."""
    _echo_error(_one_line(message))
    raise typer.Exit(code)


@contextmanager
def _signals_exit() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Terminated` so every ``finally`` and temporary folder cleans up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(signum)

    wanted = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {}
    for sig in wanted:
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):  # pragma: no cover - not allowed here
            pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def guarded() -> Iterator[None]:
    """Every command's edge: any failure becomes one ``miars: error:`` line and an exit code, never a traceback.

    Bad input (MiarsError) exits 2; SIGTERM/SIGHUP exit 128+n after every temporary folder is
    cleaned up; anything unexpected is named as a bug (``MIARS_DEBUG=1`` shows the traceback).
    """
    try:
        with _signals_exit():
            yield
    except MiarsError as exc:
        if debugging():  # a plugin's exception, named in one line: its original traceback first
            _echo_traceback(plugin_traceback(exc))
        _fail(str(exc))
    except Terminated as exc:
        _fail(f"terminated by {exc.name}; temporary files were removed and no output was written", 128 + exc.signum)
    except KeyboardInterrupt:
        _fail("interrupted; temporary files were removed and no output was written", 130)
    except (typer.Exit, SystemExit, *_CLICK_ERRORS):
        raise
    except MemoryError:
        _fail("out of memory; use a smaller dataset, a smaller model or a smaller --top-k")
    except OSError as exc:  # a file system refusal anywhere: the path and what to do
        where = _short(exc.filename) if exc.filename else "a file"
        _fail(f"cannot access {where} ({exc.strerror or exc}); check the path, its permissions and free space")
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        if debugging():
            raise
        _fail(f"unexpected {type(exc).__name__}: {_one_line(exc)[:300]}; this is a bug in miars or a plugin, "
              "please report it (rerun with MIARS_DEBUG=1 for the traceback)")


def _echo_traceback(text: str) -> None:
    """A plugin's original traceback on stderr (``MIARS_DEBUG=1``), before the one-line error."""
    if not text:
        return
    try:
        typer.echo(text.rstrip("\n"), err=True)
    except (OSError, UnicodeError):
        pass


def debugging() -> bool:
    """``MIARS_DEBUG=1`` keeps tracebacks; any other value (``0``, empty, ``yes``) means off."""
    return os.environ.get("MIARS_DEBUG", "").strip() == "1"


#: ``--user-attributes``'s help (miars-attack, grid, bench-defenses).
USER_ATTRIBUTES_HELP = ("File of user attributes: user id, then attribute columns (categorical; header optional; "
                        "MovieLens users.dat and RecBole .user recognised; .gz ok): read by --service-param "
                        "cold_start=attributes and by reference-rec.")


def attack(
    dataset: str = typer.Option("ml-100k", help="Dataset name (`miars list dataset`) or path of an interactions file (user, item columns; .gz ok; RecBole .inter ok)."),
    shadow_dataset: Optional[str] = typer.Option(None, "--shadow-dataset", help="Take the shadow part from this dataset instead (the paper's dataset transfer)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Folder holding the dataset's original file (plain or .gz)."),
    download: bool = typer.Option(False, "--download", help="Download the official archive into ~/.cache/miars if the file is missing."),
    user_attributes: Optional[str] = typer.Option(None, "--user-attributes", help=USER_ATTRIBUTES_HELP),
    target: str = typer.Option("item", help="Target recommender (`miars list recommender`), e.g. item, lfm, ncf, recbole:NeuMF; installed: {installed:recommender}."),
    shadow: Optional[str] = typer.Option(None, help="Shadow recommender the adversary trains (default: same as --target)."),
    featurizer: str = typer.Option("center-diff", help="Featurizer (`miars list featurizer`); installed: {installed:featurizer}."),
    attack_model: str = typer.Option("mlp", "--attack", help="Attack model (`miars list attack`); installed: {installed:attack}."),
    defense: Optional[str] = typer.Option(None, help="Defense applied to both the target's and the shadow's service (`miars list defense`); installed: {installed:defense}."),
    service: str = typer.Option("popular", help="What non-members are served (`miars list service`): popular (the paper's), foldin (the model's top-k from their own history); installed: {installed:service}."),
    top_k: int = typer.Option(100, "--top-k", help="Length of every recommendation list."),
    seed: int = typer.Option(0, help="Master seed: same seed, same metrics."),
    split: str = typer.Option("interactions", help="interactions (the paper's: interactions at random into 3 parts) or users (each user wholly in one part)."),
    min_interactions: int = typer.Option(20, "--min-interactions", help="Shadow/target users with fewer interactions are dropped."),
    target_param: Optional[List[str]] = typer.Option(None, "--target-param", help="KEY=VALUE hyperparameter of the target recommender (repeatable)."),
    shadow_param: Optional[List[str]] = typer.Option(None, "--shadow-param", help="KEY=VALUE hyperparameter of the shadow recommender (repeatable)."),
    featurizer_param: Optional[List[str]] = typer.Option(None, "--featurizer-param", help="KEY=VALUE, e.g. dim=100."),
    attack_param: Optional[List[str]] = typer.Option(None, "--attack-param", help="KEY=VALUE, e.g. epochs=200."),
    defense_param: Optional[List[str]] = typer.Option(None, "--defense-param", help="KEY=VALUE, e.g. ratio=0.1."),
    service_param: Optional[List[str]] = typer.Option(None, "--service-param", help="KEY=VALUE for the service model."),
    query_budget: int = typer.Option(5, "--query-budget", help="Queries per target user, on average, an attack with query access may ask: budget x target users in all (recorded in result.json); >= 1 for query attacks."),
    shadow_lengths: Optional[str] = typer.Option(None, "--shadow-lengths", help="Train the shadow recommender once per training length and train the attack on the shadow features of every length (labels repeated), for a target whose length is unknown: auto (the shadow's own length x 0.5, 1, 2) or epochs, comma-separated, e.g. 4,8,16; a recommender with an epochs parameter and an attack trained on features (mlp ...) only (default: one shadow; recorded in result.json)."),
    out: Optional[str] = typer.Option(None, "--out", help="Folder to write result.json (metrics, timings, config, split, versions) and scores.tsv (per-user attack scores) into."),
    export_miars: Optional[str] = typer.Option(None, "--export-miars", help="Folder to write the authors' TSV files into (interactions, recommendations, item vectors)."),
    cache: Optional[str] = typer.Option(None, "--cache", help="Folder of cached stage outputs (default: $MIARS_CACHE/stages or ~/.cache/miars/stages)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Compute every stage afresh and store nothing."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress messages."),
    force: bool = typer.Option(False, "--force", help="Write into an --out folder that is not empty and not a miars-attack output folder (only result.json and scores.tsv are replaced there)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Run the CCS'21 membership inference attack end to end and print its metrics."""
    with guarded():
        _attack(dataset, data_dir, download, target, shadow, featurizer, attack_model, defense, top_k, seed, split,
                min_interactions, target_param, shadow_param, featurizer_param, attack_param, defense_param,
                out, export_miars, quiet, shadow_dataset, cache, no_cache, service, service_param, query_budget, force,
                device, user_attributes, shadow_lengths)


def _attack(dataset, data_dir, download, target, shadow, featurizer, attack_model, defense, top_k, seed, split,
            min_interactions, target_param, shadow_param, featurizer_param, attack_param, defense_param,
            out, export_miars, quiet, shadow_dataset=None, cache=None, no_cache=False, service="popular",
            service_param=None, query_budget=5, force=False, device="auto", user_attributes=None, shadow_lengths=None) -> None:
    from . import api

    config = api.attack_config(
        dataset=dataset, shadow_dataset=shadow_dataset, data_dir=data_dir, download=download, target=target,
        shadow=shadow, featurizer=featurizer, attack=attack_model, defense=defense, top_k=top_k, seed=seed, split=split,
        min_interactions=min_interactions, target_param=target_param, shadow_param=shadow_param,
        featurizer_param=featurizer_param, attack_param=attack_param, defense_param=defense_param, service=service,
        service_param=service_param, query_budget=query_budget, device=device, user_attributes=user_attributes, shadow_lengths=shadow_lengths)
    _run(config, _expand(out), _expand(export_miars), quiet, api.stage_store(_expand(cache), no_cache), force)


attack.__doc__ = f"{attack.__doc__}\n\n{METRICS_HELP}"


def _run(config, out: Optional[str], export_dir: Optional[str], quiet: bool, store=None, force: bool = False) -> None:
    """Check the outputs can be written, run, write the outputs, then print the metrics
    (:func:`miars_core.api.execute_attack`, the Python API's code path).

    Outputs are written before anything is printed, so a closed or full standard output
    (``| true``, ``> /dev/full``) loses no result; any OS error names the path and what to do.
    """
    from rich.console import Console

    from .api import execute_attack
    from .reports.report import metrics_table

    err = Console(stderr=True, quiet=quiet, log_path=False)
    with err.status("starting") as status:
        run, problem = execute_attack(config, out, export_dir, store, force,
                                      progress=lambda msg: (err.log(msg), status.update(msg)))
    for line in run.cache_problems:  # broken stored outputs, computed again
        _echo_warning(line)
    if "result.json" in run.paths:
        err.print(f"wrote {run.paths['result.json']}")
    if "export" in run.paths:
        err.print(f"wrote {len(run.paths['export'])} files to {export_dir}")
    _print_stdout(metrics_table(run.result), out)
    if run.no_signal:  # shown even with --quiet: these metrics do not measure a leak
        _echo_warning(run.no_signal)
    if problem:
        raise MiarsError(problem)


def _print_stdout(renderable, out: Optional[str]) -> None:
    where = f"; results were written to {out}" if out else "; pass --out DIR to keep the results in files"
    write_stdout(renderable, "the metrics", where)


def write_stdout(renderable, what: str, where: str = "") -> None:
    """Print a rich renderable (or plain text, written as is) on standard output and flush it.

    A closed pipe or a full disk becomes one :class:`MiarsError` line naming ``what`` was lost
    (``where`` says where the results are kept), never a traceback.
    """
    from rich.console import Console

    class _Stdout(Console):
        def on_broken_pipe(self) -> None:  # rich would exit 1 silently
            self.quiet = True
            raise BrokenPipeError(32, "Broken pipe")

    try:
        if isinstance(renderable, str):
            sys.stdout.write(renderable if renderable.endswith("\n") else renderable + "\n")
        else:
            _Stdout().print(renderable)
        sys.stdout.flush()
    except OSError as exc:
        _silence_stdout()
        raise MiarsError(stdout_error(exc, what, where)) from None


def _echo_note(message: str) -> None:
    """A ``miars: note:`` line on stderr (shown with --quiet too): work the command left out, and why."""
    try:
        typer.echo(f"miars: note: {_one_line(message)}", err=True)
    except (OSError, UnicodeError):
        pass


def _echo_warning(message: str) -> None:
    try:
        typer.echo(f"miars: warning: {_one_line(message)}", err=True)
    except (OSError, UnicodeError):
        pass


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail a second time."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:
        pass


app.command("attack", help=attack.__doc__, cls=RegistryHelpCommand)(attack)


# Flags that every grid-engine command (grid, bench-defenses) takes, defined once.
OutOpt = Annotated[str, typer.Option("--out", help="Run folder: grid.json, cells/<id>/ (result.json, scores.tsv), report/.")]
CacheOpt = Annotated[Optional[str], typer.Option("--cache", help="Folder of cached stage outputs (default: $MIARS_CACHE/stages or ~/.cache/miars/stages).")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Keep stage outputs only for this run (in a temporary folder); nothing to resume from.")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="Local worker processes (default: cores // threads).")]
ThreadsOpt = Annotated[int, typer.Option("--threads", help="Torch/BLAS threads per worker (workers x threads <= cores).")]
SchedulerOpt = Annotated[Optional[str], typer.Option("--scheduler", help="Run on an existing dask.distributed scheduler, e.g. tcp://HOST:8786 (workers must share --cache).")]
DaskLocalOpt = Annotated[Optional[int], typer.Option("--dask-local", help="Start a local dask.distributed cluster of N workers.")]
NoReportOpt = Annotated[bool, typer.Option("--no-report", help="Do not write RUN_DIR/report/ at the end.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Write into an --out folder that is not empty and not a run folder of this command (miars replaces only the files it writes).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help=DEVICE_HELP + " (default: auto)")]
GridDeviceOpt = Annotated[Optional[str], typer.Option("--device", help=DEVICE_HELP + " (TOML key device; default: auto)")]
MaxCellsOpt = Annotated[Optional[int], typer.Option("--max-cells", help="Refuse a grid of more cells than this, before any work (default: 2,000; TOML key max_cells): a typo in a list must not start days of computing.")]

def grid(
    config_file: Optional[str] = typer.Option(None, "--config", help="TOML file with the grid (keys: the flags' names with underscores); flags override it."),
    dataset: Optional[List[str]] = typer.Option(None, "--dataset", help="Datasets or files, comma-separated (default: ml-100k)."),
    shadow_dataset: Optional[List[str]] = typer.Option(None, "--shadow-dataset", help="Datasets to take the shadow part from (dataset transfer) (default: the target's)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Folder holding the datasets' original files."),
    download: bool = typer.Option(False, "--download", help="Download missing official datasets into ~/.cache/miars."),
    user_attributes: Optional[str] = typer.Option(None, "--user-attributes", help=USER_ATTRIBUTES_HELP + " (TOML key user_attributes)"),
    target: Optional[List[str]] = typer.Option(None, "--target", help="Target recommenders, comma-separated (default: item); installed: {installed:recommender}."),
    shadow: Optional[List[str]] = typer.Option(None, "--shadow", help="Shadow recommenders, crossed with the targets (default: each target's own)."),
    featurizer: Optional[List[str]] = typer.Option(None, "--featurizer", help="Featurizers (default: center-diff); installed: {installed:featurizer}."),
    attack_model: Optional[List[str]] = typer.Option(None, "--attack", help="Attack models (default: mlp); installed: {installed:attack}."),
    defense: Optional[List[str]] = typer.Option(None, "--defense", help="Defenses, `none` for no defense (default: none); installed: {installed:defense}."),
    defense_param: Optional[List[str]] = typer.Option(None, "--defense-param", help="[DEFENSE.]KEY=V1,V2,... values to sweep (repeatable)."),
    service: Optional[List[str]] = typer.Option(None, "--service", help="Service models for non-members, comma-separated: popular (the paper's), foldin (default: popular); installed: {installed:service}."),
    service_param: Optional[List[str]] = typer.Option(None, "--service-param", help="[NAME.]KEY=VALUE for service models."),
    target_param: Optional[List[str]] = typer.Option(None, "--target-param", help="[NAME.]KEY=VALUE for target recommenders (repeatable)."),
    shadow_param: Optional[List[str]] = typer.Option(None, "--shadow-param", help="[NAME.]KEY=VALUE for shadow recommenders (repeatable)."),
    featurizer_param: Optional[List[str]] = typer.Option(None, "--featurizer-param", help="[NAME.]KEY=VALUE for featurizers."),
    attack_param: Optional[List[str]] = typer.Option(None, "--attack-param", help="[NAME.]KEY=VALUE for attack models."),
    top_k: Optional[List[str]] = typer.Option(None, "--top-k", help="List lengths, comma-separated (default: 100)."),
    seed: Optional[List[str]] = typer.Option(None, "--seed", help="Master seeds, comma-separated, e.g. 0,1,2 (default: 0)."),
    split: Optional[str] = typer.Option(None, help="interactions (the paper's) or users."),
    min_interactions: Optional[int] = typer.Option(None, "--min-interactions", help="Shadow/target users with fewer interactions are dropped (default: 20)."),
    query_budget: Optional[int] = typer.Option(None, "--query-budget", help="Queries per target user, on average, an attack with query access may ask: budget x target users in all (default: 5); >= 1 for query attacks."),
    shadow_lengths: Optional[str] = typer.Option(None, "--shadow-lengths", help="Train the shadow recommender once per training length and train the attack on the shadow features of every length (labels repeated), for a target whose length is unknown: auto (the shadow's own length x 0.5, 1, 2) or epochs, comma-separated, e.g. 4,8,16; a recommender with an epochs parameter and an attack trained on features (mlp ...) only (one value for every cell; TOML key shadow_lengths: \"auto\" or a list; default: one shadow)."),
    utility_holdout: Optional[float] = typer.Option(None, "--utility-holdout", help="Share of every shadow and target user's interactions held out as her future: never trained on nor shown to the adversary; the target members' future scores utility (default: 0)."),
    controls: bool = typer.Option(False, "--controls", help="Add the control recommenders random (random unknown items) and pop (popular items) as targets, reported beside the real ones."),
    out: OutOpt = ...,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = 1,
    scheduler: SchedulerOpt = None,
    dask_local: DaskLocalOpt = None,
    no_report: NoReportOpt = False,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    max_cells: MaxCellsOpt = None,
    device: GridDeviceOpt = None,
) -> None:
    """Run a grid of attack cells (cached, resumable), then write tables, plots and report.html."""
    with guarded():
        from . import api

        spec, max_cells = api.grid_spec(
            config=config_file, dataset=dataset, shadow_dataset=shadow_dataset, data_dir=data_dir, download=download,
            target=target, shadow=shadow, featurizer=featurizer, attack=attack_model, defense=defense,
            defense_param=defense_param, service=service, service_param=service_param, target_param=target_param,
            shadow_param=shadow_param, featurizer_param=featurizer_param, attack_param=attack_param, top_k=top_k,
            seed=seed, split=split, min_interactions=min_interactions, query_budget=query_budget,
            utility_holdout=utility_holdout, controls=controls, max_cells=max_cells, device=device,
            user_attributes=user_attributes, shadow_lengths=shadow_lengths)
        _run_grid(spec, out, cache, no_cache, workers, threads, scheduler, dask_local, not no_report, quiet,
                  max_cells, command="grid", force=force)


def _run_grid(spec, out, cache, no_cache, workers, threads, scheduler, dask_local, report, quiet, max_cells=None,
              skippable=None, command: str = "grid", force: bool = False, notes: list[str] | None = None) -> None:
    """:func:`miars_core.api.run_grid` (every check, the run, the report), then exit 1 when cells failed."""
    from .api import run_grid
    from .engine.run import FAILED_EXIT

    run = run_grid(spec, out, cache, no_cache, workers, threads, scheduler, dask_local, report, quiet, max_cells,
                   skippable, command=command, force=force, notes=notes, note=_echo_note)
    if run.failed:
        first_id, first = next(iter(sorted(run.failed.items())))
        if debugging():  # the first failed cell's traceback (every cell's is in its error.json)
            _echo_traceback(_cell_traceback(run.run_dir / "cells" / first_id))
        _fail(f"{len(run.failed)} of {len(run.cells)} cells failed (first: {first}); "
              f"see {run.run_dir}/cells/{first_id}/error.json", FAILED_EXIT)


app.command("grid", help=grid.__doc__, cls=RegistryHelpCommand)(grid)


@app.command("bench-defenses", cls=RegistryHelpCommand)
def bench_defenses(
    dataset: Optional[List[str]] = typer.Option(None, "--dataset", help="Datasets or files, comma-separated (default: ml-100k)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Folder holding the datasets' original files."),
    user_attributes: Optional[str] = typer.Option(None, "--user-attributes", help=USER_ATTRIBUTES_HELP),
    target: Optional[List[str]] = typer.Option(None, "--target", help="Recommenders (each is its own shadow) (default: item,lfm,ncf); installed: {installed:recommender}."),
    defense: Optional[List[str]] = typer.Option(None, "--defense", help="Defenses to benchmark (default: every registered defense); `none` is always included; installed: {installed:defense}."),
    defense_param: Optional[List[str]] = typer.Option(None, "--defense-param", help="[DEFENSE.]KEY=V1,V2 replaces that defense's documented sweep of KEY."),
    target_param: Optional[List[str]] = typer.Option(None, "--target-param", help="[NAME.]KEY=VALUE for the recommenders (target and shadow)."),
    attack_model: Optional[List[str]] = typer.Option(None, "--attack", help="Attacks, comma-separated (default: mlp); installed: {installed:attack}."),
    attack_param: Optional[List[str]] = typer.Option(None, "--attack-param", help="[NAME.]KEY=VALUE for the attack model."),
    service: Optional[List[str]] = typer.Option(None, "--service", help="Service models, comma-separated: popular (the paper's), foldin (default: popular); installed: {installed:service}."),
    query_budget: int = typer.Option(5, "--query-budget", help="Queries per target user, on average, an attack with query access may ask: budget x target users in all; >= 1 for query attacks."),
    shadow_lengths: Optional[str] = typer.Option(None, "--shadow-lengths", help="Train the shadow recommender once per training length and train the attack on the shadow features of every length (labels repeated), for a target whose length is unknown: auto (the shadow's own length x 0.5, 1, 2) or epochs, comma-separated, e.g. 4,8,16; a recommender with an epochs parameter and an attack trained on features (mlp ...) only (default: one shadow)."),
    top_k: Optional[List[str]] = typer.Option(None, "--top-k", help="List lengths (default: 100)."),
    seed: Optional[List[str]] = typer.Option(None, "--seed", help="Master seeds, e.g. 0,1,2 (default: 0,1,2)."),
    utility_holdout: float = typer.Option(0.2, "--utility-holdout", help="Share of every shadow and target user's interactions held out as her future: never trained on nor shown to the adversary; the target members' future scores utility."),
    controls: bool = typer.Option(False, "--controls", help="Add the control recommenders random and pop as targets (each its own shadow), crossed with the defenses like any target."),
    out: OutOpt = ...,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = 1,
    scheduler: SchedulerOpt = None,
    dask_local: DaskLocalOpt = None,
    no_report: NoReportOpt = False,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    max_cells: MaxCellsOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Benchmark defenses: privacy for a static and an adaptive attacker, utility and cost, with a privacy-utility frontier."""
    with guarded():
        from . import api

        spec, skippable, notes = api.bench_spec(
            dataset=dataset, data_dir=data_dir, target=target, defense=defense, defense_param=defense_param,
            target_param=target_param, attack=attack_model, attack_param=attack_param, service=service,
            query_budget=query_budget, top_k=top_k, seed=seed, utility_holdout=utility_holdout, controls=controls,
            device=device, user_attributes=user_attributes, shadow_lengths=shadow_lengths)
        _run_grid(spec, out, cache, no_cache, workers, threads, scheduler, dask_local, not no_report, quiet,
                  max_cells, skippable, command="bench-defenses", force=force, notes=notes)


def _cell_traceback(cell_dir: Path) -> str:
    """The traceback a failed cell's error.json holds ("" when it cannot be read)."""
    try:
        record = json.loads((Path(cell_dir) / "error.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(record.get("traceback") or "") if isinstance(record, dict) else ""


@app.command("audit-dp")
def audit_dp(
    dataset: str = typer.Option("ml-100k", "--dataset", help="Dataset name or path of an interactions file."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Folder holding the dataset's original file."),
    target: str = typer.Option(..., "--target", help="Recommender the defense wraps, e.g. item (dp-itemknn), lfm or ncf (dp-sgd)."),
    target_param: Optional[List[str]] = typer.Option(None, "--target-param", help="KEY=VALUE for the recommender (repeatable)."),
    defense: str = typer.Option(..., "--defense", help="Training defense that reports privacy_ (`miars list defense`)."),
    defense_param: Optional[List[str]] = typer.Option(None, "--defense-param", help="KEY=VALUE for the defense (repeatable), e.g. epsilon=1."),
    canaries: int = typer.Option(200, "--canaries", help="Canaries, each in the training data with probability 1/2 (2 canary items each)."),
    guesses: Optional[int] = typer.Option(None, "--guesses", help="Guesses: half 'in' (highest scores), half 'out' (default: canaries / 2)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the canaries, the fit and the guesses' tie-breaks."),
    out: str = typer.Option(..., "--out", help="Folder to write audit.json into."),
    cache: Optional[str] = typer.Option(None, "--cache", help="Folder of cached stage outputs (default: $MIARS_CACHE/stages or ~/.cache/miars/stages); keeps the canaries' scores."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Fit afresh and store nothing."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress messages."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Audit a training defense's DP claim: a 95% lower bound on epsilon from canaries in one run (Steinke et al., NeurIPS 2023)."""
    with guarded():
        from rich.console import Console

        from . import api
        from .engine.audit import verdict_line

        run = api.audit_dp(dataset=dataset, data_dir=data_dir, target=target, target_param=target_param, defense=defense,
                           defense_param=defense_param, canaries=canaries, guesses=guesses, seed=seed, out=out,
                           cache=cache, no_cache=no_cache, quiet=quiet, device=device)
        Console(stderr=True, quiet=quiet).print(f"wrote {run.paths['audit.json']}")
        typer.echo(verdict_line(run.record))


@app.command("report")
def report_command(
    run_dir: str = typer.Argument(..., metavar="RUN_DIR", help="Folder written by `miars grid --out` (or `miars-attack --out`)."),
    force: bool = typer.Option(False, "--force", help="Write RUN_DIR/report/ even where it holds files miars did not write (they are replaced)."),
) -> None:
    """Write RUN_DIR/report/: tables (markdown, CSV) with Student-t 95% CIs over seeds, heatmaps, ROC curves, report.html."""
    from . import api
    from .engine.rundir import display

    with guarded():
        path = api.report(run_dir, force=force).report
        write_stdout(f"wrote {display(path)}", "the report's path", f"; the report was written to {display(path)}")


@app.command("new-plugin")
def new_plugin_command(
    name: str = typer.Argument(..., metavar="NAME", help="Distribution name of the plugin, e.g. miars-ease (its module: miars_ease)."),
    kind: Optional[List[str]] = typer.Option(None, "--kind", help="Components to write, comma-separated (default: recommender): recommender, defense, data-defense, training-defense, attack, list-attack, query-attack, service, featurizer, dataset."),
    out: Optional[str] = typer.Option(None, "--out", help="Folder to write NAME/ into (default: the current folder); NAME/ must not exist."),
) -> None:
    """Write an installable plugin package NAME/: pyproject.toml (the miars entry point), one module per component from working templates, tests that run the conformance checks, a README."""
    with guarded():
        from .scaffold import new_plugin

        path = new_plugin(name, kind, _expand(out))
        write_stdout(f"wrote {path}; next: cd {path} && pip install -e '.[test]' && pytest", "the new plugin's path",
                     f"; the plugin was written to {path}")


@app.command("plugins")
def plugins_command(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List installed plugins: name, version, hooks, what each provides, load status."""
    with guarded():
        _plugins(as_json)


def _plugins(as_json: bool) -> None:
    from dataclasses import asdict

    from .contracts.plugins import get_plugins

    rows = [asdict(info) for _, info in sorted(get_plugins().info.items())]
    if as_json:
        write_stdout(json.dumps(rows, indent=2), "the plugin list")
        return
    from rich.table import Table

    table = Table(title="miars plugins")
    for col in ("name", "version", "status", "hooks", "provides"):
        table.add_column(col, overflow="fold")
    for r in rows:
        provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(r["provides"].items()))
        table.add_row(r["name"], r["version"], r["status"], ", ".join(r["hooks"]), provides)
    write_stdout(table, "the plugin list")


@app.command("list")
def list_command(
    kind: str = typer.Argument(..., help=f"One of: {', '.join(KINDS)}."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the components of one kind: name, owning plugin, summary."""
    with guarded():
        _list(kind, as_json)


def _list(kind: str, as_json: bool) -> None:
    from .contracts.plugins import get_plugins

    kinds = {k: k for k in KINDS} | {k + "s": k for k in KINDS}
    if kind not in kinds:
        raise MiarsError(f"unknown kind {kind!r}; choose from: {', '.join(KINDS)}")
    registry = get_plugins().registry(kinds[kind])
    rows = [{"name": e.name, "plugin": e.plugin, "summary": e.summary} for e in map(registry.get, registry.names())]
    rows += [{"name": f"{p}:<Name>", "plugin": ns.plugin, "summary": f"any of: {', '.join(_safe_choices(ns))}"}
             for p, ns in sorted(registry.namespaces.items())]
    if as_json:
        write_stdout(json.dumps(rows, indent=2), f"the list of {kinds[kind]}s")
        return
    from rich.table import Table

    table = Table(title=f"miars {kinds[kind]}s")
    for col in ("name", "plugin", "summary"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["plugin"], r["summary"])
    write_stdout(table, f"the list of {kinds[kind]}s")


def _safe_choices(ns) -> list[str]:
    try:
        return list(ns.choices())
    except Exception:  # noqa: BLE001
        return []


def attack_main() -> None:
    """Entry point of ``miars-attack``: the ``attack`` command on its own."""
    _attack_app()(prog_name="miars-attack")


def _attack_app():
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    single.command(help=attack.__doc__, cls=OneLineCommand)(attack)
    return single


def main() -> None:  # python -m miars_core
    app(prog_name="miars")


if __name__ == "__main__":
    sys.exit(main())

