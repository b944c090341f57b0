"""The course: assignments read from the solutions folder, and the one nbgrader configuration.

``configure`` is the only place the nbgrader settings are written; the repository's
``autograder/nbgrader_config.py`` and the ``nbgrader_config.py`` that ``int8lab grade`` puts in
OUT both call it. nbgrader commands that need their own process (they chdir, and run
``alembic``) run through ``python -m int8lab.grading.course``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .judge import Judge
from .model import GradingError
from .testcells import nbgrader_meta

COURSE_ID = "int8lab"
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"


def configure(c, root: Path, repository: bool = False) -> None:
    """Set the int8lab course's nbgrader options on config ``c`` for the course folder ``root``.

    ``repository``: the folders of this repository (solutions/ is the source, notebooks/ the release).
    """
    root = Path(root).resolve()
    c.CourseDirectory.course_id = COURSE_ID
    c.CourseDirectory.root = str(root)
    c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback"]
    c.ClearSolutions.code_stub = {"python": CODE_STUB}
    c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
    c.ExecutePreprocessor.timeout = 120
    c.Execute.timeout = 120
    # Feedback pages load MathJax from a folder next to them (feedback.add_mathjax), not from a CDN.
    from nbgrader.server_extensions.formgrader import handlers as formgrader_handlers

    from . import feedback

    # The templates render markdown again after sanitize.py: that second pass is cleaned too.
    c.HTMLExporter.filters = {"markdown2html": "int8lab.grading.sanitize.safe_markdown2html"}
    # Formgrader's submission pages load MathJax from the Jupyter server (jupyter-server-mathjax), not a CDN.
    c.HTMLExporter.template_name = feedback.FORMGRADE_TEMPLATE_NAME
    c.HTMLExporter.extra_template_basedirs = [formgrader_handlers.template_path, str(feedback.TEMPLATES)]
    # generate_feedback's exporter (its child) gets the feedback pages' template instead.
    c.GenerateFeedback.HTMLExporter.template_name = feedback.TEMPLATE_NAME
    c.GenerateFeedback.HTMLExporter.extra_template_basedirs = [
        formgrader_handlers.template_path,
        str(feedback.TEMPLATES),
    ]
    # Lets int8lab_feedback/index.html.j2 extend nbgrader's page by name ('feedback/index.html.j2'); this
    # replaces nbgrader's own setting, so its path to bootstrap.min.css (which the page inlines) is repeated.
    bootstrap_css = Path(formgrader_handlers.__file__).parent / "static" / "node_modules" / "bootstrap" / "dist" / "css"
    c.GenerateFeedback.HTMLExporter.extra_template_paths = [formgrader_handlers.template_path, str(bootstrap_css)]
    c.GenerateFeedback.preprocessors = [
        "nbgrader.preprocessors.GetGrades",
        "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
    ]
    if repository:
        c.CourseDirectory.source_directory = "solutions"
        c.CourseDirectory.release_directory = "notebooks"
        for step in ("submitted", "autograded", "feedback"):
            setattr(c.CourseDirectory, f"{step}_directory", f"autograder/{step}")
        c.CourseDirectory.db_url = f"sqlite:///{root / 'autograder' / 'gradebook.db'}"
    else:
        c.CourseDirectory.db_url = f"sqlite:///{root / 'gradebook.db'}"


def write_config(root: Path) -> None:
    """An ``nbgrader_config.py`` in course folder ``root`` that reads ``configure``."""
    (root / "nbgrader_config.py").write_text(
        '"""nbgrader configuration of an int8lab course graded by `int8lab grade`."""\n'
        "from pathlib import Path\n\n"
        "from int8lab.grading.course import configure\n\n"
        "configure(get_config(), Path(__file__).parent)  # noqa: F821\n"
    )


@dataclass
class Assignment:
    """One assignment: its source notebook (the judge's), nbgrader's release of it, and its points."""

    name: str
    notebook: str
    source: object
    release: object = None
    cells: list[tuple[str, float, bool]] = field(default_factory=list)  # (grade_id, points, autograded)
    #: the reference solution's record shapes (``selfcheck.reference_shapes``), set by the grader's self-check
    #: and sent to the workers with the assignment, so that no worker runs the reference again
    expected: dict | None = field(default=None, repr=False)
    _judge: Judge | None = field(default=None, repr=False)

    @property
    def autograded_points(self) -> float:
        return sum(points for _, points, auto in self.cells if auto)

    @property
    def judge(self) -> Judge:
        if self._judge is None:
            self._judge = Judge.from_source(self.source, self.expected)
        return self._judge

    def __getstate__(self):  # sent to workers without the judge, which each builds once
        return {**self.__dict__, "_judge": None}


def find_solutions(solutions: Path | None) -> Path:
    """The source notebooks' folder: the argument, else ``solutions/`` in the working folder."""
    folder = (solutions or Path.cwd() / "solutions").resolve()
    if not folder.is_dir():
        raise GradingError(
            f"the source notebooks (with their hidden tests) are not in {folder}: pass --solutions DIR, "
            "or run from the folder that holds solutions/"
        )
    return folder


def load_assignments(solutions: Path, wanted: list[str] | None) -> dict[str, Assignment]:
    """The assignments under ``solutions``: one folder each, holding one notebook."""
    found = {}
    for folder in sorted(p for p in solutions.iterdir() if p.is_dir() and not p.name.startswith(".")):
        notebooks = sorted(folder.glob("*.ipynb"))
        if len(notebooks) != 1 or (wanted and folder.name not in wanted):
            continue
        source = nbformat.read(notebooks[0], as_version=4)
        cells = [
            (nbgrader_meta(c)["grade_id"], float(nbgrader_meta(c).get("points", 0)), c.cell_type == "code")
            for c in source.cells
            if nbgrader_meta(c).get("grade")
        ]
        found[folder.name] = Assignment(folder.name, notebooks[0].name, source, cells=cells)
    unknown = sorted(set(wanted or []) - set(found))
    if unknown:
        raise GradingError(f"no assignment named {', '.join(unknown)} in {solutions}; have {', '.join(found)}")
    if not found:
        raise GradingError(f"no assignments (one notebook per folder) in {solutions}")
    return found


def nbgrader(root: Path, *argv: str) -> None:
    """Run ``python -m int8lab.grading.course ROOT ARGV``: nbgrader commands in a process of their own."""
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    command = [sys.executable, "-m", "int8lab.grading.course", str(root), *argv]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise GradingError(f"nbgrader {' '.join(argv)} failed in {root}:\n{(done.stdout + done.stderr)[-3000:]}")


def build_course(root: Path, assignments: dict[str, Assignment]) -> None:
    """An nbgrader course at ``root``: the sources, nbgrader's releases of them, and a gradebook."""
    root.mkdir(parents=True, exist_ok=True)
    write_config(root)
    for assignment in assignments.values():
        target = root / "source" / assignment.name / assignment.notebook
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(assignment.source, target)
    nbgrader(root, "generate_assignment", *assignments)
    for assignment in assignments.values():
        assignment.release = nbformat.read(root / "release" / assignment.name / assignment.notebook, as_version=4)


def prepare_out(out: Path, template: Path) -> None:
    """OUT becomes a course (sources, releases, gradebook) unless it is one; its config is rewritten."""
    if not (out / "gradebook.db").exists() or not (out / "source").exists():
        for part in ("source", "release"):
            shutil.copytree(template / part, out / part, dirs_exist_ok=True)
        shutil.copy2(template / "gradebook.db", out / "gradebook.db")
    write_config(out)


def _main(argv: list[str]) -> int:
    """``python -m int8lab.grading.course ROOT generate_assignment A ... | generate_feedback A ...``."""
    from nbgrader import apps

    root, command, names = Path(argv[0]), argv[1], argv[2:]
    os.chdir(root)  # this process's own: nbgrader reads nbgrader_config.py from here
    app_class = {"generate_assignment": apps.GenerateAssignmentApp, "generate_feedback": apps.GenerateFeedbackApp}
    for name in names:
        app = app_class[command]()
        app.initialize([name, "--force"])
        app.start()
        app_class[command].clear_instance()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
