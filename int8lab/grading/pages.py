"""A submission's feedback page, rendered where it was judged (a Dask worker), as ``nbgrader generate_feedback``
renders it on the client: the same converter, exporter, template, filters (sanitize.py) and preprocessors, with
one preprocessor swapped: nbgrader's ``GetGrades`` reads the scores from the gradebook, ``GradesOfTheJudge``
takes them from the judge's verdicts, as merge.py will write them into the gradebook.

Named difference: what only the client's gradebook holds. A manual score or comment, a late penalty, and the
course's own nbgrader_config.py settings of the page are not known where the page is rendered; the client
renders with nbgrader the pages of submissions that have any of the first three (``pipeline._feedback``), and
``tests/test_dask.py`` checks that a worker's page equals nbgrader's byte for byte otherwise.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from functools import cache
from pathlib import Path

from nbgrader import utils
from nbgrader.preprocessors import NbGraderPreprocessor


class GradesOfTheJudge(NbGraderPreprocessor):
    """``GetGrades`` with its values from ``resources["nbgrader"]``: ``grades`` ({grade_id: (score, max_score)}),
    ``comments`` ({grade_id: comment or None}), ``score`` and ``max_score``; the late penalty is 0."""

    def preprocess(self, nb, resources):
        nb, resources = super().preprocess(nb, resources)
        resources["nbgrader"]["late_penalty"] = 0
        return nb, resources

    def preprocess_cell(self, cell, resources, cell_index):
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if utils.is_solution(cell) or utils.is_task(cell):
            cell.metadata.nbgrader["comment"] = resources["nbgrader"]["comments"].get(grade_id)
        if utils.is_grade(cell) or utils.is_task(cell):
            score, points = resources["nbgrader"]["grades"][grade_id]
            cell.metadata.nbgrader["score"] = score
            cell.metadata.nbgrader["points"] = points
        return cell, resources


@cache
def _exporter():
    """nbgrader's feedback exporter as the course configures it (``course.configure``), with our preprocessor."""
    from nbgrader.converters import GenerateFeedback
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import Config

    from . import course

    config = Config()
    course.configure(config, Path(tempfile.gettempdir()))  # the folders are not read: only the page's settings
    config.GenerateFeedback.preprocessors = [
        f"{__name__}.GradesOfTheJudge",
        "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
    ]
    converter = GenerateFeedback(coursedir=CourseDirectory(config=config), config=config)
    exporter = converter.exporter_class(parent=converter, config=converter.config)
    for preprocessor in converter.preprocessors:
        exporter.register_preprocessor(preprocessor)
    return exporter


def warm() -> None:
    """Render a small page, so that the first page of a grading does not pay nbgrader's imports, the templates'
    compilation and the highlighter's start (about a second): a judge process does this when it starts."""
    import nbformat

    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("A *page* with $x^2$."), nbformat.v4.new_code_cell("print(1)")]
    )
    nbgrader = {"student": "", "assignment": "", "notebook": "warm", "grades": {}, "comments": {}}
    resources = {"metadata": {"name": "warm"}, "unique_key": "warm", "output_files_dir": "warm_files"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _exporter().from_notebook_node(notebook, {**resources, "nbgrader": {**nbgrader, "score": 0, "max_score": 0}})


def render_page(graded, job, assignment, verdicts: dict) -> str:
    """The HTML of ``job``'s feedback page. ``graded``: its notebook as merge.py writes it into OUT/autograded;
    ``assignment``: its course.Assignment (with its release); ``verdicts``: {grade_id: judge.Verdict}."""
    from .merge import unchanged_answers

    unchanged = unchanged_answers(graded, assignment.release)
    grades, comments = {}, {}
    for grade_id, points, autograded in assignment.cells:
        if autograded:
            verdict = verdicts.get(grade_id)
            score = verdict.score if verdict else 0.0
        else:
            score = 0.0  # nbgrader's score of an answer without a manual score: its auto_score (0 or none)
        grades[grade_id] = (score, points)
    for cell in assignment.release.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            comments[meta["grade_id"]] = "No response." if meta["grade_id"] in unchanged else None
    stem = Path(assignment.notebook).stem
    resources = {
        "metadata": {"name": stem},
        "unique_key": stem,
        "output_files_dir": f"{stem}_files",
        "nbgrader": {
            "student": job.student,
            "assignment": job.assignment,
            "notebook": stem,
            "grades": grades,
            "comments": comments,
            "score": sum(score for score, _ in grades.values()),
            "max_score": sum(points for _, points in grades.values()),
        },
    }
    # A submission's output that the template cannot show (say, an empty mimebundle) makes nbconvert warn: that
    # is the student's output, not the grader's problem, and the grader's stderr promises no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        output, _ = _exporter().from_notebook_node(copy.deepcopy(graded), resources)
    return output


def write_pages(out: Path, results) -> set[tuple[str, str]]:
    """Write the pages the workers rendered into OUT/feedback as ``generate_feedback --force`` would: the
    student's folder afresh, the other files of its OUT/autograded folder beside the page, mode 644. Returns
    the ``(student, assignment)`` written; those without a page are nbgrader's to write."""
    import os
    import shutil

    written = set()
    for result in results:
        if result.page is None or result.graded_file is None:
            continue
        job = result.job
        source = out / "autograded" / job.student / job.assignment
        destination = out / "feedback" / job.student / job.assignment
        if destination.exists():
            shutil.rmtree(destination)
        destination.mkdir(parents=True)
        for path in sorted(source.iterdir()):
            if path.is_file() and path.suffix != ".ipynb":
                shutil.copy(path, destination / path.name)
        notebook = next(path for path in source.iterdir() if path.suffix == ".ipynb")
        (destination / f"{notebook.stem}.html").write_text(result.page, encoding="utf-8")
        for path in destination.iterdir():
            os.chmod(path, 0o644)
        written.add((job.student, job.assignment))
    return written
