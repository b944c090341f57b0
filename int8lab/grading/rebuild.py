"""Rebuild: each submission around nbgrader's release, then the notebook the kernel runs, then the one OUT keeps.

1. ``rebuild_submission``: the release with the student's answers in it, whatever else changed;
2. ``probe_notebook``: that notebook with every test cell replaced by its probe (``testcells``);
3. ``graded_notebook``: after the run, the test cells shown as the release has them, each with
   the judge's verdict as its only output (what formgrader and the feedback display).
"""

from __future__ import annotations

import copy

import nbformat

from .testcells import TestCell, nbgrader_meta, probe_source

#: What the feedback shows in place of a demonstration cell that was not run.
SKIPPED_DEMO_NOTE = (
    "**Not run during grading.** This cell of the release only shows plots or numbers, and no test "
    "depends on it; it was skipped to grade faster. Run your notebook to see its output. Its code:"
)


def skipped_demo(cell):
    """A markdown cell that shows ``cell``'s source under ``SKIPPED_DEMO_NOTE``."""
    fence = "````" if "```" in cell.source else "```"
    return nbformat.v4.new_markdown_cell(f"{SKIPPED_DEMO_NOTE}\n\n{fence}python\n{cell.source}\n{fence}")


def rebuild_submission(student, release, skip_untouched_demos: bool = False) -> tuple[object, list[str]]:
    """The release notebook with the student's answers in it, whatever the student did to the rest.

    Solution cells come from the student (matched by grade id); every other nbgrader cell
    (setup, provided code, tests, instructions) comes from the release, in the release's
    order, even if the student deleted it, edited it or turned it into markdown. Cells the
    student added stay where they were, after the nbgrader cell they followed. With
    ``skip_untouched_demos``, the release's own plain code cells (plots, the study) that the
    student left as they were are not run: no test depends on them (tests/test_notebooks.py
    runs the tests without them), and they are about half of the execution time; a markdown
    cell shows each one's source with a note instead. Returns the notebook and notes on what
    had to be restored.
    """
    demos = (
        {c.source for c in release.cells if c.cell_type == "code" and not nbgrader_meta(c)}
        if skip_untouched_demos
        else set()
    )
    release_cells = {nbgrader_meta(c)["grade_id"]: c for c in release.cells if nbgrader_meta(c).get("grade_id")}
    answers: dict[str, object] = {}  # grade id -> the student's answer cell
    extras: dict[str | None, list] = {}
    seen: set[str] = set()
    anchor = None
    for cell in student.cells:
        grade_id = nbgrader_meta(cell).get("grade_id")
        if grade_id in release_cells:
            if grade_id not in seen:
                expected = release_cells[grade_id]
                if nbgrader_meta(expected).get("solution") and cell.cell_type == expected.cell_type:
                    answers[grade_id] = cell
                seen.add(grade_id)
            anchor = grade_id
            continue
        if cell.cell_type == "code" and cell.source in demos:
            extras.setdefault(anchor, []).append(skipped_demo(cell))
            continue
        own = copy.deepcopy(cell)
        own.metadata.pop("nbgrader", None)
        if own.cell_type == "code":
            own.outputs, own.execution_count = [], None
        extras.setdefault(anchor, []).append(own)
    notes = [f"restored cell {grade_id}" for grade_id in release_cells if grade_id not in seen]
    rebuilt = copy.deepcopy(release)
    cells = list(extras.get(None, []))
    for cell in release.cells:
        grade_id = nbgrader_meta(cell).get("grade_id")
        if grade_id is None:
            continue  # plain release cells live on in the student's copy (the extras), if kept
        restored = copy.deepcopy(cell)
        if grade_id in answers:
            restored.source = answers[grade_id].source
            # A markdown answer's pasted images are part of it: its source refers to them (attachment:NAME).
            restored.pop("attachments", None)
            if answers[grade_id].get("attachments"):
                restored["attachments"] = copy.deepcopy(answers[grade_id].attachments)
        cells.append(restored)
        cells.extend(extras.get(grade_id, []))
    ids: set[str] = set()
    for index, cell in enumerate(cells):
        if cell.get("id") in ids or not cell.get("id"):
            cell["id"] = f"cell-{index:03d}"
        ids.add(cell["id"])
    rebuilt.cells = cells
    return rebuilt, notes


def probe_notebook(rebuilt, tests: list[TestCell]):
    """The notebook the student's kernel runs: test cells hold probes, never a check."""
    by_id = {test.grade_id: test for test in tests}
    probing = copy.deepcopy(rebuilt)
    for cell in probing.cells:
        test = by_id.get(nbgrader_meta(cell).get("grade_id"))
        if test is not None and cell.cell_type == "code":
            cell.source = probe_source(test)
    return probing


def graded_notebook(executed, tests: list[TestCell], verdicts: dict):
    """The executed notebook as OUT keeps it: each test cell shows its release source and the judge's verdict."""
    by_id = {test.grade_id: test for test in tests}
    graded = copy.deepcopy(executed)
    for cell in graded.cells:
        grade_id = nbgrader_meta(cell).get("grade_id")
        if grade_id not in by_id or cell.cell_type != "code":
            continue
        cell.source = by_id[grade_id].visible_source.rstrip("\n")
        verdict = verdicts.get(grade_id)
        if verdict is None or verdict.passed:
            text = f"passed ({verdict.score:g} of {verdict.max_score:g} points)\n" if verdict else ""
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)] if text else []
        else:
            cell.outputs = [
                nbformat.v4.new_output(
                    "error", ename="TestFailed", evalue=verdict.message, traceback=[f"TestFailed: {verdict.message}"]
                )
            ]
    return graded
