"""The RecBole plugin's training API for other plugins (``dp-sgd`` of ``miars_defenses`` trains with it).

These names are public: another plugin imports them from here, never from this plugin's inner
modules (``session``, ``lean``, ``foldin``, ``compat``), which may change (tests/test_layout.py checks it).
Importing it is cheap: torch and RecBole load only when a model is built.

- :func:`apply_compat`: RecBole 1.2.1's fixes for today's numpy, scipy and torch; call it before building a model.
- :func:`recbole_config`, :class:`LeanData`, :func:`build_model`: a RecBole model class over member rows and item
  columns, without data on disk.
- :class:`FittedRecBole`: a trained model plus its id maps; scores rows, recommends.
- :class:`FoldInModel`, :class:`ItemSide`: serving accounts the model was not trained on from its item side.
- :func:`fitted_state`, :func:`restore_fitted`: a :class:`FittedRecBole` as arrays plus a JSON record and back
  (the recommender state contract, :mod:`miars_core.contracts.state`); a model built with :func:`build_model`
  restores when its ``FittedRecBole`` carries ``build={"path": "lean", "model": ..., "overrides": ..., "seed": ...}``.
"""

from .compat import apply as apply_compat
from .foldin import FoldInModel, ItemSide
from .lean import LeanData, build_model, recbole_config
from .session import FittedRecBole
from .state import fitted_state, restore_fitted

__all__ = ["FittedRecBole", "FoldInModel", "ItemSide", "LeanData", "apply_compat", "build_model", "fitted_state",
           "recbole_config", "restore_fitted"]
