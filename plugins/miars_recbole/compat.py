"""Make RecBole 1.2.1 run on numpy 2, pandas 3, torch >= 2.6 and setuptools >= 81, side-effect free.

Each patch answers one known failure (see docs/recbole.md); none edits site-packages:
- numpy 2 removed ``np.float_``, ``np.complex_``, ``np.unicode_``: alias them before RecBole loads;
- pandas 3 copy-on-write makes ``Dataset._fill_nan`` a no-op: replace it with assignments;
- RecBole's ``Config`` parses ``sys.argv``: make it read nothing from the command line;
- trainers open ``./log_tensorboard/``: hand them a writer that writes nothing;
- scipy >= 1.13 removed ``dok_matrix._update`` (LightGCN, NGCF, NCL, GCMC, SpectralCF build their
  adjacency matrix with it): give it back as a plain dict update of the matrix's entries;
- DGCF samples ``max(users, items) / batches`` ids *of each kind* without replacement, which fails
  ("Sample larger than population") when a member part has fewer users than that: cap the sample
  at the population of each kind;
- ``Config`` ignores the ``device`` it is given (it picks ``cuda`` whenever torch sees a GPU) and
  writes ``gpu_id`` ('0' by default) into ``CUDA_VISIBLE_DEVICES`` of the whole process: use the
  ``device`` miars passes (``--device``) and leave the environment alone.
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
    configurator.Config._init_device = _init_device
    rb_utils.get_tensorboard = lambda logger: _NullWriter()
    rb_trainer.get_tensorboard = lambda logger: _NullWriter()
    rb_dataset.Dataset._fill_nan = _fill_nan
    import scipy.sparse as sp

    if not hasattr(sp.dok_matrix, "_update"):
        sp.dok_matrix._update = _dok_update
    import recbole.model.general_recommender.dgcf as rb_dgcf

    rb_dgcf.sample_cor_samples = _sample_cor_samples
    import torch

    # RecBole's sine.py calls torch.autograd.set_detect_anomaly(True) when its package is imported (any
    # sequential model imports it): every backward pass in the process then runs checked, slower, and a NaN
    # raises torch's RuntimeError before miars' own one-line check. Imported here once, the switch restored.
    anomaly = torch.is_anomaly_enabled()
    import recbole.model.sequential_recommender  # noqa: F401

    torch.autograd.set_detect_anomaly(anomaly)
    logging.getLogger("recbole").setLevel(logging.WARNING)
    _applied = True


def _init_device(self) -> None:
    """``Config``'s device: the ``device`` setting as given (miars sets it), never an environment variable."""
    import torch

    cfg = self.final_config_dict
    gpu_id = cfg.get("gpu_id", "")
    cfg["gpu_id"] = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id)
    cfg["single_spec"] = True
    cfg["local_rank"] = 0
    cfg["device"] = torch.device(str(cfg.get("device") or "cpu"))


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


def _dok_update(self, data: dict) -> None:
    """The removed ``dok_matrix._update``: set many ``(row, col) -> value`` entries at once, unchecked."""
    store = getattr(self, "_dict", None)
    if store is None:  # an older scipy whose dok_matrix is the dict itself
        dict.update(self, data)
    else:
        store.update({(int(r), int(c)): v for (r, c), v in data.items()})


def _sample_cor_samples(n_users: int, n_items: int, cor_batch_size: int):
    """DGCF's id sample for its correlation loss, at most the whole population of each kind."""
    import random

    users = random.sample(range(n_users), min(int(cor_batch_size), n_users))
    items = random.sample(range(n_items), min(int(cor_batch_size), n_items))
    size = min(len(users), len(items))  # DGCF pairs them up: equal lengths
    return users[:size], items[:size]
