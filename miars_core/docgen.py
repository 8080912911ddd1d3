"""Reference pages generated from the code, so the docs site cannot go stale.

``cli_reference()`` renders every command of the ``miars`` typer app (usage, help, each
option with its default) as markdown; ``hook_reference()`` renders every hook specification in
:mod:`miars_core.contracts.hookspecs`. ``docs/_hooks/reference.py`` (an mkdocs hook) puts them into
``docs/cli.md`` and ``docs/hooks.md`` where those pages hold the markers below, at build time.
``python -m miars_core.docgen cli`` prints the CLI reference.
"""

from __future__ import annotations

import inspect
import re
import sys

CLI_MARKER = "<!-- miars:cli-reference -->"
HOOK_MARKER = "<!-- miars:hook-reference -->"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _commands():
    """(name, click command, context) for every ``miars`` subcommand, in the app's order."""
    from typer.main import get_command

    from . import cli

    group = get_command(cli.app)
    context_class = type(group).context_class
    ctx = context_class(group, info_name="miars")
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or getattr(command, "hidden", False):
            continue
        yield name, command, context_class(command, info_name=name, parent=ctx)


def cli_options(name: str) -> list[str]:
    """Every option flag of ``miars NAME`` (e.g. ``--top-k``, ``-q``), as the help shows them."""
    for cname, command, ctx in _commands():
        if cname == name:
            flags = []
            for p in command.get_params(ctx):
                if p.param_type_name == "option":
                    flags += list(p.opts) + list(p.secondary_opts)
            return flags
    raise KeyError(name)


def command_names() -> list[str]:
    return [name for name, _, _ in _commands()]


def cli_reference() -> str:
    """Markdown for every ``miars`` command: usage, description, arguments and options."""
    out = []
    for name, command, ctx in _commands():
        pieces = [re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), p) for p in command.collect_usage_pieces(ctx)]
        out += [f"## `miars {name}`", "", "```text", f"miars {name} {' '.join(pieces)}".rstrip(), "```", ""]
        help_text = inspect.cleandoc(command.help or "")
        if help_text:
            out += [help_text, ""]
        rows = []
        for p in command.get_params(ctx):
            record = p.get_help_record(ctx)
            if record is None:
                continue
            decl, text = record
            kind = "argument" if p.param_type_name == "argument" else "option"
            rows.append(f"| `{_cell(decl)}` | {kind} | {_cell(text)} |")
        if rows:
            out += ["| name | kind | meaning |", "|---|---|---|", *rows, ""]
    return "\n".join(out)


def hook_specs() -> list[tuple[str, object]]:
    """(name, function) of every hook specification, in source order."""
    from .contracts import hookspecs

    marker = f"{hookspecs.PROJECT_NAME}_spec"
    specs = [(n, f) for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, marker)]
    return sorted(specs, key=lambda nf: inspect.getsourcelines(nf[1])[1])


def hook_reference() -> str:
    """Markdown for every hook: its signature and what it is for (from hookspecs.py)."""
    out = []
    for name, fn in hook_specs():
        sig = str(inspect.signature(fn)).replace("'", "")
        out += [f"### `{name}`", "", "```python", f"@hookimpl", f"def {name}{sig}: ...", "```", "",
                inspect.cleandoc(fn.__doc__ or ""), ""]
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    what = sys.argv[1] if len(sys.argv) > 1 else "cli"
    print(cli_reference() if what == "cli" else hook_reference())
