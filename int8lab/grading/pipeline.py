"""``int8lab grade``: autograde a class, one sandboxed kernel per submission, N at a time.

The stages, each a module of this package:

    intake    find <student>/<assignment>/<notebook>.ipynb in a folder or a .zip
    rebuild   put each submission's answers into nbgrader's release; test cells become probes
    run       execute that notebook in a sandboxed kernel; take back its records
    judge     score the records in this (clean) process, against the source's hidden tests
    merge     scores into OUT's nbgrader gradebook, graded notebooks into OUT/autograded
    report    int8lab-grades.csv, int8lab-tests.csv, feedback pages, the summary

OUT is an nbgrader course folder: formgrader, manual grading and ``nbgrader export`` work in it, and so do
``release_feedback`` and ``fetch_feedback``: each submission's ``timestamp.txt`` and ``submission_secret.txt``
(from nbgrader's exchange) go with it into OUT/submitted and OUT/autograded, its time into the gradebook.
Without SUBMISSIONS, the folder that ``nbgrader collect`` fills in the course folder (``autograder/``
beside ``solutions/``, or ``course_dir``) is graded.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import nbformat

from . import course, feedback, intake, merge, report, run, selfcheck
from . import pages as feedback_pages
from .cgroups import PidsCgroups
from .cluster import connect, grade_on_dask
from .model import GradingError, Job, Limits, Result, Status
from .workers import grade_all


@dataclass
class Graded:
    """What ``grade`` did: a result per submission, and what failed after grading (the gradebook, the feedback
    pages), each a ``GradingError`` with one line to show and its details in grading.log."""

    results: list[Result]
    problems: list[GradingError] = field(default_factory=list)


class Phases:
    """The wall-clock seconds of each phase of a run, for grading.log."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def lines(self) -> str:
        return "".join(f"phase {name}: {seconds:.1f} s\n" for name, seconds in self.seconds.items())


