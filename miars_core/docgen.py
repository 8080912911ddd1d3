"""Reference pages generated from the code, so the docs site cannot go stale.

``cli_reference()`` renders every command of the ``miars`` typer app (usage, help, each
option with its default) as markdown; ``hook_reference()`` renders every hook specification in
:mod:`miars_core.contracts.hookspecs` with the contract of every component it registers
(:mod:`miars_core.contracts.protocols`) and the check that enforces it. ``docs/_hooks/reference.py``
(an mkdocs hook) puts them into ``docs/cli.md`` and ``docs/hooks.md`` where those pages hold the
markers below, at build time, and renders the notebooks of ``docs/notebooks/`` as pages
(:func:`notebook_markdown`; :func:`run_notebook` runs one without a kernel, as the test suite does).
``python -m miars_core.docgen cli`` prints the CLI reference; ``python -m miars_core.docgen notebook
PATH`` runs a notebook and stores its outputs.
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
    from .cli import fill_help

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
            text = fill_help(text, names=lambda kind: "")  # the page is the same whatever is installed
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
    """Markdown for every hook (its signature and what it is for, from hookspecs.py) and the contract of every
    kind and variant of component it registers (:mod:`miars_core.contracts.protocols`), each with its check."""
    return contract_reference()


# ----------------------------------------------------------------------------- contracts (hooks.md)

CONTRACT_MARKER = "<!-- miars:contract-reference -->"
#: Protocol members that describe the contract itself, not what a component offers.
_META = ("hook", "selected_by", "check")
#: Checks of miars_core.kit.checks that no single contract names (helpers, or every kind at once).
CHECK_HELPERS = ("make_interactions", "reachable", "check_isolation", "as_factory")


def protocols() -> list[type]:
    """Every component contract (:data:`miars_core.contracts.protocols.PROTOCOLS`), in display order."""
    from .contracts.protocols import PROTOCOLS

    return list(PROTOCOLS)


def _unquote(text: str) -> str:
    return text.replace("'", "").replace('"', "")


def protocol_members(proto: type) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """``(attributes, methods)`` a protocol declares itself (not inherited): ``(name, signature or type, doc)``.

    Attribute docs are the ``#:`` comment lines above the attribute in the source (as Sphinx reads them).
    """
    import textwrap

    source = textwrap.dedent(inspect.getsource(proto))
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in source.splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        m = re.match(r"^    (\w+)\s*:", line)
        if m and pending:
            docs[m.group(1)] = " ".join(pending)
        if stripped:
            pending = []
    own = proto.__dict__
    annotations = own.get("__annotations__", {})
    attributes = [(name, _unquote(str(annotations[name])), docs.get(name, "")) for name in annotations
                  if name not in _META]
    methods = []
    for name, value in own.items():
        if inspect.isfunction(value) and not name.startswith("_"):
            sig = _unquote(str(inspect.signature(value)))
            methods.append((name, sig, inspect.cleandoc(value.__doc__ or "")))
    return attributes, methods


def check_function(proto: type):
    """The conformance check that enforces ``proto`` (a function of :mod:`miars_core.kit.checks`)."""
    from .kit import checks

    return getattr(checks, proto.check)


def _first_paragraph(doc: str) -> str:
    return _md(" ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split()))


def _md(text: str) -> str:
    """reStructuredText of docstrings as markdown: roles (``:mod:`x```) and double backticks become code spans."""
    text = re.sub(r":(?:mod|func|class|meth|data|attr):`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _bare_signature(fn) -> str:
    """``(factory, /, **params)``: a signature without annotations (a check's, for the reference)."""
    sig = inspect.signature(fn)
    return str(sig.replace(parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()],
                           return_annotation=inspect.Signature.empty))


