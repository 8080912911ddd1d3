"""mkdocs hook: fill the generated reference sections (CLI, hooks) from the code at build time, and
render every notebook of docs/notebooks/ as a page (notebooks/NAME.md) beside the .ipynb itself."""

from pathlib import PurePosixPath

from miars_core.docgen import CLI_MARKER, HOOK_MARKER, cli_reference, hook_reference, notebook_markdown, read_notebook


def on_files(files, config):
    from mkdocs.structure.files import File

    for file in list(files):
        path = PurePosixPath(file.src_uri)
        if path.suffix == ".ipynb" and path.parts[0] == "notebooks":
            page = str(path.with_suffix(".md"))
            text = notebook_markdown(read_notebook(file.abs_src_path), download=path.name)
            files.append(File.generated(config, page, content=text))
    return files


def on_page_markdown(markdown, page, config, files):
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if HOOK_MARKER in markdown:
        markdown = markdown.replace(HOOK_MARKER, hook_reference())
    return markdown
