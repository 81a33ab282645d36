#!/usr/bin/env python
"""Moved to ``scripts/bench/compiled.py`` (part of the benchmark suite, ``scripts/bench/run.py``); this
path keeps working with the same arguments."""

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.argv[0] = str(Path(__file__).resolve().parent / "bench" / "compiled.py")
    runpy.run_path(sys.argv[0], run_name="__main__")
