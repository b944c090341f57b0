"""nbgrader configuration of the int8lab course. Run nbgrader from this folder (the Makefile does).

The repository's folders are the pipeline: solutions/ (source) -> notebooks/ (release) ->
autograder/submitted -> autograder/autograded -> autograder/feedback.
"""

from pathlib import Path

c = get_config()  # noqa: F821 (provided by traitlets when nbgrader loads this file)

ROOT = Path(__file__).resolve().parent.parent

c.CourseDirectory.course_id = "int8lab"
c.CourseDirectory.root = str(ROOT)
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "notebooks"
c.CourseDirectory.submitted_directory = "autograder/submitted"
c.CourseDirectory.autograded_directory = "autograder/autograded"
c.CourseDirectory.feedback_directory = "autograder/feedback"
c.CourseDirectory.db_url = f"sqlite:///{ROOT / 'autograder' / 'gradebook.db'}"
# Only the notebooks are assignment files; the cache and plots never travel with them.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback"]

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
# A notebook that trains nothing (the cache is warm) runs in seconds; these bound a runaway cell.
c.ExecutePreprocessor.timeout = 120
c.Execute.timeout = 120
