"""The nbgrader exchange cycle around int8lab grade, through nbgrader's own commands and exchange folder.

An instructor and two students, each with a home folder (and so a Jupyter configuration and an exchange
cache) of their own: generate, release, fetch, submit, collect, ``int8lab grade``, a grade by hand written as
formgrader writes it, ``int8lab feedback``, ``release_feedback``, ``fetch_feedback`` and ``export``. Ada
submits before the due date; Bob after it, and the course configures nbgrader's late penalty. Then, on the
same course: ruff leaves the graded folder alone in a repository (make lint), and a page nbgrader cannot write
costs one line and exit status 1, not the other pages. Then, in Chromium, each student's fetched page opened
alone and offline shows its math typeset. Before it, where the course id comes from.
"""

from __future__ import annotations

import csv
import datetime
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from sample_submissions import solution_sources

from int8lab.grading import course as course_module

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: One derivation graded by hand (3 points) and 11 autograded points.
ASSIGNMENT, NOTEBOOK, DERIVATION = "03_biases", "biases", "derivation_bias_scale"
AUTOGRADED_POINTS, MANUAL_POINTS = 11.0, 2.5
#: Not int8lab's default: the id set in the users' own configuration must be the one every command uses.
COURSE_ID = "quant101"
ON_TIME, LATE = "ada", "bob"
#: A phrase each student writes into the derivation, to tell whose page a student fetched.
SIGNATURE = "Derivation signed by {}-7q"
GRADE_OPTIONS = ["--workers", "2", "--skip-demos", "--timeout", "30", "--notebook-timeout", "300", "--disk", "64"]


def _environment(home: Path) -> dict:
    """Everything nbgrader reads of a user: the home folder, the Jupyter folders in it, and this venv first."""
    return {
        **os.environ,
        "HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
        "JUPYTER_DATA_DIR": str(home / ".local" / "share" / "jupyter"),
        "JUPYTER_RUNTIME_DIR": str(home / ".local" / "share" / "jupyter" / "runtime"),
        "PATH": os.pathsep.join([str(BIN), os.environ["PATH"]]),
    }


