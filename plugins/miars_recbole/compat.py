"""Make RecBole 1.2.1 run on numpy 2, pandas 3, torch >= 2.6 and setuptools >= 81, side-effect free.

Each patch answers one known failure (see docs/recbole.md); none edits site-packages:
- numpy 2 removed ``np.float_``, ``np.complex_``, ``np.unicode_``: alias them before RecBole loads;
- pandas 3 copy-on-write makes ``Dataset._fill_nan`` a no-op: replace it with assignments;
- RecBole's ``Config`` parses ``sys.argv``: make it read nothing from the command line;
- trainers open ``./log_tensorboard/``: hand them a writer that writes nothing.
We never import ``recbole.quick_start`` (it imports ray, which needs pkg_resources), never call
``init_logger`` (it writes ``./log/``), and never save RecBole checkpoints (torch>=2.6 cannot reload
them with ``weights_only=True``); the checkpoint directory points at a temporary folder.
"""

from __future__ import annotations

import logging
import warnings

_applied = False


class _NullWriter:
    def add_scalar(self, *args, **kwargs):
        pass

    def add_hparams(self, *args, **kwargs):
        pass

    def close(self):
        pass


def apply() -> None:
    """Apply every patch once; safe to call many times."""
    global _applied
    if _applied:
        return
    import numpy as np

    for alias, target in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if not hasattr(np, alias):
            setattr(np, alias, target)
    warnings.filterwarnings("ignore", module=r"recbole(\.|$)")
    warnings.filterwarnings("ignore", message=r".*(weights_only|torch\.sparse|sparse CSR).*")

    import recbole.config.configurator as configurator
    import recbole.data.dataset.dataset as rb_dataset
    import recbole.trainer.trainer as rb_trainer
    import recbole.utils as rb_utils

    configurator.Config._load_cmd_line = lambda self: {}
    rb_utils.get_tensorboard = lambda logger: _NullWriter()
    rb_trainer.get_tensorboard = lambda logger: _NullWriter()
    rb_dataset.Dataset._fill_nan = _fill_nan
    logging.getLogger("recbole").setLevel(logging.WARNING)
    _applied = True


def _fill_nan(self) -> None:
    """Fill missing values by assignment (the original uses in-place fillna, a no-op under pandas 3)."""
    import numpy as np
    from recbole.utils import FeatureType

    for feat_name in self.feat_name_list:
        feat = getattr(self, feat_name)
        for field in feat:
            ftype = self.field2type[field]
            if ftype == FeatureType.TOKEN:
                feat[field] = feat[field].fillna(value=0)
            elif ftype == FeatureType.FLOAT:
                feat[field] = feat[field].fillna(value=feat[field].mean())
            else:
                dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                feat[field] = feat[field].apply(lambda x, d=dtype: np.array([], dtype=d) if isinstance(x, float) else x)
