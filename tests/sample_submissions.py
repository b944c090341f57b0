"""Generate nbgrader-style submissions from the released notebooks, by filling the stubs.

Used by the autograder's tests and benchmark. The answers come from reading the source
notebooks in solutions/ at run time; nothing here is an answer itself.
"""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat

from notebook_harness import ROOT, SOURCES

ASSIGNMENTS = {assignment: source.name for assignment, source in SOURCES.items()}


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def released(assignment: str):
    return nbformat.read(ROOT / "notebooks" / assignment / ASSIGNMENTS[assignment], as_version=4)


def solution_sources(assignment: str) -> dict[str, str]:
    """grade_id -> the source of each solution cell, with the solution markers removed."""
    nb = nbformat.read(ROOT / "solutions" / assignment / ASSIGNMENTS[assignment], as_version=4)
    sources = {}
    for cell in nb.cells:
        if _meta(cell).get("solution"):
            lines = [line for line in cell.source.split("\n") if "### BEGIN SOLUTION" not in line]
            sources[_meta(cell)["grade_id"]] = "\n".join(line for line in lines if "### END SOLUTION" not in line)
    return sources


def submission(assignment: str, solved: bool = True, append: str = "", edit=None):
    """The released notebook with its stubs filled (``solved``), ``append`` added to the main solution cell,
    and ``edit(notebook)`` applied last (to delete or alter cells)."""
    nb = copy.deepcopy(released(assignment))
    answers = solution_sources(assignment) if solved else {}
    code_solutions = [c for c in nb.cells if _meta(c).get("solution") and c.cell_type == "code"]
    for cell in nb.cells:
        grade_id = _meta(cell).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id]
    if append:
        code_solutions[-1].source += "\n\n" + append
    if edit:
        edit(nb)
    return nb


def write_submission(root: Path, student: str, assignment: str, content) -> Path:
    """Write ``content`` (a notebook, raw bytes, or None for an empty folder) as a student's submission."""
    folder = root / student / assignment
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ASSIGNMENTS[assignment]
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        nbformat.write(content, path)
    return path


def graded_cells(nb):
    return [c for c in nb.cells if _meta(c).get("grade") and c.cell_type == "code"]


def autograded_points(assignment: str) -> float:
    return sum(float(_meta(c).get("points", 0)) for c in graded_cells(released(assignment)))