def _start(command: list[str], cwd: Path, home: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=cwd, env=_environment(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(process: subprocess.Popen, step: str) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, f"{step} failed (exit {process.returncode}):\n{output[-4000:]}"
    return output


def _run(command: list[str], cwd: Path, home: Path, step: str) -> str:
    return _finish(_start(command, cwd, home), step)


def _nbgrader(*argv: str) -> list[str]:
    return [str(BIN / "nbgrader"), *argv]


def _write_config(home: Path, **settings) -> None:
    """The user's ~/.jupyter/nbgrader_config.py, as nbgrader's JupyterHub guide writes one."""
    lines = [f"c.{key.replace('__', '.')} = {value!r}" for key, value in settings.items()]
    (home / ".jupyter").mkdir(parents=True)
    (home / ".jupyter" / "nbgrader_config.py").write_text("\n".join(["c = get_config()  # noqa: F821", *lines, ""]))


def _answer(path: Path, student: str) -> None:
    """The fetched notebook with every answer written in, the derivation signed by ``student``."""
    nb = nbformat.read(path, as_version=4)
    answers = solution_sources(ASSIGNMENT)
    for cell in nb.cells:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id]
        if grade_id == DERIVATION:
            cell.source += "\n\n" + SIGNATURE.format(student)
    nbformat.write(nb, path)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _course_folder(root: Path, *lines: str) -> Path:
    """A course folder with the repository's nbgrader configuration, and ``lines`` of the instructor's after it."""
    folder = root / "autograder"
    folder.mkdir(parents=True)
    config = (ROOT / "autograder" / "nbgrader_config.py").read_text()
    (folder / "nbgrader_config.py").write_text("\n".join([config, *lines, ""]))
    return folder


@pytest.mark.parametrize(
    ("users_id", "course_folders_id", "expected"),
    [
        (None, None, course_module.DEFAULT_COURSE_ID),
        ("quant101", None, "quant101"),  # nbgrader's JupyterHub guide sets it in ~/.jupyter: it must win
        ("quant101", "quant102", "quant102"),  # as nbgrader ranks them: the course folder's file is read last
    ],
)
def test_the_course_id_is_the_instructors(tmp_path, monkeypatch, users_id, course_folders_id, expected):
    """The id nbgrader sees in the course folder, and in OUT, whose configuration loads the course folder's."""
    from nbgrader.apps.baseapp import NbGrader

    home = tmp_path / "home"
    home.mkdir()
    if users_id:
        _write_config(home, CourseDirectory__course_id=users_id)
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(home / ".jupyter"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # nbgrader puts the folder it runs in on it
    lines = [f"c.CourseDirectory.course_id = {course_folders_id!r}"] if course_folders_id else []
    folder = _course_folder(tmp_path / "course", *lines)
    out = tmp_path / "graded"
    out.mkdir()
    course_module.write_config(out, folder / "nbgrader_config.py")
    seen = {}
    for where in (folder, out):
        monkeypatch.chdir(where)  # as nbgrader runs: it reads nbgrader_config.py in its working folder
        app = NbGrader()
        app.raise_config_file_errors = True
        app.initialize([])
        seen[where.name] = app.coursedir.course_id
    assert seen == {"autograder": expected, "graded": expected}


@pytest.fixture(scope="module")
def cycle(tmp_path_factory) -> SimpleNamespace:
    """The cycle, run once for the module's tests: up to the students' fetch_feedback and nbgrader's export."""
    tmp_path = tmp_path_factory.mktemp("exchange")
    course, exchange = tmp_path / "course", tmp_path / "exchange"
    homes = {name: tmp_path / "home" / name for name in ("instructor", ON_TIME, LATE)}
    # A fresh clone of the course for one assignment: its source, and the repository's nbgrader configuration
    # with the course's own setting of nbgrader's late penalty.
    shutil.copytree(ROOT / "solutions" / ASSIGNMENT, course / "solutions" / ASSIGNMENT)
    _course_folder(course, 'c.LateSubmissionPlugin.penalty_method = "zero"')
    # The course id and the exchange, in each user's own configuration (nbgrader's JupyterHub guide).
    _write_config(homes["instructor"], CourseDirectory__course_id=COURSE_ID, Exchange__root=str(exchange))
    for student in (ON_TIME, LATE):
        _write_config(
            homes[student],
            CourseDirectory__course_id=COURSE_ID,
            CourseDirectory__student_id=student,
            Exchange__root=str(exchange),
        )
    instructor, autograder, graded = homes["instructor"], course / "autograder", course / "graded"

    _run(_nbgrader("generate_assignment", ASSIGNMENT), autograder, instructor, "generate_assignment")
    _run(_nbgrader("release_assignment", ASSIGNMENT), autograder, instructor, "release_assignment")
    fetching = {s: _start(_nbgrader("fetch_assignment", ASSIGNMENT), homes[s], homes[s]) for s in (ON_TIME, LATE)}
    for student, process in fetching.items():
        _finish(process, f"fetch_assignment by {student}")
        _answer(homes[student] / ASSIGNMENT / f"{NOTEBOOK}.ipynb", student)

    # Ada submits; the due date is set in the course's gradebook after her submission and before Bob's, as
    # formgrader's Manage Assignments sets it (nbgrader's API; `nbgrader db assignment add --duedate` too).
    _run(_nbgrader("submit", ASSIGNMENT), homes[ON_TIME], homes[ON_TIME], f"submit by {ON_TIME}")
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{autograder / 'gradebook.db'}") as gradebook:
        gradebook.update_or_create_assignment(ASSIGNMENT, duedate=datetime.datetime.now(datetime.UTC).isoformat())
    _run(_nbgrader("submit", ASSIGNMENT), homes[LATE], homes[LATE], f"submit by {LATE}")
    _run(_nbgrader("collect", ASSIGNMENT), autograder, instructor, "collect")

    # No SUBMISSIONS: the folder that nbgrader collect filled, found through the course's configuration.
    grade = [str(BIN / "int8lab"), "grade", "--out", "graded", *GRADE_OPTIONS]
    summary = _run(grade, course, instructor, "int8lab grade")
    log = (graded / "grading.log").read_text()

    # A grade by hand, written as formgrader's API writes it (nbgrader's GradeHandler.put).
    with Gradebook(f"sqlite:///{graded / 'gradebook.db'}") as gradebook:
        grade_by_hand = gradebook.find_grade(DERIVATION, NOTEBOOK, ASSIGNMENT, ON_TIME)
        grade_by_hand.manual_score = MANUAL_POINTS
        grade_by_hand.needs_manual_grade = False
        gradebook.db.commit()

    # A relative path, as the README writes it.
    _run([str(BIN / "int8lab"), "feedback", "graded"], course, instructor, "int8lab feedback")
    _run(_nbgrader("release_feedback", ASSIGNMENT), graded, instructor, "release_feedback")
    # The students fetch their pages while the instructor exports the grades.
    fetching = {s: _start(_nbgrader("fetch_feedback", ASSIGNMENT), homes[s], homes[s]) for s in (ON_TIME, LATE)}
    exporting = _start(_nbgrader("export"), graded, instructor)
    for student, process in fetching.items():
        _finish(process, f"fetch_feedback by {student}")
    _finish(exporting, "export")
    return SimpleNamespace(course=course, graded=graded, homes=homes, summary=summary, log=log)


def test_the_exchange_cycle_around_int8lab_grade(cycle):
    course, graded, homes, instructor = cycle.course, cycle.graded, cycle.homes, cycle.homes["instructor"]
    summary, log = cycle.summary, cycle.log
    assert f"late, with nbgrader's late penalty: {LATE}/{ASSIGNMENT}" in summary, summary[-3000:]
    phases = ["reading the course", "intake", "checking the grader, the course template beside it"]
    phases += ["keeping the submissions", "grading", "gradebook", "reports", "feedback"]
    assert [line.split(":")[0] for line in log.splitlines() if line.startswith("phase ")] == [
        f"phase {name}" for name in phases
    ], log

    # Each student fetched one page, their own: it carries their signature and not the other's.
    fetched = {}
    for student, other in ((ON_TIME, LATE), (LATE, ON_TIME)):
        pages = sorted((homes[student] / ASSIGNMENT / "feedback").rglob("*.html"))
        assert [page.name for page in pages] == [f"{NOTEBOOK}.html"], pages
        text = pages[0].read_text()
        assert SIGNATURE.format(student) in text and SIGNATURE.format(other) not in text, student
        fetched[student] = text
    # Ada's page came after the grade by hand; Bob's shows nbgrader's penalty.
    assert f"{NOTEBOOK} (Score: {AUTOGRADED_POINTS + MANUAL_POINTS} / 14.0)" in fetched[ON_TIME]
    assert f"Late submission penalty (Score: -{AUTOGRADED_POINTS})" in fetched[LATE]

    # nbgrader's export (grades.csv) and int8lab's own table lie side by side: neither overwrote the other.
    assert _rows(graded / "int8lab-grades.csv") == [
        {"student_id": student, "assignment": ASSIGNMENT, "score": "11", "max_score": "11", "status": "ok"}
        for student in (ON_TIME, LATE)
    ]
    # nbgrader's export: the points by hand, the submission times, and Bob's penalty (the whole score).
    exported = {row["student_id"]: row for row in _rows(graded / "grades.csv")}
    on_time, late = exported[ON_TIME], exported[LATE]
    assert float(on_time["raw_score"]) == AUTOGRADED_POINTS + MANUAL_POINTS, on_time
    assert float(on_time["late_submission_penalty"]) == 0 and float(on_time["score"]) == float(on_time["raw_score"])
    assert float(late["raw_score"]) == AUTOGRADED_POINTS, late
    assert float(late["late_submission_penalty"]) == AUTOGRADED_POINTS and float(late["score"]) == 0, late
    when = {name: datetime.datetime.fromisoformat(row["timestamp"]) for name, row in exported.items()}
    due_date = datetime.datetime.fromisoformat(on_time["duedate"])
    assert when[ON_TIME] < due_date < when[LATE], (on_time, late)

    # In a repository, ruff leaves the course folder alone (make lint), whatever its name.
    subprocess.run(["git", "init", "-q", str(course)], check=True)
    shutil.copy(ROOT / "pyproject.toml", course)
    for check in (["check"], ["format", "--check"]):
        linted = subprocess.run([str(BIN / "ruff"), *check, "."], cwd=course, capture_output=True, text=True)
        assert linted.returncode == 0, linted.stdout[-3000:]

    # A page nbgrader cannot write: one line, no traceback, a non-zero exit; the other page is written, math typeset.
    (graded / "autograded" / LATE / ASSIGNMENT / f"{NOTEBOOK}.ipynb").write_text("{not json")
    failed = subprocess.run(
        [str(BIN / "int8lab"), "feedback", "graded"],
        cwd=course,
        env=_environment(instructor),
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1, failed.stderr
    assert (
        failed.stderr.startswith("int8lab feedback: feedback: nbgrader generate_feedback")
        and "Traceback" not in failed.stderr
    )
    assert len(failed.stderr.splitlines()) == 1, failed.stderr
    assert f"for student '{LATE}'; nbformat.reader.NotJSONError" in failed.stderr, failed.stderr  # what and who
    rewritten = (graded / "feedback" / ON_TIME / ASSIGNMENT / f"{NOTEBOOK}.html").read_text()
    assert SIGNATURE.format(ON_TIME) in rewritten and "<math " in rewritten


@pytest.mark.browser
def test_a_fetched_page_opened_alone_shows_its_math_typeset(cycle, tmp_path):
    """Each student's fetched page, copied into an empty folder and opened offline in Chromium: its math is
    drawn as MathML (no script, no file beside it), as much of it as the instructor's own copy has."""
    from browser_support import chromium, screenshot
    from test_mathml import typeset_math_elements

    with chromium() as browser:
        for student in (ON_TIME, LATE):
            fetched = next((cycle.homes[student] / ASSIGNMENT / "feedback").rglob(f"{NOTEBOOK}.html"))
            alone = tmp_path / student / fetched.name
            alone.parent.mkdir()
            shutil.copy(fetched, alone)
            expected = fetched.read_text().count("<math ")
            context = browser.new_context(offline=True)
            page = context.new_page()
            requests = []
            page.on("request", lambda request, seen=requests: seen.append(request.url))
            page.goto(alone.as_uri())
            drawn = typeset_math_elements(page)
            screenshot(page, f"exchange-fetched-{student}")
            context.close()
            assert expected >= 20 and drawn["math"] == drawn["drawn"] == expected, (student, expected, drawn)
            assert drawn["fractions_drawn"] >= 5, (student, drawn)  # laid out as MathML, not as a line of text
            assert [url for url in requests if not url.startswith("file:")] == [], requests
