"""Placeholder, replaced below."""
import typer
app = typer.Typer()
def attack_main():
    pass
