"""nbgrader configuration of the int8lab course. Run nbgrader from this folder (the Makefile does).

The repository's folders are the pipeline: solutions/ (source) -> notebooks/ (release) ->
autograder/submitted -> autograder/autograded -> autograder/feedback. The settings themselves
live in one place, ``int8lab.grading.course.configure``, which `int8lab grade` uses too.
"""

from pathlib import Path

from int8lab.grading.course import configure

configure(get_config(), Path(__file__).resolve().parent.parent, repository=True)  # noqa: F821
