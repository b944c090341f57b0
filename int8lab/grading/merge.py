"""Merge: the judge's scores into OUT's nbgrader gradebook, and the graded notebooks into OUT/autograded.

Scores come only from the judge's verdicts. Manual scores already in the gradebook are kept.
Markdown answers left as released score 0, as nbgrader's autograde scores them; written ones
wait for a human. Each submission's time (its ``timestamp.txt``) goes into the gradebook, as
``nbgrader autograde`` puts it there, with the course's due dates: nbgrader then knows who was late.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import shutil
from dataclasses import dataclass
from pathlib import Path

import nbformat

from . import intake
from .model import Result
from .sanitize import sanitize_notebook
from .testcells import nbgrader_meta


def merge(
    out: Path,
    results: list[Result],
    assignments: dict,
    due_dates: dict | None = None,
    batch: int = 0,
    bulk: bool = True,
) -> list[tuple[str, str]]:
    """Merge ``results`` into OUT; ``due_dates``: ``{assignment: datetime}`` from the course's gradebook, which
    replace OUT's; ``batch``: submissions per transaction (0: ``MERGE_BATCH``); ``bulk``: a batch's new
    submissions inserted at once (False: one by one through nbgrader's ORM, as a re-graded one always is).
    Returns the ``(student, assignment)`` submissions that came after their due date: their late penalties are
    nbgrader's to assign (``course._assign_late_penalties``); everyone else's is reset to none."""
    merger = Merger(out, assignments, due_dates, batch, bulk)
    try:
        return merger.merge(results)
    finally:
        merger.close()


class Merger:
    """OUT's gradebook, open for successive batches of results: ``merge(results)`` per batch, then ``close()``.
    Arguments as ``merge``'s. nbgrader's session belongs to the thread that made it (a ``scoped_session``): open,
    merge and close in one thread."""

    def __init__(self, out: Path, assignments: dict, due_dates: dict | None = None, batch: int = 0, bulk: bool = True):
        from nbgrader.api import Gradebook

        self.out, self.assignments = out, assignments
        self.batch, self.bulk = batch or MERGE_BATCH, bulk
        self.gradebook = Gradebook(f"sqlite:///{out / 'gradebook.db'}")
        try:
            for name, due in (due_dates or {}).items():
                if name in assignments:
                    self.gradebook.find_assignment(name).duedate = due
            self.gradebook.db.commit()
        except BaseException:
            self.gradebook.close()
            raise

    def merge(self, results: list[Result]) -> list[tuple[str, str]]:
        """Records ``results`` (those that ran), a transaction per ``batch`` of them, each followed by its graded
        notebooks in OUT/autograded; returns the late ``(student, assignment)`` submissions. A database error
        rolls its batch back (the batches before it stay)."""
        late, chunk = [], []
        try:
            with _one_transaction(self.gradebook) as commit:
                for result in results:
                    if result.graded_file is None:
                        continue  # nothing ran: no submission to record
                    chunk.append(result)
                    if len(chunk) >= self.batch:
                        late += self._merge_batch(chunk, commit)
                late += self._merge_batch(chunk, commit)
        except BaseException:
            self.gradebook.db.rollback()
            raise
        return late

    def close(self) -> None:
        self.gradebook.close()

    def _merge_batch(self, chunk: list[Result], commit) -> list[tuple[str, str]]:
        """Records ``chunk``, commits it and writes its notebooks; empties ``chunk``. Its new submissions are
        inserted at once (``_insert_new``), the others (re-graded) go through nbgrader's ORM."""
        inserted = _insert_new(self.gradebook, chunk, self.assignments) if self.bulk and chunk else {}
        late = []
        for result in chunk:
            if id(result) in inserted:
                seconds_late, by_hand = inserted[id(result)], False
            else:
                submission, by_hand = _record(self.gradebook, result, self.assignments[result.job.assignment])
                seconds_late = submission.total_seconds_late
            if seconds_late > 0:
                late.append((result.job.student, result.job.assignment))
            if by_hand or seconds_late > 0:
                result.page = None  # a worker's page knows neither: nbgrader renders this one (pages.py)
        _commit(commit, self.out, chunk, self.assignments)
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
            grade.auto_score, unscored = _auto_grade(result, grade_id, autograded, unchanged)
            grade.needs_manual_grade = unscored and grade.manual_score is None
        for grade_id in _solution_ids(assignment.release):
            comment = comments.get(grade_id) or gradebook.find_comment(grade_id, notebook, job.assignment, job.student)
            comment.auto_comment = _auto_comment(grade_id, unchanged)
            by_hand |= comment.manual_comment is not None
    return submission, by_hand


def _auto_grade(result: Result, grade_id: str, autograded: bool, unchanged: set[str]) -> tuple[float | None, bool]:
    """The grade's ``auto_score``, and whether it needs a human unless one scored it already: the judge's score
    of a test cell (0 without a verdict); a written answer left as released scores 0, a written one waits."""
    if autograded:
        verdict = result.verdicts.get(grade_id)
        return (verdict.score if verdict else 0.0), False
    return (0.0 if grade_id in unchanged else None), grade_id not in unchanged


def _auto_comment(grade_id: str, unchanged: set[str]) -> str | None:
    return "No response." if grade_id in unchanged else None


@dataclass
class _Layout:
    """An assignment's rows in the gradebook that a new submission's rows refer to (read once per batch)."""

    id: str
    duedate: datetime.datetime | None
    #: ``(notebook id, name, grade rows' cells, comment rows' cells)``, each cell ``(id, grade_id)``, in the order
    #: of nbgrader's ``add_submission``: a grade per grade cell and task cell, a comment per solution and task cell
    notebooks: list[tuple[str, str, list[tuple[str, str]], list[tuple[str, str]]]]

    @classmethod
    def of(cls, gradebook, name: str) -> _Layout:
        row = gradebook.find_assignment(name)  # MissingEntry, as add_submission's own lookup
        notebooks = []
        for notebook in row.notebooks:
            task = [(cell.id, cell.name) for cell in notebook.task_cells]
            grade = [(cell.id, cell.name) for cell in notebook.grade_cells] + task
            comment = [(cell.id, cell.name) for cell in notebook.solution_cells] + task
            notebooks.append((notebook.id, notebook.name, grade, comment))
        return cls(row.id, row.duedate, notebooks)


def _insert_new(gradebook, chunk: list[Result], assignments: dict) -> dict[int, float]:
    """The submissions of ``chunk`` that the gradebook lacks, inserted at once into nbgrader's own tables with
    SQLAlchemy Core, in the session's transaction, as ``add_submission`` then ``_record`` would make them one by
    one through the ORM (and their students, as ``update_or_create_student``): per result, nbgrader's ORM cost
    more than all the rest of its merge. Returns ``{id(result): seconds late}`` of the results inserted. A
    submission twice in ``chunk`` is inserted for its first result; the later ones re-grade it (``_record``)."""
    from nbgrader.api import Assignment, Comment, Grade, Student, SubmittedAssignment, SubmittedNotebook
    from sqlalchemy import insert, select

    session = gradebook.db
    submitted = (
        select(SubmittedAssignment.student_id, Assignment.name)
        .join(Assignment, Assignment.id == SubmittedAssignment.assignment_id)
        .where(Assignment.name.in_({result.job.assignment for result in chunk}))
    )
    seen = {(student, name) for student, name in session.execute(submitted)}
    new = []
    for result in chunk:
        if (result.job.student, result.job.assignment) not in seen:
            seen.add((result.job.student, result.job.assignment))
            new.append(result)
    if not new:
        return {}
    students = set(session.scalars(select(Student.id)))
    layouts = {name: _Layout.of(gradebook, name) for name in sorted({result.job.assignment for result in new})}
    rows = {table: [] for table in (Student, SubmittedAssignment, SubmittedNotebook, Grade, Comment)}
    seconds_late = {}
    for result in new:
        job, layout = result.job, layouts[result.job.assignment]
        if job.student not in students:
            students.add(job.student)
            rows[Student].append({"id": job.student})
        _add_rows(rows, result, assignments[job.assignment], layout)
        seconds_late[id(result)] = _seconds_late(job.receipt.timestamp, layout.duedate)
    for table, values in rows.items():  # in the order of their foreign keys
        if values:
            session.execute(insert(table.__table__), values)
    return seconds_late


def _add_rows(rows: dict, result: Result, assignment, layout: _Layout) -> None:
    """Adds to ``rows`` (``{nbgrader's table class: [row as a dict]}``) ``result``'s new submission: the rows of
    ``add_submission``, with the values ``_record`` sets. The columns nbgrader leaves unset (``flagged``,
    ``manual_score``, ``extra_credit``, ``extension``, ``manual_comment``) get the tables' own defaults, as there."""
    from nbgrader.api import Comment, Grade, MissingEntry, SubmittedAssignment, SubmittedNotebook, new_uuid

    job, stem = result.job, Path(assignment.notebook).stem
    unchanged = result.unchanged
    scores = {grade_id: _auto_grade(result, grade_id, auto, unchanged) for grade_id, _, auto in assignment.cells}
    comments = {grade_id: _auto_comment(grade_id, unchanged) for grade_id in _solution_ids(assignment.release)}
    own = next((notebook for notebook in layout.notebooks if notebook[1] == stem), None)
    graded_cells = {grade_id for _, grade_id in own[2]} if own else set()
    commented_cells = {grade_id for _, grade_id in own[3]} if own else set()
    missing = sorted((scores.keys() - graded_cells) | (comments.keys() - commented_cells))
    if missing:  # as nbgrader's find_grade or find_comment says it in _record
        raise MissingEntry(f"no cell {missing[0]} in {stem} of {job.assignment} in the gradebook")
    submission_id = new_uuid()
    timestamp = job.receipt.timestamp  # the graded submission's, as _record sets it
    rows[SubmittedAssignment].append(
        {"id": submission_id, "assignment_id": layout.id, "student_id": job.student, "timestamp": timestamp}
    )
    for notebook_id, name, grade_cells, comment_cells in layout.notebooks:
        submitted_id, mine = new_uuid(), name == stem
        # late_submission_penalty: none, as nbgrader's autograde resets it (and _record)
        rows[SubmittedNotebook].append(
            {
                "id": submitted_id,
                "assignment_id": submission_id,
                "notebook_id": notebook_id,
                "late_submission_penalty": None,
            }
        )
        for cell_id, grade_id in grade_cells:
            auto_score, unscored = scores[grade_id] if mine and grade_id in scores else (None, True)
            rows[Grade].append(
                {
                    "id": new_uuid(),
                    "notebook_id": submitted_id,
                    "cell_id": cell_id,
                    "auto_score": auto_score,
                    "needs_manual_grade": unscored,
                }
            )
        for cell_id, grade_id in comment_cells:
            auto_comment = comments.get(grade_id) if mine else None
            rows[Comment].append(
                {"id": new_uuid(), "notebook_id": submitted_id, "cell_id": cell_id, "auto_comment": auto_comment}
            )


def _seconds_late(timestamp, duedate) -> float:
    """``SubmittedAssignment.total_seconds_late`` of a submission without an extension."""
    if timestamp is None or duedate is None:
        return 0
    return max(0, (timestamp - duedate).total_seconds())


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


def released_answers(release) -> dict[str, str]:
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
    released = released_answers(release)
    return {
        nbgrader_meta(c)["grade_id"]
        for c in graded.cells
        if nbgrader_meta(c).get("grade_id") in released and c.source.strip() == released[nbgrader_meta(c)["grade_id"]]
    }