def contract_problems(protos: list[type] | None = None) -> list[str]:
    """What keeps the contract reference from being complete (empty: complete): a hook without a docstring or
    without a contract, a kind of component without one, a contract, method or attribute without its doc, a
    check that does not exist, and a check of ``miars_core.kit.checks`` no contract names."""
    from .contracts.registry import KINDS
    from .kit import checks

    protos = protocols() if protos is None else protos
    problems = []
    hooks = {name for name, _ in hook_specs()}
    for name, fn in hook_specs():
        if not (fn.__doc__ or "").strip():
            problems.append(f"hook {name} has no docstring")
        if not any(p.hook == name for p in protos):
            problems.append(f"hook {name} has no contract in miars_core/contracts/protocols.py")
    for kind in KINDS:
        if not any(p.hook == f"register_{kind}s" for p in protos):
            problems.append(f"kind {kind} has no contract")
    named = set(CHECK_HELPERS)
    for proto in protos:
        who = f"contract {proto.__name__}"
        if not (proto.__doc__ or "").strip():
            problems.append(f"{who} has no docstring")
        if proto.hook and proto.hook not in hooks:
            problems.append(f"{who} names hook {proto.hook!r}, which does not exist")
        attributes, methods = protocol_members(proto)
        problems += [f"{who}: attribute {name} has no #: comment" for name, _, doc in attributes if not doc.strip()]
        problems += [f"{who}: method {name} has no docstring" for name, _, doc in methods if not doc.strip()]
        check = getattr(checks, proto.check, None)
        if check is None or proto.check not in checks.__all__:
            problems.append(f"{who} names check {proto.check!r}, which miars_core.kit.checks does not export")
        elif not (check.__doc__ or "").strip():
            problems.append(f"check {proto.check} has no docstring")
        named.add(proto.check)
    problems += [f"check {name} is named by no contract" for name in checks.__all__ if name not in named]
    return problems


def contract_reference() -> str:
    """Markdown for every hook and the contracts of the components it registers, each with its check."""
    specs = hook_specs()
    by_hook: dict[str, list[type]] = {}
    for proto in protocols():
        by_hook.setdefault(proto.hook, []).append(proto)
    out = ["| hook | component | selected by | enforced by |", "|---|---|---|---|"]
    for proto in protocols():
        hook = f"`{proto.hook}`" if proto.hook else "every hook"
        out.append(f"| {hook} | [{proto.__name__}](#{proto.__name__.lower()}) | {_cell(proto.selected_by)} | "
                   f"`checks.{proto.check}` |")
    out.append("")
    general = by_hook.pop("", [])
    for proto in general:
        out += _protocol_section(proto, level="###")
    for name, fn in specs:
        sig = _unquote(str(inspect.signature(fn)))
        out += [f"### `{name}`", "", "```python", "@hookimpl", f"def {name}{sig}: ...", "```", "",
                _md(inspect.cleandoc(fn.__doc__ or "")), ""]
        for proto in by_hook.get(name, []):
            out += _protocol_section(proto, level="####")
    return "\n".join(out)


def _protocol_section(proto: type, level: str) -> list[str]:
    attributes, methods = protocol_members(proto)
    bases = [b.__name__ for b in proto.__bases__ if b.__name__ not in ("Protocol", "Generic", "object")]
    doc = _md(inspect.cleandoc(proto.__doc__ or ""))
    out = [f"{level} {proto.__name__}", "",
           f"*{proto.selected_by}*" + (f"; everything of {', '.join(bases)}, and:" if bases else ""), "", doc, ""]
    lines = [f"class {proto.__name__}:"]
    for name, kind, _ in attributes:
        lines.append(f"    {name}: {kind}")
    for name, sig, _ in methods:
        lines.append(f"    def {name}{sig}: ...")
    if len(lines) > 1:
        out += ["```python", *lines, "```", ""]
        out += ["| member | contract |", "|---|---|"]
        out += [f"| `{name}` | {_cell(_md(text))} |" for name, _, text in attributes]
        out += [f"| `{name}()` | {_cell(_md(text))} |" for name, _, text in methods]
        out.append("")
    check = check_function(proto)
    out += [f"Enforced by `miars_core.kit.checks.{proto.check}{_bare_signature(check)}`: "
            f"{_md(' '.join(inspect.cleandoc(check.__doc__ or '').split()))}", ""]
    return out


# ----------------------------------------------------------------------------- notebooks

