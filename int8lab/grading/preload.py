"""A Dask worker that is ready to grade when it starts: ``dask worker SCHEDULER --nthreads 1 --preload
int8lab.grading.preload``.

Without it, a worker's first grading waits for what every worker process does once: its fork server's start
(torch, numpy, matplotlib and int8lab imported; ``forkserver.py``) and its check kernel, and its judge process's
imports and first page (nbgrader's imports, the templates' compilation). The preload starts both when the worker
starts, in a thread of their own (the worker joins its scheduler meanwhile). What stays for each grading is what
depends on it: the judge's self-check on the grading's assignments and a kernel's smoke test (``check_worker``).
``int8lab grade --dask local`` starts its LocalCluster's workers with it, while it reads and checks the course.
"""

from __future__ import annotations

import threading

_ready = threading.Event()


def dask_setup(worker) -> None:
    """Dask's preload hook: start the judge process and the fork server, without waiting for them."""
    threading.Thread(target=_warm, name="int8lab-preload", daemon=True).start()


def _warm() -> None:
    from . import cluster_worker

    try:
        # The code this worker runs, read now: the check compares it with the client's, and an int8lab installed
        # anew after the worker started must not pass for the one it runs.
        cluster_worker.code_digest()
        cluster_worker.start_spare_judge()  # a process of its own: it imports while the fork server starts here
        cluster_worker._warm_kernels()  # never raises: a worker without warm kernels starts them from nothing
    finally:
        _ready.set()


def ready(timeout: float = 0.0) -> bool:
    """True once the preload has started the fork server (or found that it cannot); waits ``timeout`` s at most."""
    return _ready.wait(timeout)