def grade(
    submissions: Path | None,
    out: Path,
    workers: int = 2,
    limits: Limits | None = None,
    assignment_ids: list[str] | None = None,
    solutions: Path | None = None,
    keep_work: bool = False,
    progress: bool = True,
    dask: str | None = None,
    course_dir: Path | None = None,
) -> Graded:
    """Grade every submission under ``submissions`` into the course folder ``out``; see the module docstring.

    ``submissions``: a folder in nbgrader's submitted/ layout or a .zip of one; None for the folder that
    ``nbgrader collect`` fills in the course folder ``course_dir`` (default: autograder/ beside the solutions).

    ``dask``: None for the local process pool of ``workers`` processes; else the runs go to a Dask cluster,
    ``tcp://HOST:PORT`` of its scheduler or ``local`` (a LocalCluster of ``workers`` processes): see cluster.py.
    Raises ``GradingError`` when nobody could be graded; what fails later is in ``Graded.problems``.
    """
    started, limits, out, phases = time.perf_counter(), limits or Limits(), out.resolve(), Phases()
    with phases("reading the course"):
        solutions = course.find_solutions(solutions)
        assignments = course.load_assignments(solutions, assignment_ids)
        course_folder = course.find_course_folder(course_dir, solutions)
        submissions = _submissions_folder(submissions, course_folder)
    client, cluster = connect(dask, workers) if dask else (None, None)  # an unreachable scheduler fails now
    work = _fresh_folder(out / ".work")
    cgroups = PidsCgroups.available()
    try:
        with phases("intake"):
            jobs = intake.find_jobs(intake.open_submissions(submissions, work), assignments)
        if not jobs:
            raise GradingError(
                f"no submissions in {submissions}: expected <student_id>/<assignment_id>/<notebook>.ipynb "
                f"with an assignment among {', '.join(assignments)}"
            )
        # nbgrader builds the course template in a process of its own while the grader checks itself here.
        with phases("checking the grader, the course template beside it"), ThreadPoolExecutor(1) as beside:
            template = beside.submit(course.build_course, work / "template", assignments)
            limits = _check_the_grader(assignments, work, limits, cgroups, progress, kernel=dask is None)
            template.result()
        with phases("keeping the submissions"):
            course.prepare_out(out, work / "template", course_folder)
            _keep_submitted(out, jobs)
        tally, merging = None, None
        with phases("grading"):
            if client:  # the kernels run on the cluster's workers, each checked there first; merged as they come
                merging = _MergeWhileGrading(out, assignments, course_folder)
                try:
                    results, tally = grade_on_dask(client, jobs, assignments, limits, progress, merging.add)
                finally:
                    merging.finish()
            else:
                results = grade_all(jobs, assignments, work / "jobs", limits, cgroups, workers, progress)
        with phases("gradebook"):
            late, problems = _gradebook(out, results, assignments, course_folder, merging)
        with phases("reports"):
            report.write_reports(out, results, assignments)
        notes = _receipt_notes(results, late)
        with phases("feedback"):
            if problems:
                problems.append(GradingError("feedback: not written, since the gradebook failed"))
            else:  # pages only for what was handed in: nbgrader fails on an assignment that nobody submitted
                # The pages the workers rendered (late and hand-graded ones excepted, merge.py): nbgrader the rest.
                rendered = merging.rendered if merging else feedback_pages.write_pages(out, results)
                problems = _feedback(
                    out, sorted({r.job.assignment for r in results if r.graded_file is not None}), results, rendered
                )
        sandbox = next((r.sandbox for r in results if r.sandbox), None)
        if client:
            notes.append(
                f"feedback pages rendered on the Dask workers: {len(merging.rendered)}, by nbgrader here: the others"
            )
        lines = notes + [str(problem) for problem in problems]
        text = report.summary(results, sandbox, time.perf_counter() - started, out, lines, tally)
        log = _log(results) + phases.lines() + _step_medians(results, phases) + text + "\n" + _details(problems)
        (out / "grading.log").write_text(log)
        report.print_summary(text)
        return Graded(results, problems)
    finally:
        if client:
            client.close()
        if cluster:
            cluster.close()
        if cgroups:
            cgroups.close()
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)


#: How long the merging thread lets results gather before it merges them in one transaction. A transaction's
#: commit costs about 2.4 ms however many results it holds, each result about 0.6 ms more (bench_dask.py): at a
#: hundred results a second (sixteen machines) half a second gathers about fifty, and the client merges a result
#: in ~0.65 ms instead of ~3 ms alone. The last results wait at most this long after the last run.
GATHER_SECONDS = 0.5


