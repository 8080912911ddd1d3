"""mkdocs hook: fill the generated reference sections (CLI, hooks) from the code at build time."""

from miars_core.docgen import CLI_MARKER, HOOK_MARKER, cli_reference, hook_reference


def on_page_markdown(markdown, page, config, files):
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if HOOK_MARKER in markdown:
        markdown = markdown.replace(HOOK_MARKER, hook_reference())
    return markdown
