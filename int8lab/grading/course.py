"""The course: assignments read from the solutions folder, and the one nbgrader configuration.

``configure`` is the only place the nbgrader settings are written; the repository's
``autograder/nbgrader_config.py`` and the ``nbgrader_config.py`` that ``int8lab grade`` puts in
OUT both call it. The instructor's own settings (course id, exchange, late penalties) live in the
course folder's ``nbgrader_config.py`` (``autograder/`` in this repository) or in their Jupyter
configuration, where nbgrader reads them; OUT's configuration loads the course folder's first, so that
nbgrader's commands in OUT see the same course. nbgrader commands that need their own process (they
chdir, and run ``alembic``) run through ``python -m int8lab.grading.course``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from . import testcells
from .judge import Judge
from .model import GradingError
from .testcells import nbgrader_meta

#: The course id when none of the instructor's nbgrader configuration files names one.
DEFAULT_COURSE_ID = "int8lab"
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"


def configure(c, root: Path, repository: bool = False) -> None:
    """Set the int8lab course's nbgrader options on config ``c`` for the course folder ``root``.

    ``repository``: the folders of this repository (solutions/ is the source, notebooks/ the release).
    """
    root = Path(root).resolve()
    # The instructor's course id wins wherever nbgrader reads it: this file (a line after this call), or a
    # configuration file loaded before this one (~/.jupyter, /etc/jupyter); this is only the default.
    if not _checking_other_configs and "course_id" not in c.CourseDirectory and not _course_id_set_elsewhere():
        c.CourseDirectory.course_id = DEFAULT_COURSE_ID
    c.CourseDirectory.root = str(root)
    c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback"]
    c.ClearSolutions.code_stub = {"python": CODE_STUB}
    c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
    c.ExecutePreprocessor.timeout = 120
    c.Execute.timeout = 120
    from nbgrader.server_extensions.formgrader import handlers as formgrader_handlers

    from . import feedback

    # The templates render markdown again after sanitize.py: that second pass is cleaned too.
    c.HTMLExporter.filters = {"markdown2html": "int8lab.grading.sanitize.safe_markdown2html"}
    # Feedback pages carry their math as MathML, written when they are (int8lab_feedback's typeset_math).
    c.GenerateFeedback.HTMLExporter.filters = {
        "markdown2html": "int8lab.grading.feedback.markdown2html",  # safe_markdown2html, marked (mathml.fragment)
        "typeset_math": "int8lab.grading.mathml.typeset",
    }
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
    # nbconvert's HTML exporter but for its slow last pass (feedback.FeedbackExporter).
    c.GenerateFeedback.exporter_class = "int8lab.grading.feedback.FeedbackExporter"
    c.GenerateFeedback.preprocessors = [
        "nbgrader.preprocessors.GetGrades",
        "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
    ]
    # Every folder is set in both layouts: OUT's configuration loads the repository's first (write_config).
    folders = {"source": "source", "release": "release", "submitted": "submitted"}
    folders |= {"autograded": "autograded", "feedback": "feedback", "solution": "solution"}
    if repository:
        folders |= {"source": "solutions", "release": "notebooks"}
        folders |= {step: f"autograder/{step}" for step in ("submitted", "autograded", "feedback")}
    for step, folder in folders.items():
        setattr(c.CourseDirectory, f"{step}_directory", folder)
    gradebook = root / "autograder" / "gradebook.db" if repository else root / "gradebook.db"
    c.CourseDirectory.db_url = f"sqlite:///{gradebook}"


#: True while ``_course_id_set_elsewhere`` loads other configuration files, which may call ``configure`` too.
_checking_other_configs = False


def _course_id_set_elsewhere() -> bool:
    """Whether an nbgrader configuration file of the Jupyter configuration path (user, environment, system:
    the files nbgrader loads before the course folder's) sets ``CourseDirectory.course_id``."""
    global _checking_other_configs
    from jupyter_core.paths import jupyter_config_path
    from traitlets.config.loader import JSONFileConfigLoader, PyFileConfigLoader

    _checking_other_configs = True
    try:
        for folder in jupyter_config_path():
            for loader in (PyFileConfigLoader, JSONFileConfigLoader):
                suffix = ".py" if loader is PyFileConfigLoader else ".json"
                try:
                    config = loader(f"nbgrader_config{suffix}", path=folder).load_config()
                except Exception:  # absent (ConfigFileNotFound), or broken: nbgrader reports that when it loads it
                    continue
                if "course_id" in config.get("CourseDirectory", {}):
                    return True
        return False
    finally:
        _checking_other_configs = False


def write_config(root: Path, course_config: Path | None = None) -> None:
    """An ``nbgrader_config.py`` in course folder ``root`` that reads ``configure``, after the instructor's
    ``course_config`` (the course folder's ``nbgrader_config.py``) if there is one."""
    text = '"""nbgrader configuration of an int8lab course graded by `int8lab grade`."""\n'
    text += "import sys\nfrom pathlib import Path\n\nfrom int8lab.grading.course import configure\n\n"
    text += "c = get_config()  # noqa: F821\n"
    if course_config is not None:
        text += (
            "# The instructor's course (its id, the exchange, late penalties), as nbgrader reads it there;\n"
            "# this folder's own paths and gradebook come after.\n"
            f"COURSE_CONFIG = Path({str(course_config)!r})\n"
            "if COURSE_CONFIG.is_file():\n"
            "    load_subconfig(str(COURSE_CONFIG))  # noqa: F821\n"
            "else:\n"
            '    print(f"int8lab: {COURSE_CONFIG} is gone; this course folder has only its own settings", '
            "file=sys.stderr)\n"
        )
    text += "configure(c, Path(__file__).parent)\n"
    (root / "nbgrader_config.py").write_text(text)


@dataclass(frozen=True)
class CourseFolder:
    """The instructor's nbgrader course folder (``autograder/`` in this repository), as nbgrader reads it there:
    its configuration file, where ``nbgrader collect`` puts submissions, and its gradebook (due dates)."""

    config: Path
    course_id: str
    submitted: Path
    db_url: str


def find_course_folder(course_dir: Path | None, solutions: Path) -> CourseFolder | None:
    """The course folder ``course_dir``, else ``autograder/`` beside ``solutions`` if it holds an
    ``nbgrader_config.py``, else None (a class graded from a folder or a .zip alone)."""
    folder = (course_dir or solutions.parent / "autograder").resolve()
    if not (folder / "nbgrader_config.py").is_file():
        if course_dir is not None:
            raise GradingError(f"{folder} is not an nbgrader course folder: it has no nbgrader_config.py")
        return None
    settings = json.loads(nbgrader(folder, "settings"))
    config, submitted = folder / "nbgrader_config.py", Path(settings["submitted"])
    return CourseFolder(config, settings["course_id"], submitted, settings["db_url"])


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
    _tests: list | None = field(default=None, repr=False)

    @property
    def autograded_points(self) -> float:
        return sum(points for _, points, auto in self.cells if auto)

    @property
    def judge(self) -> Judge:
        if self._judge is None:
            self._judge = Judge.from_source(self.source, self.expected)
        return self._judge

    @property
    def tests(self) -> list:
        """The source's test cells (``testcells.plan_tests``): what a rebuild needs, without the judge's self-check."""
        if self._judge is not None:
            return self._judge.tests
        if self._tests is None:
            self._tests = testcells.plan_tests(self.source)[1]
        return self._tests

    def __getstate__(self):  # sent to workers without the judge, which each builds once
        return {**self.__dict__, "_judge": None, "_tests": None}


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


def nbgrader(root: Path, *argv: str, stdin: str | None = None) -> str:
    """Run ``python -m int8lab.grading.course ROOT ARGV`` (nbgrader, in a process of its own, in ``root``);
    returns its standard output."""
    root = Path(root).resolve()
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    command = [sys.executable, "-m", "int8lab.grading.course", str(root), *argv]
    done = subprocess.run(command, cwd=root, env=env, input=stdin, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        output = done.stdout + done.stderr
        raise GradingError(f"nbgrader {' '.join(argv)} failed in {root}: {_last_error(output)}", output[-5000:])
    return done.stdout


def _last_error(output: str) -> str:
    """One line of nbgrader's output that says what went wrong: its last ERROR message (not its pointer to a
    traceback) and the last exception, with how many submissions failed when there were several."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    said = [line.split("] ", 1)[-1] for line in lines if "| ERROR]" in line]
    said = [line for line in said if not line.startswith(("Traceback", "Please see"))]
    raised = [line for line in lines if re.match(r"[\w.]*(Error|Exception)\b[^:]*: ", line)]
    failed = sum(line.startswith("There was an error processing assignment '") for line in said)
    parts = said[-1:] + raised[-1:] + ([f"{failed} submissions failed, each in the details"] if failed > 1 else [])
    return ("; ".join(parts) or (lines or ["no output"])[-1])[:500]


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


def prepare_out(out: Path, template: Path, course_folder: CourseFolder | None) -> None:
    """OUT becomes a course (sources, releases, gradebook) unless it is one; its config is rewritten. A course
    graded before gets the assignments it lacks (an earlier run with --assignment), in its gradebook too."""
    fresh = not (out / "gradebook.db").exists() or not (out / "source").exists()
    if fresh:
        for part in ("source", "release"):
            shutil.copytree(template / part, out / part, dirs_exist_ok=True)
        shutil.copy2(template / "gradebook.db", out / "gradebook.db")
    write_config(out, course_folder.config if course_folder else None)
    missing = [] if fresh else _missing_assignments(out, sorted(p.name for p in (template / "source").iterdir()))
    for name in missing:
        shutil.copytree(template / "source" / name, out / "source" / name, dirs_exist_ok=True)
    if missing:  # nbgrader adds them to OUT's gradebook as it added them to the template's
        nbgrader(out, "generate_assignment", *missing)
    ignore = out / ".gitignore"
    if not ignore.exists():  # an instructor's own is kept
        # In a repository, students' work and grades stay out of git, and out of ruff (`make lint`) too.
        ignore.write_text("# Written by int8lab grade: nothing of this course folder belongs in git.\n*\n")


def _missing_assignments(out: Path, names: list[str]) -> list[str]:
    from nbgrader.api import Gradebook, MissingEntry

    missing = []
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gradebook:
        for name in names:
            try:
                if not gradebook.find_assignment(name).notebooks:  # a due date set in OUT before it was graded
                    missing.append(name)
            except MissingEntry:
                missing.append(name)
    return missing


def due_dates(course_folder: CourseFolder | None, names) -> dict:
    """``{assignment: due date}`` of the assignments ``names`` that the course folder's gradebook gives one
    (``nbgrader db assignment add ID --duedate=...``, or formgrader's Manage Assignments, in that folder)."""
    if course_folder is None:
        return {}
    url = course_folder.db_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return {}  # nbgrader would create an empty gradebook there: no assignment has a due date yet
    from nbgrader.api import Gradebook, MissingEntry

    found = {}
    with Gradebook(url) as gradebook:
        for name in names:
            try:
                due = gradebook.find_assignment(name).duedate
            except MissingEntry:
                continue
            if due is not None:
                found[name] = due
    return found


def _settings(app) -> str:
    """The course folder as nbgrader sees it: the course id, the folder ``nbgrader collect`` fills, the gradebook."""
    coursedir = app.coursedir
    submitted = Path(coursedir.format_path(coursedir.submitted_directory, ".", ".")).resolve()
    return json.dumps({"course_id": coursedir.course_id, "submitted": str(submitted), "db_url": coursedir.db_url})


def _assign_late_penalties(app, late: list) -> None:
    """nbgrader's own ``AssignLatePenalties`` (its ``LateSubmissionPlugin``, as configured) on each
    ``[student, assignment]`` of ``late``, as ``nbgrader autograde`` runs it on a late submission."""
    import nbformat as nbf
    from nbgrader.api import Gradebook
    from nbgrader.preprocessors import AssignLatePenalties

    penalties = AssignLatePenalties(parent=app)
    with Gradebook(app.coursedir.db_url) as gradebook:
        notebooks = {(s, a): [n.name for n in gradebook.find_submission(a, s).notebooks] for s, a in late}
    for (student, assignment), names in notebooks.items():
        for name in names:
            db = {"notebook": name, "assignment": assignment, "student": student, "db_url": app.coursedir.db_url}
            penalties.preprocess(nbf.v4.new_notebook(), {"nbgrader": db})


def _main(argv: list[str]) -> int:
    """``python -m int8lab.grading.course ROOT COMMAND [ASSIGNMENT ...]``, in the course folder ROOT:
    ``generate_assignment A ...`` and ``generate_feedback A ...`` (nbgrader's, with --force and the ``--...``
    options among the arguments), ``settings``
    (prints ``_settings`` as JSON) and ``assign_late_penalties`` (reads ``[[student, assignment], ...]`` as
    JSON on stdin)."""
    from nbgrader import apps
    from nbgrader.apps.baseapp import NbGrader

    root, command = Path(argv[0]), argv[1]
    names, options = [a for a in argv[2:] if not a.startswith("--")], [a for a in argv[2:] if a.startswith("--")]
    os.chdir(root)  # this process's own: nbgrader reads nbgrader_config.py from here
    if command in ("settings", "assign_late_penalties"):
        app = NbGrader()
        app.raise_config_file_errors = True  # nbgrader would go on without a configuration that fails to load
        app.initialize([])
        if command == "settings":
            print(_settings(app))
        else:
            _assign_late_penalties(app, json.load(sys.stdin))
        return 0
    app_class = {"generate_assignment": apps.GenerateAssignmentApp, "generate_feedback": apps.GenerateFeedbackApp}
    for name in names:
        app = app_class[command]()
        app.initialize([name, "--force", *options])
        app.start()
        app_class[command].clear_instance()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