class _MergeWhileGrading:
    """Merges the results into OUT's gradebook while the cluster grades, in a thread that keeps the gradebook open
    (``merge.Merger``), then writes the merged pages that the workers rendered. The thread lets the results gather
    for ``GATHER_SECONDS`` (or until ``merge.MERGE_BATCH`` wait), merges them as one transaction, and gathers
    again while results come: batches grow with the rate, and after the last run only the last half second's
    remain (at a thousand students, a fixed batch of 500 merged after the last run cost more than the runs on
    sixteen machines, and a transaction per result more client CPU than a core has: benchmarks/bench_dask.py)."""

    def __init__(self, out: Path, assignments: dict, course_folder):
        self.out, self.assignments, self.course_folder = out, assignments, course_folder
        self.thread, self.pending = ThreadPoolExecutor(1), []
        self.ready = threading.Condition()  # guards pending, gathering and finishing
        self.gathering = self.finishing = False
        self.late: list = []
        self.rendered: set = set()
        self.error: BaseException | None = None
        self.details = ""
        self.merger = None  # opened, used and closed in the thread (nbgrader's session belongs to one thread)

    def add(self, result: Result) -> None:
        if result.graded_file is None:
            return
        with self.ready:
            self.pending.append(result)
            if len(self.pending) >= merge.MERGE_BATCH:
                self.ready.notify()
            if self.gathering:
                return
            self.gathering = True
        self.thread.submit(self._gather_and_merge)

    def _gather_and_merge(self) -> None:
        while True:
            with self.ready:
                self.ready.wait_for(self._batch_ready, timeout=GATHER_SECONDS)
                batch, self.pending = self.pending[: merge.MERGE_BATCH], self.pending[merge.MERGE_BATCH :]
                if not batch:
                    self.gathering = False
                    return
            self._merge(batch)

    def _batch_ready(self) -> bool:
        return self.finishing or len(self.pending) >= merge.MERGE_BATCH

    def _merge(self, batch: list[Result]) -> None:
        if self.error is not None:
            return  # the gradebook failed: the problem is said once, nothing more is written
        try:
            if self.merger is None:
                due_dates = course.due_dates(self.course_folder, self.assignments)
                self.merger = merge.Merger(self.out, self.assignments, due_dates)
            self.late += self.merger.merge(batch)
            self.rendered |= feedback_pages.write_pages(self.out, batch)
            for result in batch:
                result.page = None  # written: a thousand pages need not stay in memory
        except Exception as exc:
            self.error, self.details = exc, traceback.format_exc()
            self._close()

    def _close(self) -> None:
        if self.merger is not None:
            self.merger.close()
            self.merger = None

    def finish(self) -> None:
        with self.ready:
            self.finishing = True  # what is pending is merged now, without waiting
            self.ready.notify()
        self.thread.submit(self._gather_and_merge)  # for results a gathering that just ended left behind
        self.thread.submit(self._close)  # before the gradebook step assigns nbgrader's late penalties
        self.thread.shutdown(wait=True)


def _gradebook(out: Path, results, assignments, course_folder, merged=None) -> tuple[list, list[GradingError]]:
    """The scores, times and due dates into OUT's gradebook (unless ``merged``, a ``_MergeWhileGrading``, did it
    already), then nbgrader's late penalties; the late submissions and the problems (the CSV files and the
    summary are written all the same)."""
    try:
        if merged is not None:
            if merged.error is not None:
                raise merged.error
            late = merged.late
        else:
            late = merge.merge(out, results, assignments, course.due_dates(course_folder, assignments))
        if late:  # nbgrader's LateSubmissionPlugin, as the course configures it
            course.nbgrader(out, "assign_late_penalties", stdin=json.dumps(late))
    except GradingError as exc:
        return [], [GradingError(f"gradebook: {exc}", exc.details)]
    except Exception as exc:  # the database (locked, damaged, of another nbgrader): said, never a traceback
        details = merged.details if merged is not None and merged.error is exc else traceback.format_exc()
        return [], [GradingError(f"gradebook: {out / 'gradebook.db'} could not be updated ({exc!r:.300})", details)]
    return late, []


def _details(problems: list[GradingError]) -> str:
    return "".join(f"\n{problem}\n{problem.details}\n" for problem in problems if problem.details)


def _submissions_folder(submissions: Path | None, course_folder) -> Path:
    """SUBMISSIONS, else the folder ``nbgrader collect`` fills in the course folder."""
    if submissions is not None:
        return submissions.resolve()
    if course_folder is None:
        raise GradingError(
            "no SUBMISSIONS given, and no nbgrader course folder (autograder/ with its nbgrader_config.py beside "
            "solutions/, or --course-dir) to find the ones nbgrader collect gathered: name the folder or .zip"
        )
    if not course_folder.submitted.is_dir():
        raise GradingError(
            f"nothing collected yet in {course_folder.submitted}: run `nbgrader collect ASSIGNMENT` in "
            f"{course_folder.config.parent}, or name the folder or .zip of the submissions"
        )
    return course_folder.submitted


