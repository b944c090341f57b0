"""Print how long the three solution notebooks take to execute with a warm model cache.

    .venv/bin/python benchmarks/bench_notebooks.py

Target: 20 s in total on a 2-core machine. Each notebook runs in a fresh kernel, as in `make demo`.
"""

import tempfile
import time
from pathlib import Path

from int8lab import trained_model
from int8lab.demo import REPO_ROOT, execute_notebooks


def main():
    trained_model("digits", progress=False)  # warm the cache: the figure is for execution, not training
    trained_model("digits", bias=True, progress=False)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        execute_notebooks(REPO_ROOT / "solutions", Path(out), timings=timings)
    total = time.perf_counter() - started
    for notebook, seconds in timings.items():
        print(f"{notebook:<36}{seconds:6.1f} s")
    print(f"{'all three (warm cache)':<36}{total:6.1f} s   target <= 20 s")


if __name__ == "__main__":
    main()
