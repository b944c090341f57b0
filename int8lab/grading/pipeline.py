"""``int8lab grade``: autograde a class with nbgrader, one sandboxed kernel per submission, N at a time.

Layout of OUT (an nbgrader course folder: formgrader, manual grading and ``nbgrader export``
work in it):

    OUT/nbgrader_config.py  OUT/gradebook.db  OUT/source/  OUT/release/
    OUT/submitted/<student>/<assignment>/     what the student handed in, untouched
    OUT/autograded/<student>/<assignment>/    the rebuilt, executed notebook
    OUT/feedback/<student>/<assignment>/<notebook>.html
    OUT/grades.csv  OUT/tests.csv  OUT/grading.log

Each submission is graded in a scratch copy of the course (OUT/.work/jobs/...) by its own
``nbgrader autograde`` process; its kernel runs in the sandbox (``sandbox.py``) and can read
nothing of the course but the folder it runs in.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from . import notebooks as nbtools
from .integrity import LOCKED_CELLS_ENV

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = Path(__file__).resolve().parents[1]
SANDBOX_SCRIPT = Path(__file__).resolve().with_name("sandbox.py")
KERNEL_NAME = "int8lab-sandbox"
STATUSES = ("ok", "timeout", "kernel_died", "invalid_notebook", "missing", "error")
MAX_ZIP_BYTES = 2 << 30  # refuse archives that expand beyond 2 GiB
GRADES_HEADER = ["student_id", "assignment", "score", "max_score", "status"]
TESTS_HEADER = ["student_id", "assignment", "grade_id", "score", "max_score", "message"]


class GradingError(RuntimeError):
    """The grader itself cannot run (bad input folder, broken course); nothing was graded."""


@dataclass(frozen=True)
class Limits:
    cell_timeout: int = 60
    notebook_timeout: int = 600
    memory_bytes: int = 6 << 30
    processes: int = 128


@dataclass
class Assignment:
    """One assignment of the course: its grading source notebook and what its cells are worth."""

    name: str
    notebook: str
    source: object  # the source notebook with integrity checks
    cells: list[tuple[str, float, bool]]  # (grade_id, points, autograded) in notebook order
    release: object = None  # nbgrader's release of ``source``, set once the template course exists

    @property
    def autograded_points(self) -> float:
        return sum(points for _, points, auto in self.cells if auto)


@dataclass
class Job:
    student: str
    assignment: str
    notebook: Path | None
    status: str = "ok"
    reason: str = ""


@dataclass
class Result:
    job: Job
    status: str
    reason: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    workdir: Path | None = None
    sandbox: dict | None = None
    seconds: float = 0.0
    feedback_error: str = ""


# ----------------------------------------------------------------------------- the course


def load_assignments(solutions: Path, wanted: list[str] | None) -> dict[str, Assignment]:
    """The assignments under ``solutions`` (one notebook per folder); their releases come from ``build_course``."""
    found = {}
    for folder in sorted(p for p in solutions.iterdir() if p.is_dir() and not p.name.startswith(".")):
        notebooks = sorted(folder.glob("*.ipynb"))
        if len(notebooks) != 1 or (wanted and folder.name not in wanted):
            continue
        source = nbtools.with_integrity_checks(nbformat.read(notebooks[0], as_version=4))
        cells = []
        for cell in source.cells:
            meta = nbtools.nbgrader_meta(cell)
            if meta.get("grade"):
                cells.append((meta["grade_id"], float(meta.get("points", 0)), cell.cell_type == "code"))
        found[folder.name] = Assignment(folder.name, notebooks[0].name, source, cells)
    unknown = sorted(set(wanted or []) - set(found))
    if unknown:
        raise GradingError(f"no assignment named {', '.join(unknown)} in {solutions}; have {', '.join(found)}")
    if not found:
        raise GradingError(f"no assignments (one notebook per folder) in {solutions}")
    return found


def write_course_config(root: Path, extra: str = "") -> None:
    (root / "nbgrader_config.py").write_text(
        "c = get_config()  # noqa: F821\n"
        f"c.CourseDirectory.root = {str(root)!r}\n"
        f"c.CourseDirectory.db_url = {'sqlite:///' + str(root / 'gradebook.db')!r}\n"
        "c.CourseDirectory.course_id = 'int8lab'\n"
        "c.ClearSolutions.code_stub = {'python': '# YOUR CODE HERE\\nraise NotImplementedError()'}\n"
        "c.GenerateFeedback.preprocessors = ['int8lab.grading.feedback.RedactHiddenTests', "
        "'nbgrader.preprocessors.GetGrades', 'nbconvert.preprocessors.CSSHTMLHeaderPreprocessor']\n" + extra
    )


def build_course(root: Path, assignments: dict[str, Assignment]) -> None:
    """An nbgrader course at ``root`` with the grading sources and a gradebook that knows them."""
    root.mkdir(parents=True, exist_ok=True)
    write_course_config(root)
    for assignment in assignments.values():
        target = root / "source" / assignment.name / assignment.notebook
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(assignment.source, target)
    # In this process (nbgrader is imported once), one at a time: they share the gradebook.
    for assignment in assignments.values():
        code, output = _run_app("GenerateAssignmentApp", root, [assignment.name, "--force"])
        if code != 0:
            raise GradingError(f"nbgrader generate_assignment {assignment.name} failed in {root}:\n{output[-3000:]}")


def _run_app(name: str, root: Path, argv: list[str]) -> tuple[int, str]:
    """Run an nbgrader application in this process, in course folder ``root``; returns (code, log)."""
    import logging

    from nbgrader import apps

    app_class = getattr(apps, name)
    previous = os.getcwd()
    os.chdir(root)
    buffer = io.StringIO()
    app = app_class()
    code = 0
    try:
        app.initialize(argv)
        for handler in app.log.handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(buffer)
        app.start()
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    except Exception as exc:  # reported to the caller, which decides whether it is fatal
        code = 1
        buffer.write(f"\n{type(exc).__name__}: {exc}\n")
    finally:
        app_class.clear_instance()
        os.chdir(previous)
    return code, buffer.getvalue()


# ----------------------------------------------------------------------------- submissions


def open_submissions(path: Path, scratch: Path) -> Path:
    """The folder holding ``<student>/<assignment>/`` folders; a .zip is extracted (safely) first."""
    if not path.exists():
        raise GradingError(f"{path} does not exist")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise GradingError(f"{path} is neither a folder nor a .zip archive")
        target = scratch / "input"
        with zipfile.ZipFile(path) as archive:
            total = sum(info.file_size for info in archive.infolist())
            if total > MAX_ZIP_BYTES:
                raise GradingError(f"{path} expands to {total} bytes, more than the {MAX_ZIP_BYTES} allowed")
            for info in archive.infolist():
                destination = (target / info.filename).resolve()
                if not str(destination).startswith(str(target.resolve()) + os.sep) and destination != target.resolve():
                    raise GradingError(f"{path} holds an unsafe path: {info.filename}")
            archive.extractall(target)
        path = target
    return path


def _valid_name(name: str) -> bool:
    return bool(name) and not name.startswith(".") and "/" not in name and name not in {"__MACOSX"}


def find_jobs(root: Path, assignments: dict[str, Assignment]) -> list[Job]:
    """One job per (student, assignment) folder; the layout root is found even inside wrapper folders."""
    for _ in range(4):  # a zip may wrap the layout in a folder or two (e.g. submitted/)
        if any((student / name).is_dir() for student in root.iterdir() if student.is_dir() for name in assignments):
            break
        children = [child for child in root.iterdir() if child.is_dir() and _valid_name(child.name)]
        if len(children) != 1:
            break
        root = children[0]
    jobs = []
    for student in sorted(p for p in root.iterdir() if p.is_dir() and _valid_name(p.name)):
        for name, assignment in assignments.items():
            folder = student / name
            if not folder.is_dir():
                continue
            expected = folder / assignment.notebook
            others = sorted(p for p in folder.glob("*.ipynb") if p.is_file())
            if expected.is_file():
                jobs.append(Job(student.name, name, expected))
            elif len(others) == 1:
                jobs.append(Job(student.name, name, others[0], reason=f"graded {others[0].name} (renamed)"))
            else:
                jobs.append(Job(student.name, name, None, "missing", f"no {assignment.notebook} in {folder.name}/"))
    return jobs


# ----------------------------------------------------------------------------- one submission


def _kernel_paths(job_root: Path, run_dir: Path) -> tuple[list[str], list[str]]:
    from ..data import cache_dir

    read_only = [
        "/usr",
        "/lib",
        "/lib64",
        "/lib32",
        "/bin",
        "/sbin",
        "/etc",
        "/proc",
        "/sys",
        "/dev",
        "/opt",
        sys.base_prefix,
        sys.prefix,
        str(PACKAGE_DIR),
        str(cache_dir()),
        *[p for p in sys.path if p.endswith("site-packages")],
    ]
    read_write = [str(run_dir), str(job_root / "home"), "/dev/null"]
    return read_only, read_write


def prepare_job(job: Job, template: Path, work: Path, assignment: Assignment, limits: Limits, cgroup: Path | None):
    """A scratch course for one submission, with its sandboxed kernel spec; returns (root, env, sockets)."""
    from ..data import cache_dir

    root = work / f"{job.student}--{job.assignment}"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(template, root, ignore=shutil.ignore_patterns("release", "submitted", "autograded", "feedback"))
    home = root / "home"
    for sub in ("tmp", "ipython", "matplotlib", "runtime", "cache"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    run_dir = root / "autograded" / job.student / job.assignment
    run_dir.mkdir(parents=True, exist_ok=True)
    # Unix socket paths are limited to about 100 bytes, so the kernel's sockets get a short folder.
    sockets = Path(tempfile.mkdtemp(prefix="int8lab-k", dir=_short_temp_dir()))
    read_only, read_write = _kernel_paths(root, run_dir)
    read_write.append(str(sockets))
    launcher = [sys.executable, str(SANDBOX_SCRIPT), "--report", str(root / "sandbox.json")]
    launcher += ["--memory", str(limits.memory_bytes), "--processes", str(limits.processes)]
    launcher += ["--integrity-log", str(root / "integrity.log"), "--stderr", str(root / "kernel-stderr.log")]
    if cgroup:
        launcher += ["--cgroup", str(cgroup)]
    for path in read_only:
        launcher += ["--ro", path]
    for path in read_write:
        launcher += ["--rw", path]
    spec = root / "kernels" / "share" / "jupyter" / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [*launcher, "--", sys.executable, "-m", "int8lab.grading.kernel", "-f", "{connection_file}"],
                "display_name": "int8lab grading sandbox",
                "language": "python",
            }
        )
    )
    write_course_config(
        root,
        f"c.Execute.timeout = {limits.cell_timeout}\n"
        f"c.Execute.kernel_name = {KERNEL_NAME!r}\n"
        "c.Execute.interrupt_on_timeout = True\n"
        "c.KernelManager.transport = 'ipc'\n"
        f"c.KernelManager.ip = {str(sockets / 'k')!r}\n"
        "c.Autograde.create_student = True\n",
    )
    env = {
        **os.environ,
        "JUPYTER_PATH": str(root / "kernels" / "share" / "jupyter"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "IPYTHONDIR": str(home / "ipython"),
        "MPLCONFIGDIR": str(home / "matplotlib"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        # One thread per kernel: N kernels share the cores, and results do not depend on N.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        LOCKED_CELLS_ENV: ",".join(nbtools.locked_cell_hashes(assignment.source)),
        # The kernel's HOME is the scratch folder: name the model cache, or it would train again.
        "INT8LAB_CACHE": str(cache_dir()),
        "INT8LAB_NO_TRAINING": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.pop("INT8LAB_RESULTS", None)
    template_mpl = template / "matplotlib"
    if template_mpl.is_dir():
        shutil.copytree(template_mpl, home / "matplotlib", dirs_exist_ok=True)
    return root, env, sockets


def _short_temp_dir() -> str:
    """A temporary folder with a short path (not the previous job's TMPDIR, which a worker inherits)."""
    return "/tmp" if os.access("/tmp", os.W_OK) else tempfile.gettempdir()


def grade_one(job: Job, template: Path, work: Path, assignment: Assignment, limits: Limits, cgroups) -> Result:
    started = time.perf_counter()
    if job.status != "ok":
        return _failed(job, job.status, job.reason, started)
    try:
        student_nb = nbtools.read_submission(job.notebook)
    except nbtools.InvalidNotebook as exc:
        return _failed(job, "invalid_notebook", str(exc), started)
    rebuilt, notes = nbtools.rebuild_submission(student_nb, assignment.release)
    cgroup = cgroups.create(f"{job.student}--{job.assignment}", limits.processes) if cgroups else None
    sockets = None
    try:
        root, env, sockets = prepare_job(job, template, work, assignment, limits, cgroup)
        submitted = root / "submitted" / job.student / job.assignment / assignment.notebook
        submitted.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(rebuilt, submitted)
        code, log, killed = autograde_here(root, job, env, limits.notebook_timeout, cgroup)
    finally:
        if cgroup:
            cgroups.remove(cgroup)
        if sockets is not None:
            shutil.rmtree(sockets, ignore_errors=True)
    (root / "autograde.log").write_text(log)
    result = _collect(job, root, assignment, code, log, killed)
    if (root / "autograded" / job.student / job.assignment / assignment.notebook).exists():
        result.feedback_error = feedback_here(root, job)
    result.reason = "; ".join(filter(None, [result.reason, job.reason, *notes]))
    result.seconds = time.perf_counter() - started
    return result


def autograde_here(root: Path, job: Job, env: dict, timeout: float, cgroup: Path | None) -> tuple[int, str, bool]:
    """Run nbgrader's autograde for one submission in this (worker) process; returns (code, log, killed).

    A worker process grades one submission at a time, so it may set the environment the
    kernel inherits and change folder. A watchdog kills the kernel when the whole notebook
    runs past ``timeout``; nbgrader then sees a dead kernel and the job reports a timeout.
    """
    import threading

    os.environ.clear()
    os.environ.update(env)
    tempfile.tempdir = env["TMPDIR"]  # the connection file goes there; the sandbox lets the kernel read it
    killed = threading.Event()

    def stop_kernel():
        killed.set()
        for pid in _kernel_pids(cgroup):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    watchdog = threading.Timer(timeout, stop_kernel)
    watchdog.daemon = True
    watchdog.start()
    try:
        code, log = _run_app("AutogradeApp", root, [job.assignment, "--student", job.student, "--force"])
    finally:
        watchdog.cancel()
    return code, log, killed.is_set()


def feedback_here(root: Path, job: Job) -> str:
    """nbgrader generate_feedback for this one submission, in this worker process ('' or the error)."""
    code, log = _run_app("GenerateFeedbackApp", root, [job.assignment, "--student", job.student, "--force"])
    return "" if code == 0 else "generate_feedback failed: " + " | ".join(log.strip().splitlines()[-2:])


def _kernel_pids(cgroup: Path | None) -> list[int]:
    if cgroup is not None and (cgroup / "cgroup.procs").exists():
        return [int(pid) for pid in (cgroup / "cgroup.procs").read_text().split()]
    import psutil

    return [child.pid for child in psutil.Process().children(recursive=True)]


def _failed(job: Job, status: str, reason: str, started: float) -> Result:
    return Result(job, status, reason, seconds=time.perf_counter() - started)


def _collect(job: Job, root: Path, assignment: Assignment, code: int, log: str, killed: bool) -> Result:
    from nbgrader.api import Gradebook, MissingEntry

    sandbox = None
    report = root / "sandbox.json"
    if report.exists() and report.read_text().strip():
        sandbox = json.loads(report.read_text().strip().splitlines()[-1])
    executed = root / "autograded" / job.student / job.assignment / assignment.notebook
    result = Result(job, "ok", workdir=root, sandbox=sandbox)
    if killed:
        result.status, result.reason = "timeout", "the notebook ran longer than the limit and was stopped"
    elif "DeadKernelError" in log or "Kernel died" in log or "kernel died" in log:
        result.status, result.reason = "kernel_died", "the kernel died (crash, os._exit, kill or memory exhausted)"
    elif "UnresponsiveKernelError" in log or "became unresponsive" in log:
        result.status, result.reason = "timeout", "a cell ran past its time limit and could not be interrupted"
    elif code != 0 or not executed.exists():
        tail = [line for line in log.strip().splitlines() if line.strip()][-3:]
        result.status, result.reason = "error", "nbgrader autograde failed: " + " | ".join(tail)
    if result.status != "ok" and not executed.exists():
        return result
    graded = nbformat.read(executed, as_version=4)
    for cell in graded.cells:
        meta = nbtools.nbgrader_meta(cell)
        if meta.get("grade") and cell.cell_type == "code":
            result.messages[meta["grade_id"]] = nbtools.failure_message(cell)
    outputs = [o for cell in graded.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    if result.status == "ok":
        if any(o.get("ename") == "CellTimeoutError" for o in outputs):
            result.status, result.reason = "timeout", "a cell ran past its time limit and was interrupted"
        elif any(o.get("ename") == "MemoryError" or "can't allocate memory" in o.get("evalue", "") for o in outputs):
            result.status, result.reason = "error", "a cell ran out of memory (the sandbox's memory limit)"
    try:
        with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
            submission = gradebook.find_submission(job.assignment, job.student)
            for notebook in submission.notebooks:
                for grade in notebook.grades:
                    if grade.auto_score is not None:
                        result.scores[grade.name] = float(grade.auto_score)
    except MissingEntry:
        pass
    tampering = root / "integrity.log"
    if tampering.exists() and tampering.read_text().strip():
        finding = tampering.read_text().strip().splitlines()[0]
        result.reason = "tampering detected"
        # Whatever passed after the tools were swapped cannot be trusted: no autograded points.
        # The scratch gradebook is changed too, so that feedback and the merged gradebook agree.
        with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
            for grade_id, _, auto in assignment.cells:
                if not auto:
                    continue
                result.scores[grade_id] = 0.0
                if "tampering detected" not in result.messages.get(grade_id, ""):
                    result.messages[grade_id] = finding
                try:
                    notebook = Path(assignment.notebook).stem
                    gradebook.find_grade(grade_id, notebook, job.assignment, job.student).auto_score = 0.0
                except MissingEntry:
                    pass
            gradebook.db.commit()
    return result


# ----------------------------------------------------------------------------- cgroups


class PidsCgroups:
    """Per-submission pids cgroups (v1 or v2), when this machine lets us make them."""

    def __init__(self, base: Path):
        self.base = base

    @classmethod
    def available(cls) -> PidsCgroups | None:
        """A parent group for this run, or None when no writable pids controller exists (then RLIMIT_NPROC)."""
        for candidate, unified in ((Path("/sys/fs/cgroup/pids"), False), (Path("/sys/fs/cgroup"), True)):
            controllers = candidate / "cgroup.controllers"
            if not candidate.is_dir() or (
                unified and (not controllers.exists() or "pids" not in controllers.read_text())
            ):
                continue
            base = candidate / f"int8lab-{os.getpid()}"
            try:
                base.mkdir(exist_ok=True)
                if unified:
                    (base / "cgroup.subtree_control").write_text("+pids")
                probe = base / "probe"
                probe.mkdir(exist_ok=True)
                (probe / "pids.max").write_text("8")
                probe.rmdir()
                return cls(base)
            except OSError:
                try:
                    base.rmdir()
                except OSError:
                    pass
        return None

    def create(self, name: str, limit: int) -> Path | None:
        group = self.base / name
        try:
            group.mkdir(exist_ok=True)
            (group / "pids.max").write_text(str(limit))
            return group
        except OSError:
            return None

    def remove(self, group: Path) -> None:
        for process in (group / "cgroup.procs").read_text().split():
            try:
                os.kill(int(process), signal.SIGKILL)  # a kernel that outlived its grading
            except (ProcessLookupError, ValueError):
                pass
        for _ in range(50):
            try:
                group.rmdir()
                return
            except OSError:
                time.sleep(0.1)

    def close(self) -> None:
        try:
            self.base.rmdir()
        except OSError:
            pass


# ----------------------------------------------------------------------------- merging and reports


def merge_into_gradebook(out: Path, results: list[Result], assignments: dict[str, Assignment]) -> None:
    """Copy each graded submission into OUT's gradebook and folders; manual grades already there are kept."""
    import warnings

    from nbgrader.api import Gradebook, MissingEntry

    warnings.filterwarnings("ignore", module="nbgrader.api")  # SQLAlchemy's autoflush notes on add_submission
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as target:
        for result in results:
            job = result.job
            executed = None if result.workdir is None else result.workdir / "autograded" / job.student / job.assignment
            if executed is None or not executed.is_dir():
                continue  # nothing graded to keep (nbgrader removes what a dead kernel left)
            source_db = result.workdir / "gradebook.db"
            with Gradebook(f"sqlite:///{source_db}") as source:
                try:
                    submission = source.find_submission(job.assignment, job.student)
                except MissingEntry:
                    continue
                target.update_or_create_student(job.student)
                try:
                    target.find_submission(job.assignment, job.student)
                except MissingEntry:
                    target.add_submission(job.assignment, job.student, timestamp=submission.timestamp)
                for notebook in submission.notebooks:
                    for grade in notebook.grades:
                        kept = target.find_grade(grade.name, notebook.name, job.assignment, job.student)
                        kept.auto_score = grade.auto_score
                        if kept.manual_score is None:
                            kept.needs_manual_grade = grade.needs_manual_grade
                    for comment in notebook.comments:
                        kept_comment = target.find_comment(comment.name, notebook.name, job.assignment, job.student)
                        kept_comment.auto_comment = comment.auto_comment
                target.db.commit()
            destination = out / "autograded" / job.student / job.assignment
            if destination.exists():
                shutil.rmtree(destination)
            shutil.copytree(executed, destination)


def write_reports(out: Path, results: list[Result], assignments: dict[str, Assignment]) -> None:
    """grades.csv and tests.csv, sorted, with no timestamps or paths: the same input gives the same bytes."""
    grades, tests = io.StringIO(), io.StringIO()
    grade_writer = csv.writer(grades, lineterminator="\n")
    test_writer = csv.writer(tests, lineterminator="\n")
    grade_writer.writerow(GRADES_HEADER)
    test_writer.writerow(TESTS_HEADER)
    for result in sorted(results, key=lambda r: (r.job.student, r.job.assignment)):
        job, assignment = result.job, assignments[result.job.assignment]
        total = 0.0
        for grade_id, points, auto in assignment.cells:
            if not auto:
                test_writer.writerow([job.student, job.assignment, grade_id, "", _points(points), "graded by hand"])
                continue
            score = result.scores.get(grade_id, 0.0)
            total += score
            message = result.messages.get(grade_id, "")
            if result.status in {"missing", "invalid_notebook"} or (result.status != "ok" and not result.scores):
                message = message or f"{result.status}: {result.reason}"
            test_writer.writerow([job.student, job.assignment, grade_id, _points(score), _points(points), message])
        grade_writer.writerow(
            [job.student, job.assignment, _points(total), _points(assignment.autograded_points), result.status]
        )
    (out / "grades.csv").write_text(grades.getvalue())
    (out / "tests.csv").write_text(tests.getvalue())


def _points(value: float) -> str:
    return f"{value:g}"


def collect_feedback(out: Path, results: list[Result], assignments: dict[str, Assignment]) -> list[str]:
    """Move each submission's feedback page to OUT/feedback, unless it shows a hidden-test line."""
    problems = []
    for result in results:
        if result.workdir is None:
            continue
        job, assignment = result.job, assignments[result.job.assignment]
        if result.feedback_error:
            problems.append(f"{job.student}/{job.assignment}: {result.feedback_error}")
        name = Path(assignment.notebook).with_suffix(".html").name
        page = result.workdir / "feedback" / job.student / job.assignment / name
        graded = result.workdir / "autograded" / job.student / job.assignment / assignment.notebook
        if not page.exists() or not graded.exists():
            continue
        # Lines that only occur inside hidden regions of this very notebook (the student's own code excluded).
        secret = nbtools.hidden_lines(nbformat.read(graded, as_version=4))
        shown = {line.strip() for line in visible_text(page.read_text()).splitlines()}
        leaked = secret & shown
        if leaked:
            problems.append(
                f"{job.student}/{job.assignment}: feedback withheld, it showed {len(leaked)} hidden line(s)"
            )
            continue
        destination = out / "feedback" / job.student / job.assignment / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(page, destination)
    return problems


def visible_text(page: str) -> str:
    """What a browser shows of an HTML page: tags stripped, entities decoded."""
    import html
    import re

    without_code = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S | re.I)
    return html.unescape(re.sub(r"<[^>]+>", "", without_code))


# ----------------------------------------------------------------------------- the command


def grade(
    submissions: Path,
    out: Path,
    workers: int = 2,
    limits: Limits | None = None,
    assignment_ids: list[str] | None = None,
    solutions: Path | None = None,
    keep_work: bool = False,
    progress: bool = True,
) -> list[Result]:
    """Grade every submission under ``submissions`` into the course folder ``out``; see the module docstring."""
    from tqdm.auto import tqdm

    from ..training import trained_model

    limits = limits or Limits()
    # nbgrader runs `alembic` for its database: it must find the scripts of this environment.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    out = out.resolve()  # nbgrader's course root must be absolute
    solutions = (solutions or REPO_ROOT / "solutions").resolve()
    if not solutions.is_dir():
        raise GradingError(f"the solution notebooks are not in {solutions}; pass --solutions DIR")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    log = open(out / "grading.log", "w")  # noqa: SIM115 (closed in finally)
    cgroups = PidsCgroups.available()
    try:
        assignments = load_assignments(solutions, assignment_ids)
        root = open_submissions(submissions.resolve(), work)
        jobs = find_jobs(root, assignments)
        if not jobs:
            raise GradingError(
                f"no submissions in {submissions}: expected <student_id>/<assignment_id>/<notebook>.ipynb "
                f"with an assignment among {', '.join(assignments)}"
            )
        # Grading never trains: the kernels only read these checkpoints.
        trained_model("digits", progress=progress)
        trained_model("digits", bias=True, progress=progress)
        phases = {"prepare": time.perf_counter()}
        template = work / "template"
        with ThreadPoolExecutor(1) as background:
            fonts = background.submit(_prebuild_matplotlib_cache, template / "matplotlib")
            build_course(template, assignments)
            fonts.result()
        for assignment in assignments.values():  # nbgrader's own release, checksums included
            assignment.release = nbformat.read(
                template / "release" / assignment.name / assignment.notebook, as_version=4
            )
        if not (out / "gradebook.db").exists() or not (out / "source").exists():
            for part in ("source", "release"):
                shutil.copytree(template / part, out / part, dirs_exist_ok=True)
            shutil.copy2(template / "gradebook.db", out / "gradebook.db")
        write_course_config(out)
        for job in jobs:
            if job.notebook is not None:
                destination = out / "submitted" / job.student / job.assignment
                destination.mkdir(parents=True, exist_ok=True)
                shutil.copy2(job.notebook, destination / job.notebook.name)
        phases["course"] = time.perf_counter()
        results: list[Result] = []
        with tqdm(total=len(jobs), desc="grading", unit="notebook", disable=not progress) as bar:
            # Fresh worker processes for every batch bound what nbgrader leaves behind in them
            # (max_tasks_per_child can deadlock on Python 3.11).
            batch_size = max(1, workers) * JOBS_PER_WORKER
            pending = []
            for start in range(0, len(jobs), batch_size):
                batch = jobs[start : start + batch_size]
                for _attempt in range(2):  # a crashed worker takes its pool down: retry the rest once
                    batch = _grade_in_pool(
                        batch, workers, template, work, assignments, limits, cgroups, results, log, bar
                    )
                    if not batch:
                        break
                pending += batch
            for job in pending:
                results.append(Result(job, "error", "the grading worker crashed twice on this submission"))
                bar.update()
        phases["grading"] = time.perf_counter()
        results.sort(key=lambda r: (r.job.student, r.job.assignment))
        merge_into_gradebook(out, results, assignments)
        phases["merge"] = time.perf_counter()
        problems = collect_feedback(out, results, assignments)
        phases["feedback"] = time.perf_counter()
        write_reports(out, results, assignments)
        marks = list(phases.items())
        log.write(
            "phases: "
            + ", ".join(
                f"{name} {end - start:.1f} s" for (_, start), (name, end) in zip(marks, marks[1:], strict=False)
            )
            + "\n"
        )
        for problem in problems:
            log.write(f"feedback: {problem}\n")
        _summary(results, problems, cgroups, time.perf_counter() - started, out, log)
        return results
    finally:
        log.close()
        if cgroups:
            cgroups.close()
        if not keep_work:
            shutil.rmtree(work / "jobs", ignore_errors=True)
            shutil.rmtree(work / "input", ignore_errors=True)


def _grade_in_pool(jobs, workers, template, work, assignments, limits, cgroups, results, log, bar) -> list[Job]:
    """Grade ``jobs`` in ``workers`` long-lived processes (nbgrader is imported once per process).

    Returns the jobs that could not finish because a worker process died.
    """
    import multiprocessing
    from concurrent.futures.process import BrokenProcessPool

    unfinished = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=context, initializer=_warm_worker) as pool:
        futures = {
            pool.submit(grade_one, job, template, work / "jobs", assignments[job.assignment], limits, cgroups): job
            for job in jobs
        }
        for future in as_completed(futures):
            job = futures[future]
            try:
                result = future.result()
            except BrokenProcessPool:
                unfinished.append(job)
                continue
            except Exception as exc:  # one broken submission never stops the others
                result = Result(job, "error", f"{type(exc).__name__}: {exc}")
            results.append(result)
            log.write(f"{job.student}/{job.assignment}: {result.status} ({result.seconds:.1f} s) {result.reason}\n")
            log.flush()
            bar.update()
    return unfinished