def _receipt_notes(results: list[Result], late: list[tuple[str, str]]) -> list[str]:
    """Summary lines on the exchange's files: those left out, the late submissions, and the submissions whose
    feedback nbgrader's release_feedback cannot send (it stops at the first page without both files)."""
    graded = [r.job for r in results if r.graded_file is not None]
    notes = [f"{job.student}/{job.assignment}: {problem}" for job in graded for problem in job.receipt.problems]
    if late:
        notes.append("late, with nbgrader's late penalty: " + ", ".join(f"{s}/{a}" for s, a in sorted(late)))
    for assignment in sorted({job.assignment for job in graded}):
        jobs = [job for job in graded if job.assignment == assignment]
        lacking = sorted(job.student for job in jobs if job.receipt.timestamp is None or job.receipt.secret is None)
        if lacking and len(lacking) < len(jobs):  # some came through the exchange, these did not
            notes.append(
                f"{assignment}: {len(lacking)} submission(s) lack a valid timestamp.txt or submission_secret.txt; "
                f"nbgrader release_feedback stops at their pages: release the others with "
                f"--CourseDirectory.student_id_exclude={','.join(lacking)}"
            )
    return notes


def _fresh_folder(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def _check_the_grader(assignments, work: Path, limits: Limits, cgroups, progress: bool, kernel: bool = True) -> Limits:
    """Stop before grading anyone if the judge fails the reference solution or (``kernel``) no kernel can
    start on this machine. Returns ``limits`` with the isolation layers the check kernel got now required."""
    from ..training import trained_model

    trained_model(progress=progress)  # kernels only read the model cache
    trained_model(bias=True, progress=progress)
    trained_model(batch_norm=True, progress=progress)  # notebook 7's NetBN
    for name, assignment in assignments.items():
        try:
            assignment.expected = selfcheck.checked_reference(name, assignment.source)
        except AssertionError as exc:
            raise GradingError(str(exc)) from None
    if not kernel:
        return limits
    smoke = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(KERNEL_SMOKE_TEST)])
    done = run.execute(smoke, work / "kernel-check", kernel_check_limits(limits), cgroups)
    outputs = [o for c in done.executed.cells for o in c.get("outputs", [])]
    if done.status is not Status.OK or not any("kernel ready" in str(o.get("text", "")) for o in outputs):
        details = "; ".join(f"{o.get('ename')}: {o.get('evalue')}" for o in outputs if o.get("ename"))
        raise GradingError(
            f"a sandboxed kernel cannot run the lab ({done.status}: {done.reason or details}); nobody was graded.\n"
            f"kernel stderr:\n{done.stderr or '(empty)'}"
        )
    return replace(limits, required_layers=required_layers(done.sandbox))


#: The layers that keep a kernel from the machine, its network and the other kernels (report names' starts).
ISOLATION_LAYERS = (
    "user and network namespaces",
    "mount namespace",
    "PID namespace",
    "IPC namespace",
    "private root",
    "landlock",
    "seccomp filter",
)


def required_layers(sandbox: dict | None) -> tuple[str, ...]:
    """The ``ISOLATION_LAYERS`` that the check kernel's sandbox report names as enforced: every kernel must get
    them (a machine without some grades without them, as the summary says; it never loses them per kernel)."""
    enforced = (sandbox or {}).get("enforced", [])
    return tuple(layer for layer in ISOLATION_LAYERS if any(item.startswith(layer) for item in enforced))


KERNEL_SMOKE_TEST = "import int8lab, int8lab.grading.records, numpy, torch\nprint('kernel ready')"
#: The kernel check's own time limit: torch's first import on a loaded machine can take a minute, and
#: ``--timeout`` (a student's cell) may be a few seconds; the check must not stop the run for that.
KERNEL_CHECK_SECONDS = 120


def kernel_check_limits(limits: Limits) -> Limits:
    """``limits`` with the check's time limits: the sandbox checked is the students' (memory, disk, processes)."""
    seconds = max(limits.cell_timeout, KERNEL_CHECK_SECONDS)
    return replace(limits, cell_timeout=seconds, notebook_timeout=max(limits.notebook_timeout, seconds + 30))


