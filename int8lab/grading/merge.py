"""Merge: the judge's scores into OUT's nbgrader gradebook, and the graded notebooks into OUT/autograded.

Scores come only from the judge's verdicts. Manual scores already in the gradebook are kept.
Markdown answers left as released score 0, as nbgrader's autograde scores them; written ones
wait for a human. Each submission's time (its ``timestamp.txt``) goes into the gradebook, as
``nbgrader autograde`` puts it there, with the course's due dates: nbgrader then knows who was late.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import nbformat

from . import intake
from .model import Result
from .sanitize import sanitize_notebook
from .testcells import nbgrader_meta


def merge(out: Path, results: list[Result], assignments: dict, due_dates: dict | None = None) -> list[tuple[str, str]]:
    """Merge ``results`` into OUT; ``due_dates``: ``{assignment: datetime}`` from the course's gradebook, which
    replace OUT's. Returns the ``(student, assignment)`` submissions that came after their due date: their late
    penalties are nbgrader's to assign (``course._assign_late_penalties``); everyone else's is reset to none."""
    from nbgrader.api import Gradebook, MissingEntry

    late = []
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gradebook:
        for name, due in (due_dates or {}).items():
            if name in assignments:
                gradebook.find_assignment(name).duedate = due
        gradebook.db.commit()
        for result in results:
            if result.graded is None:
                continue  # nothing ran: no submission to record
            job, assignment = result.job, assignments[result.job.assignment]
            notebook = Path(assignment.notebook).stem
            gradebook.update_or_create_student(job.student)
            try:
                submission = gradebook.find_submission(job.assignment, job.student)
            except MissingEntry:
                # nbgrader builds the new submission's notebooks and grades before adding it to the
                # session; a lazy load in between would autoflush them half-attached (SQLAlchemy 2's
                # "not in session" SAWarning). Its own commit flushes them once they are complete.
                with gradebook.db.no_autoflush:
                    submission = gradebook.add_submission(job.assignment, job.student)
            submission.timestamp = job.receipt.timestamp  # the graded submission's, or none: not an older one's
            for submitted_notebook in submission.notebooks:
                submitted_notebook.late_submission_penalty = None  # as nbgrader's autograde resets it
            unchanged = unchanged_answers(result.graded, assignment.release)
            for grade_id, _, autograded in assignment.cells:
                grade = gradebook.find_grade(grade_id, notebook, job.assignment, job.student)
                if autograded:
                    verdict = result.verdicts.get(grade_id)
                    grade.auto_score = verdict.score if verdict else 0.0
                    grade.needs_manual_grade = False
                else:
                    grade.auto_score = 0.0 if grade_id in unchanged else None
                    grade.needs_manual_grade = grade.manual_score is None and grade_id not in unchanged
            for grade_id in _solution_ids(assignment.release):
                comment = gradebook.find_comment(grade_id, notebook, job.assignment, job.student)
                comment.auto_comment = "No response." if grade_id in unchanged else None
            gradebook.db.commit()
            if submission.total_seconds_late > 0:
                late.append((job.student, job.assignment))
            destination = out / "autograded" / job.student / job.assignment
            if destination.exists():
                shutil.rmtree(destination)
            destination.mkdir(parents=True)
            nbformat.write(result.graded, destination / assignment.notebook)
            # generate_feedback copies these beside the page, where release_feedback reads them.
            intake.write_receipt(destination, job.receipt)
    return late


def _solution_ids(release) -> list[str]:
    return [nbgrader_meta(c)["grade_id"] for c in release.cells if nbgrader_meta(c).get("solution")]


def unchanged_answers(graded, release) -> set[str]:
    """Grade ids of the answer cells the student left exactly as released.

    ``graded`` went through ``sanitize_notebook``, which renders markdown cells to HTML: the release's
    answers are rendered the same way before they are compared, or no markdown answer would ever match.
    """
    answers = [copy.deepcopy(c) for c in release.cells if nbgrader_meta(c).get("solution")]
    sanitize_notebook(nbformat.v4.new_notebook(cells=answers))
    released = {nbgrader_meta(c)["grade_id"]: c.source.strip() for c in answers}
    return {
        nbgrader_meta(c)["grade_id"]
        for c in graded.cells
        if nbgrader_meta(c).get("grade_id") in released and c.source.strip() == released[nbgrader_meta(c)["grade_id"]]
    }
