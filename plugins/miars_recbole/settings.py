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


def for_device(device: str) -> dict:
    """RecBole's settings for a torch device (``cpu``, ``cuda:N``): :data:`FIXED`'s on the CPU.

    RecBole's own ``Config`` would ignore ``device``; ``compat`` makes it keep the one given here.
    """
    if device == "cpu":
        return {"device": "cpu", "use_gpu": False}
    return {"device": device, "use_gpu": True, "gpu_id": device.partition(":")[2] or "0"}