def _keep_submitted(out: Path, jobs: list[Job]) -> None:
    """OUT/submitted keeps what each student handed in: the notebook, copied from a regular file only, and the
    exchange's files as parsed (``intake.write_receipt``), in place of what an earlier grading kept there."""
    for job in jobs:
        if job.notebook is None:
            continue
        try:
            data = intake.read_regular_file(job.notebook, intake.MAX_NOTEBOOK_BYTES)
        except intake.InvalidNotebook:
            continue
        destination = out / "submitted" / job.student / job.assignment
        destination.mkdir(parents=True, exist_ok=True)
        for stale in (intake.TIMESTAMP_FILE, intake.SECRET_FILE):
            (destination / stale).unlink(missing_ok=True)
        (destination / job.notebook.name).write_bytes(data)
        intake.write_receipt(destination, job.receipt)


def regenerate_feedback(out: Path, assignments: list[str] | None = None) -> list[GradingError]:
    """nbgrader's feedback pages for a graded course folder, their math typeset; returns the problems."""
    out = out.resolve()
    if not (out / "gradebook.db").is_file():
        return [GradingError(f"{out} is not a course folder graded by int8lab grade (it has no gradebook.db)")]
    graded = sorted({p.name for p in (out / "autograded").glob("*/*") if p.is_dir()})
    unknown = sorted(set(assignments or []) - set(graded))
    if unknown:
        return [GradingError(f"nothing graded in {out} for {', '.join(unknown)}; graded: {', '.join(graded)}")]
    return _feedback(out, sorted(set(assignments or graded)))


def _feedback(out: Path, assignments, results: list[Result] = (), rendered: set = frozenset()) -> list[GradingError]:
    """One nbgrader process per assignment for the pages that the Dask workers did not render (``rendered``:
    the ``(student, assignment)`` whose page ``pages.write_pages`` wrote), as many at once as this machine has
    cores: nbgrader's pages cost about 0.5 s each (see benchmarks/bench_dask.py)."""
    import os

    graded = {(r.job.student, r.job.assignment) for r in results if r.graded_file is not None}

    def pages(assignment: str) -> GradingError | None:
        done = sorted(student for student, name in rendered if name == assignment)
        if done and all((student, assignment) in rendered for student, name in graded if name == assignment):
            return None
        exclude = [f"--CourseDirectory.student_id_exclude={','.join(done)}"] if done else []
        try:
            course.nbgrader(out, "generate_feedback", assignment, *exclude)
        except GradingError as exc:
            return GradingError(f"feedback: {exc}", exc.details)
        return None

    names = list(assignments)
    with ThreadPoolExecutor(max_workers=max(1, min(len(names), os.cpu_count() or 1))) as threads:
        problems = [problem for problem in threads.map(pages, names) if problem]
    feedback.remove_mathjax_copies(out)
    return problems


def _step_medians(results: list[Result], phases: Phases) -> str:
    """Where a notebook's seconds go: the median of each step over the notebooks that ran (the page rendered in
    the worker among them), and the feedback phase's share after grading (writing the pages, and nbgrader's
    for late and hand-graded submissions: it writes them all at once, so only their mean is known)."""
    import statistics

    ran = [r for r in results if r.steps]
    if not ran:
        return ""
    names = dict.fromkeys(name for r in ran for name in r.steps)
    lines = [
        f"median per notebook, {name}: {statistics.median(r.steps.get(name, 0.0) for r in ran):.2f} s\n"
        for name in names
    ]
    lines.append(f"median per notebook, whole job: {statistics.median(r.seconds for r in ran):.2f} s\n")
    pages = phases.seconds.get("feedback", 0.0) / len(ran)
    return "".join(lines) + f"mean per notebook, feedback phase after grading: {pages:.2f} s\n"


def _log(results: list[Result]) -> str:
    return "".join(f"{r.job.student}/{r.job.assignment}: {r.status} ({r.seconds:.1f} s) {r.reason}\n" for r in results)