def read_notebook(path) -> dict:
    """A notebook file (nbformat 4) as a dict."""
    import json
    from pathlib import Path

    return json.loads(Path(path).read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def run_notebook(path, cwd=None) -> list[list[dict]]:
    """Run a notebook's code cells in order, in one namespace, without a kernel; return each code cell's outputs.

    What a kernel would show: printed text (a ``stream`` output) and the value of a cell's last
    expression (``execute_result``: HTML for pandas tables, PNG for matplotlib figures, and its
    ``repr``). An exception stops the run and names the cell. No IPython magics.
    """
    import ast
    import contextlib
    import io
    import os
    from pathlib import Path

    nb = read_notebook(path)
    namespace: dict = {"__name__": "__main__"}
    outputs: list[list[dict]] = []
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        for index, cell in enumerate(c for c in nb["cells"] if c.get("cell_type") == "code"):
            tree = ast.parse(_source(cell), filename=f"{path} code cell {index + 1}")
            last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(tree, f"{path} code cell {index + 1}", "exec"), namespace)
                value = eval(compile(ast.Expression(last.value), f"{path} code cell {index + 1}", "eval"),
                             namespace) if last is not None else None
            cell_out: list[dict] = []
            if printed.getvalue():
                cell_out.append({"output_type": "stream", "name": "stdout", "text": printed.getvalue()})
            if value is not None:
                cell_out.append({"output_type": "execute_result", "execution_count": index + 1, "metadata": {},
                                 "data": _mime(value)})
            outputs.append(cell_out)
    finally:
        os.chdir(old)
    return outputs


def _mime(value) -> dict:
    """A value as a notebook shows it: HTML (pandas), PNG (matplotlib figures), and text."""
    import base64
    import io

    data = {"text/plain": repr(value)}
    if type(value).__module__.startswith("matplotlib") and hasattr(value, "savefig"):
        buf = io.BytesIO()
        value.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(value)
        data["image/png"] = base64.b64encode(buf.getvalue()).decode("ascii")
        data["text/plain"] = f"<Figure of {type(value).__name__}>"
    elif hasattr(value, "_repr_html_"):
        html = value._repr_html_()
        if html:
            data["text/html"] = html
    return data


def store_outputs(path, outputs: list[list[dict]]) -> None:
    """Write ``outputs`` (from :func:`run_notebook`) into the notebook's code cells, with execution counts."""
    import json
    from pathlib import Path

    nb = read_notebook(path)
    code = [c for c in nb["cells"] if c.get("cell_type") == "code"]
    for i, (cell, out) in enumerate(zip(code, outputs)):
        cell["outputs"] = out
        cell["execution_count"] = i + 1
    Path(path).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def notebook_markdown(nb: dict, download: str = "") -> str:
    """A notebook as a markdown page: markdown cells as they are, code in python blocks, outputs below them."""
    out = []
    ran = any(c.get("outputs") for c in nb.get("cells", []) if c.get("cell_type") == "code")
    if download and ran:
        out += [f"[Download this notebook]({download}) (run it with Jupyter, or read it here with its outputs).", ""]
    elif download:
        out += [f"[Download this notebook]({download}) and run it with Jupyter. This page shows its code; its outputs "
                f"are not stored yet (`python -m miars_core.docgen notebook docs/notebooks/{download}` runs it and "
                "stores them).", ""]
    for cell in nb.get("cells", []):
        kind, text = cell.get("cell_type"), _source(cell)
        if kind == "markdown":
            out += [text, ""]
        elif kind == "code":
            out += ["```python", text.rstrip("\n"), "```", ""]
            for item in cell.get("outputs", []):
                out += _output_markdown(item)
    return "\n".join(out)


def _output_markdown(item: dict) -> list[str]:
    if item.get("output_type") == "stream":
        text = item.get("text", "")
        return ["```text", ("".join(text) if isinstance(text, list) else text).rstrip("\n"), "```", ""]
    data = item.get("data", {})
    if "image/png" in data:
        png = data["image/png"]
        png = "".join(png) if isinstance(png, list) else png
        return [f'<img alt="output" src="data:image/png;base64,{png.strip()}">', ""]
    if "text/html" in data:
        html = data["text/html"]
        return ['<div class="notebook-output">', "".join(html) if isinstance(html, list) else html,
                "</div>", ""]
    if "text/plain" in data:
        text = data["text/plain"]
        return ["```text", ("".join(text) if isinstance(text, list) else text).rstrip("\n"), "```", ""]
    return []


if __name__ == "__main__":  # pragma: no cover
    what = sys.argv[1] if len(sys.argv) > 1 else "cli"
    if what == "notebook":  # python -m miars_core.docgen notebook docs/notebooks/reproduce.ipynb: run it, keep its outputs
        for target in sys.argv[2:]:
            store_outputs(target, run_notebook(target))
            print(f"ran {target} and stored its outputs")
    else:
        print(cli_reference() if what == "cli" else hook_reference())
