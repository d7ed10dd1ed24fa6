"""Execute the tutorials in place with their full settings, so the committed notebooks carry outputs.

The docs render these committed outputs (nothing is executed at documentation build time); the test
suite runs every tutorial separately with tiny settings (``CALMFLOW_TUTORIAL_QUICK=1``).

Run: ``python tutorials/execute.py [NAME.ipynb ...]`` (``make tutorials``); the real data file is read
from ``CALMFLOW_DATA`` or ``../shared/data/``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent
TIMEOUT_PER_CELL = 1800


def execute(path: Path) -> float:
    """Execute one notebook in its own folder and write it back with its outputs; return seconds."""
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    client = nbclient.NotebookClient(
        nb, timeout=TIMEOUT_PER_CELL, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="notebooks to run (default: every tutorial)")
    args = parser.parse_args(argv)
    os.environ.pop("CALMFLOW_TUTORIAL_QUICK", None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    names = args.names or sorted(p.name for p in HERE.glob("[0-9]*.ipynb"))
    for name in names:
        seconds = execute(HERE / name)
        print(f"{name}: executed in {seconds:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
