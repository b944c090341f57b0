"""Merge: the judge's scores into OUT's nbgrader gradebook, and the graded notebooks into OUT/autograded.

Scores come only from the judge's verdicts. Manual scores already in the gradebook are kept.
Markdown answers left as released score 0, as nbgrader's autograde scores them; written ones
wait for a human. Each submission's time (its ``timestamp.txt``) goes into the gradebook, as
``nbgrader autograde`` puts it there, with the course's due dates: nbgrader then knows who was late.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
from pathlib import Path

import nbformat

from . import intake
from .model import Result
from .sanitize import sanitize_notebook
from .testcells import nbgrader_meta


def merge(
    out: Path, results: list[Result], assignments: dict, due_dates: dict | None = None, batch: int = 0
) -> list[tuple[str, str]]:
    """Merge ``results`` into OUT; ``due_dates``: ``{assignment: datetime}`` from the course's gradebook, which
    replace OUT's; ``batch``: submissions per transaction (0: ``MERGE_BATCH``). Returns the ``(student,
    assignment)`` submissions that came after their due date: their late penalties are nbgrader's to assign
    (``course._assign_late_penalties``); everyone else's is reset to none."""
    from nbgrader.api import Gradebook

    batch = batch or MERGE_BATCH

    late, written = [], []
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gradebook:
        for name, due in (due_dates or {}).items():
            if name in assignments:
                gradebook.find_assignment(name).duedate = due
        gradebook.db.commit()
        with _one_transaction(gradebook) as commit:
            for result in results:
                if result.graded_file is None:
                    continue  # nothing ran: no submission to record
                submission, by_hand = _record(gradebook, result, assignments[result.job.assignment])
                if submission.total_seconds_late > 0:
                    late.append((result.job.student, result.job.assignment))
                if by_hand or submission.total_seconds_late > 0:
                    result.page = None  # a worker's page knows neither: nbgrader renders this one (pages.py)
                written.append(result)
                if len(written) >= batch:
                    _commit(commit, out, written, assignments)
            _commit(commit, out, written, assignments)
    return late


@contextlib.contextmanager
def _one_transaction(gradebook):
    """Within: nbgrader's own commits (``add_student``, ``add_submission`` commit each row they add) only flush,
    so that a batch is one transaction; yields the real commit. A database error inside rolls the batch back."""
    session = gradebook.db
    commit = session.commit
    session.commit = session.flush
    try:
        yield commit
    finally:
        del session.commit


#: Submissions merged per transaction: nbgrader's two commits per new submission (each an fsync of SQLite's
#: journal) cost more than the submission's own rows (see benchmarks/bench_dask.py, "merge").
MERGE_BATCH = 500


def _record(gradebook, result: Result, assignment):
    """``result``'s submission, grades and comments in ``gradebook``'s session (not committed); the submission,
    and whether a human scored or commented on it already (kept, as they are)."""
    from nbgrader.api import MissingEntry

    job = result.job
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
    unchanged = result.unchanged
    by_hand = False
    # The grades and comments exist once the submission is flushed: looking each up need not flush the
    # changes to the previous ones first (an autoflush per lookup was a third of the merge).
    with gradebook.db.no_autoflush:
        # The submitted notebook's grades and comments by their cell's name, loaded with it: nbgrader's find_grade
        # and find_comment are a query of six joins each, per cell (a quarter of the merge).
        submitted = next((n for n in submission.notebooks if n.name == notebook), None)
        grades = {grade.name: grade for grade in submitted.grades} if submitted else {}
        comments = {comment.name: comment for comment in submitted.comments} if submitted else {}
        for grade_id, _, autograded in assignment.cells:
            grade = grades.get(grade_id) or gradebook.find_grade(grade_id, notebook, job.assignment, job.student)
            by_hand |= grade.manual_score is not None or grade.extra_credit is not None
            if autograded:
                verdict = result.verdicts.get(grade_id)
                grade.auto_score = verdict.score if verdict else 0.0
                grade.needs_manual_grade = False
            else:
                grade.auto_score = 0.0 if grade_id in unchanged else None
                grade.needs_manual_grade = grade.manual_score is None and grade_id not in unchanged
        for grade_id in _solution_ids(assignment.release):
            comment = comments.get(grade_id) or gradebook.find_comment(grade_id, notebook, job.assignment, job.student)
            comment.auto_comment = "No response." if grade_id in unchanged else None
            by_hand |= comment.manual_comment is not None
    return submission, by_hand


def _commit(commit, out: Path, written: list[Result], assignments: dict) -> None:
    """``commit()`` the batch, then write its graded notebooks into OUT/autograded; empties ``written``."""
    commit()
    for result in written:
        job, assignment = result.job, assignments[result.job.assignment]
        destination = out / "autograded" / job.student / job.assignment
        if destination.exists():
            shutil.rmtree(destination)
        destination.mkdir(parents=True)
        (destination / assignment.notebook).write_bytes(result.graded_file)
        # generate_feedback copies these beside the page, where release_feedback reads them.
        intake.write_receipt(destination, job.receipt)
    written.clear()


#: ``{id(release): (release, {grade_id: its answer as sanitize_notebook renders it})}``: rendering the release's
#: markdown answers took most of a submission's merge when done for each submission.
_RELEASED: dict[int, tuple] = {}


def _released_answers(release) -> dict[str, str]:
    kept = _RELEASED.get(id(release))
    if kept is None or kept[0] is not release:  # the release is kept with it: its id cannot be reused meanwhile
        answers = [copy.deepcopy(c) for c in release.cells if nbgrader_meta(c).get("solution")]
        sanitize_notebook(nbformat.v4.new_notebook(cells=answers))
        kept = _RELEASED[id(release)] = (release, {nbgrader_meta(c)["grade_id"]: c.source.strip() for c in answers})
    return kept[1]


def _solution_ids(release) -> list[str]:
    return [nbgrader_meta(c)["grade_id"] for c in release.cells if nbgrader_meta(c).get("solution")]


def unchanged_answers(graded, release) -> set[str]:
    """Grade ids of the answer cells the student left exactly as released.

    ``graded`` went through ``sanitize_notebook``, which renders markdown cells to HTML: the release's
    answers are rendered the same way before they are compared, or no markdown answer would ever match.
    """
    released = _released_answers(release)
    return {
        nbgrader_meta(c)["grade_id"]
        for c in graded.cells
        if nbgrader_meta(c).get("grade_id") in released and c.source.strip() == released[nbgrader_meta(c)["grade_id"]]
    }
