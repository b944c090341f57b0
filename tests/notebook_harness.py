"""Judge a source notebook's tests in-process, optionally with a wrong implementation patched in.

The notebook's probes run here (with its solution cells, plus the patch) and the judge scores
their records, exactly as ``int8lab grade`` does with a student's kernel, without starting one.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

from int8lab.grading.selfcheck import judge_in_process

ROOT = Path(__file__).resolve().parents[1]
#: Every assignment: one folder of solutions/ holding one notebook.
SOURCES = {path.parent.name: path for path in sorted((ROOT / "solutions").glob("*/*.ipynb"))}


def run_tests(assignment: str, patch: str = "", after: str | None = None) -> dict[str, str | None]:
    """``{grade_id: None if the judge passed the test else its message}``.

    ``patch`` runs right after the cell whose grade_id is ``after`` (a solution cell), replacing
    part of the solution the way a student's different code would.
    """
    source = nbformat.read(SOURCES[assignment], as_version=4)
    verdicts = judge_in_process(source, patch, after)
    return {grade_id: verdict.message or None for grade_id, verdict in verdicts.items()}


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
