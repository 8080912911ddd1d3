"""miars-example-plugin: a user-based kNN recommender and two defenses (popular-mix on lists, popular-blur on data).

miars loads this module through the ``miars`` entry point declared in ``pyproject.toml``
and calls the hook implementations below. Keep this module light: heavy imports belong
inside component methods, since every ``miars`` command imports every plugin.
"""

from __future__ import annotations

from miars_core.contracts.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_recommenders(register):
    from .userknn import UserKNN

    register("userknn", UserKNN)


@hookimpl
def register_defenses(register):
    from .popular_mix import PopularMix

    from .popular_blur import PopularBlur

    register("popular-mix", PopularMix)
    register("popular-blur", PopularBlur)
