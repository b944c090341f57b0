"""Collect the headline figures (accuracies, errors) of a run of the notebooks, for ``int8lab demo --json``."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

#: The environment variable naming the JSON file that notebooks add their results to.
RESULTS_ENV = "INT8LAB_RESULTS"


def record_result(key: str, value: float) -> None:
    """Add ``key: value`` (an accuracy in percent, or another figure of the run) to the file named by
    ``$INT8LAB_RESULTS``; do nothing when it is unset."""
    target = os.environ.get(RESULTS_ENV)
    if not target:
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(path.read_text()) if path.exists() and path.stat().st_size else {}
        results[key] = round(float(value), 6)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
