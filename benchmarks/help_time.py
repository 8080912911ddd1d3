"""Wall time of ``import miars_core.cli``, ``miars --help`` and ``miars attack --help`` (each a new
process), for this checkout and, with ``--old-src DIR``, another checkout's ``miars_core``;
interleaved, the minimum of ``--rounds`` kept. Read the ratios, not the seconds.

    git archive main miars_core | tar -x -C /tmp/old
    python benchmarks/help_time.py --old-src /tmp/old
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "import miars_core.cli": ["-c", "import miars_core.cli"],
    "miars --help": ["-m", "miars_core", "--help"],
    "miars attack --help": ["-m", "miars_core", "attack", "--help"],
    "miars list service": ["-m", "miars_core", "list", "service"],
}


def _wall(args: list[str], src: str | None, cwd: str) -> float:
    env = {**os.environ, "COLUMNS": "200"}
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"help_time.py: {args} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-src", help="Folder holding another checkout's miars_core/ to compare with.")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    variants = {"this checkout": None} | ({"--old-src": args.old_src} if args.old_src else {})
    best = {(c, v): float("inf") for c in COMMANDS for v in variants}
    with tempfile.TemporaryDirectory() as cwd:  # not the repository root: `python -m` puts it first on sys.path
        for _ in range(args.rounds):
            for command, argv in COMMANDS.items():
                for variant, src in variants.items():
                    best[command, variant] = min(best[command, variant], _wall(argv, src, cwd))
    print(f"min of {args.rounds} (load average {os.getloadavg()[0]:.1f})\n")
    print("| command | " + " | ".join(f"{v} s" for v in variants) + (" | this / old |" if len(variants) > 1 else " |"))
    print("|---|" + "---:|" * (len(variants) + (len(variants) > 1)))
    for command in COMMANDS:
        times = [best[command, v] for v in variants]
        ratio = f" | {times[0] / times[1]:.2f}x" if len(times) > 1 else ""
        print(f"| `{command}` | " + " | ".join(f"{t:.2f}" for t in times) + ratio + " |")


if __name__ == "__main__":
    main()
