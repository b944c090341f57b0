"""The functions the client submits to Dask workers, in a module that imports nothing.

A Dask scheduler unpickles each graph it is sent, and so imports the module of every task's function: had the
tasks been ``cluster_worker``'s own functions, a scheduler's first grading would import torch, nbconvert and the
rest, seconds on its event loop during which it hands no worker anything (``benchmarks/bench_dask.py``'s check
of fresh workers). The workers import ``cluster_worker`` at their first task (or their preload), never the
scheduler.
"""

from __future__ import annotations


def check_worker(wanted: dict, start_kernel: bool = False) -> str:
    """``cluster_worker.check_worker``."""
    from .cluster_worker import check_worker

    return check_worker(wanted, start_kernel)


def grade_on_worker(submitted: bytes, limits: dict, wanted: dict, job, page: bool) -> dict:
    """``cluster_worker.grade_on_worker``."""
    from .cluster_worker import grade_on_worker

    return grade_on_worker(submitted, limits, wanted, job, page)