#: A worker is replaced after this many submissions, which bounds what nbgrader leaves behind.
JOBS_PER_WORKER = 10


def _warm_worker() -> None:
    import nbgrader.apps  # noqa: F401 (imported once, used by every submission this worker grades)
    import zmq

    # A kernel client's zmq context, collected later as garbage, can block forever in term()
    # waiting for sockets of a kernel that died. Contexts are left to the worker's exit instead.
    zmq.Context.__del__ = lambda self: None


def _prebuild_matplotlib_cache(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-c", "import matplotlib.font_manager"],
        env={**os.environ, "MPLCONFIGDIR": str(folder)},
        capture_output=True,
        timeout=300,
    )


def _summary(results: list[Result], problems: list[str], cgroups, seconds: float, out: Path, log) -> None:
    counts = Counter(result.status for result in results)
    sandbox = next((r.sandbox for r in results if r.sandbox), None)
    lines = [
        f"graded {len(results)} submission(s) in {seconds:.1f} s: "
        + ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s]),
    ]
    if sandbox:
        lines.append("sandbox enforced: " + "; ".join(sandbox["enforced"]))
        if sandbox["missing"]:
            lines.append("sandbox could NOT enforce: " + "; ".join(sandbox["missing"]))
    elif any(r.workdir for r in results):
        lines.append("sandbox: no report from any kernel")
    tampered = [f"{r.job.student}/{r.job.assignment}" for r in results if r.reason.startswith("tampering")]
    if tampered:
        lines.append("tampering detected in: " + ", ".join(tampered))
    lines += [f"feedback: {p}" for p in problems]
    lines.append(f"results: {out / 'grades.csv'}, {out / 'tests.csv'}, feedback in {out / 'feedback'}")
    text = "\n".join(lines)
    log.write(text + "\n")
    print(text, file=sys.stderr)
