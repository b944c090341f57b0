"""nbgrader configuration of the int8lab course. Run nbgrader from this folder (the Makefile does).

The repository's folders are the pipeline: solutions/ (source) -> notebooks/ (release) ->
autograder/submitted -> autograder/autograded -> autograder/feedback. The settings themselves
live in one place, ``int8lab.grading.course.configure``, which `int8lab grade` uses too.

Your course's own settings go below the call (nbgrader's options; `int8lab grade` and the
nbgrader_config.py it writes into its OUT folder read them from this file). The course id may
also come from your Jupyter configuration (~/.jupyter/nbgrader_config.py), as nbgrader's
JupyterHub guide sets it: `configure` sets "int8lab" only when no file does.
"""

from pathlib import Path

from int8lab.grading.course import configure

c = get_config()  # noqa: F821
configure(c, Path(__file__).resolve().parent.parent, repository=True)

# c.CourseDirectory.course_id = "int8lab"  # the id the students' nbgrader configuration names too
# c.Exchange.root = "/srv/nbgrader/exchange"  # nbgrader's default exchange folder
# c.LateSubmissionPlugin.penalty_method = "zero"  # a late submission scores 0 (due dates: see the README)
