"""RecBole settings every model of this plugin is built with (both data paths: RecBole's trainer and the lean one).

A leaf module: ``session`` and ``lean`` both read it, so neither imports the other for it.
"""

FIXED = {
    # Everything in memory, nothing written to the working directory, no evaluation split.
    "eval_args": {"split": {"RS": [1.0, 0.0, 0.0]}, "order": "RO", "group_by": "user", "mode": "full"},
    "load_col": {"inter": ["user_id", "item_id"]},
    "reproducibility": True,
    "show_progress": False,
    "device": "cpu",
    "use_gpu": False,
    "state": "WARNING",
    "save_dataset": False,
    "save_dataloaders": False,
    "worker": 0,
}
