"""Print how long each solution notebook takes to execute with a warm model cache.

    .venv/bin/python benchmarks/bench_notebooks.py

Targets on a 2-core machine: notebooks 01 to 03 within 20 s together, notebook 04 within 30 s,
notebook 05 within 60 s, notebook 06 within 30 s, notebook 07 within 60 s.
Each notebook runs in a fresh kernel, as in `make demo`; the times include the kernel's start.
"""

import tempfile
import time
from pathlib import Path

from int8lab import trained_model
from int8lab.demo import REPO_ROOT, execute_notebooks


def main():
    trained_model(progress=False)  # warm the cache: the figure is for execution, not training
    trained_model(bias=True, progress=False)
    trained_model(batch_norm=True, progress=False)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        execute_notebooks(REPO_ROOT / "solutions", Path(out), timings=timings)
    total = time.perf_counter() - started
    for notebook, seconds in timings.items():
        target = {
            "04": "   target <= 30 s",
            "05": "   target <= 60 s",
            "06": "   target <= 30 s",
            "07": "   target <= 60 s",
        }.get(notebook[:2], "")
        print(f"{notebook:<40}{seconds:6.1f} s{target}")
    first_three = sum(seconds for notebook, seconds in timings.items() if notebook[:2] in ("01", "02", "03"))
    print(f"{'notebooks 01-03 (warm cache)':<40}{first_three:6.1f} s   target <= 20 s")
    print(f"{'all notebooks, with the demo overhead':<40}{total:6.1f} s")


if __name__ == "__main__":
    main()
