"""Judge a source notebook's tests in-process, optionally with a wrong implementation patched in.

The notebook's probes run here (with its solution cells, plus the patch) and the judge scores
their records, exactly as ``int8lab grade`` does with a student's kernel, without starting one.
"""

from __future__ import annotations

import multiprocessing
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import nbformat

from int8lab.grading.selfcheck import judge_in_process

ROOT = Path(__file__).resolve().parents[1]
#: Every assignment: one folder of solutions/ holding one notebook.
SOURCES = {path.parent.name: path for path in sorted((ROOT / "solutions").glob("*/*.ipynb"))}


def run_tests(assignment: str, patch: str = "", after: str | tuple[str, ...] | None = None) -> dict[str, str | None]:
    """``{grade_id: None if the judge passed the test else its message}``.

    ``patch`` runs right after the cell whose grade_id is ``after`` (a solution cell), replacing
    part of the solution the way a student's different code would. A run that ``plan`` started in the
    second process is read from there (or taken back and run here, if that process has not reached it).
    """
    future = _PLANNED.pop((assignment, patch, after), None)
    if future is not None and not future.cancel():
        return future.result()
    return _run_here(assignment, patch, after)


def _run_here(assignment: str, patch: str, after) -> dict[str, str | None]:
    source = nbformat.read(SOURCES[assignment], as_version=4)
    verdicts = judge_in_process(source, patch, after)
    return {grade_id: verdict.message or None for grade_id, verdict in verdicts.items()}


def _run_quietly(assignment: str, patch: str, after) -> dict[str, str | None]:
    """``_run_here`` in the second process, whose warnings would reach the terminal: pytest does not capture it."""
    with warnings.catch_warnings(record=True):
        return _run_here(assignment, patch, after)


#: ``run_tests`` calls that ``plan`` handed to the second process, by their arguments.
_PLANNED: dict[tuple, Future] = {}
_executor: ProcessPoolExecutor | None = None


def plan(runs: list[tuple[str, str, str | tuple[str, ...] | None]]) -> None:
    """Start ``run_tests(*run)`` for each of ``runs`` in a second process, from the last to the first.

    Each run executes a whole notebook in one Python thread; the test session reaches them from the first,
    so the two processes meet in the middle and the second core does half of them.
    """
    global _executor
    if _executor is None:
        _executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    for run in reversed(runs):
        if run not in _PLANNED:
            _PLANNED[run] = _executor.submit(_run_quietly, *run)


def stop_planned() -> None:
    """Drop the runs not started and end the second process (the session ends)."""
    global _executor
    if _executor is not None:
        processes = list((getattr(_executor, "_processes", None) or {}).values())
        _executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.kill()
        _executor = None
    _PLANNED.clear()


def read_source(assignment: str):
    """The source notebook (solutions/) of ``assignment``."""
    return nbformat.read(SOURCES[assignment], as_version=4)


def source_notebook(*cells):
    """A source notebook from (kind, grade_id, source) triples: kind is setup, solution or test (2 points)."""
    nb = nbformat.v4.new_notebook()
    for kind, grade_id, source in cells:
        meta = {"grade_id": grade_id, "locked": kind != "solution", "solution": kind == "solution"}
        meta.update({"grade": kind == "test", "points": 2} if kind == "test" else {"grade": False})
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["nbgrader"] = meta
        nb.cells.append(cell)
    return nb
