"""int8lab grade --dask: a real `dask scheduler` and `dask worker`s on 127.0.0.1 grade like the local pool."""

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import psutil
import pytest
from sample_submissions import submission, write_submission

from classes import TIMEOUTS

ROOT = Path(__file__).resolve().parents[1]
DASK = str(Path(sys.executable).with_name("dask"))
# The hostile class's options (classes.py), so that a Dask run's rows can be compared with that class's.
GRADE = [sys.executable, "-m", "int8lab", "grade", *TIMEOUTS, "--skip-demos"]
GRADE += ["--solutions", str(ROOT / "solutions"), "--disk", "64", "--assignment", "01_weights"]
#: Four students of the hostile class (classes.py) and their status: graded again on Dask workers.
FROM_THE_HOSTILE_CLASS = {"perfect": "ok", "stubs": "ok", "mis_multiplied": "ok", "corrupt": "invalid_notebook"}
WRONG_MULTIPLIED = """
def quantized_weights(weights):
    scale = weights.abs().max().item() / 127
    return torch.clamp(torch.round(weights * scale), -128, 127), scale
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """A `dask scheduler` and `dask worker`s (nanny-less: killing one kills the worker), all on 127.0.0.1."""

    def __init__(self, base: Path, allowed_failures: int = 1):
        self.base, self.port = base, _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": str(allowed_failures)}
        self.scheduler = self._start([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(self.port)], env, "s")
        self.workers: dict[str, subprocess.Popen] = {}

    def _start(self, command, env, name) -> subprocess.Popen:
        log = open(self.base / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        return subprocess.Popen([*command, "--no-dashboard"], env=env, stdout=log, stderr=subprocess.STDOUT)

    def add_worker(self, name: str, cache: Path | None = None) -> None:
        env = {**os.environ, **({"INT8LAB_CACHE": str(cache)} if cache else {})}
        command = [DASK, "worker", self.address, "--name", name, "--nthreads", "1", "--no-nanny"]
        self.workers[name] = self._start([*command, "--host", "127.0.0.1"], env, name)

    def wait_for_workers(self, count: int) -> None:
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(count, timeout=60)

    def close(self) -> None:
        for process in [*self.workers.values(), self.scheduler]:  # nothing of theirs outlives the test
            process.kill()
            process.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path):
    running = Cluster(tmp_path)
    yield running
    running.close()


def _class(root: Path, students: int) -> dict[str, str]:
    """``students`` submissions of 01_weights: solved, stubs, a misconception and a corrupt file; the expected
    status of each."""
    expected = {}
    for index in range(students):
        name, kind = f"student{index:02d}", index % 4
        content = [submission("01_weights"), submission("01_weights", solved=False)][kind] if kind < 2 else None
        if kind == 2:
            content = submission("01_weights", append=WRONG_MULTIPLIED)
        if kind == 3:
            content = b'{"cells": [ {"cell_type": "code", '
        write_submission(root, name, "01_weights", content)
        expected[name] = "invalid_notebook" if kind == 3 else "ok"
    return expected


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_two_dask_workers_grade_row_for_row_like_the_local_pool(cluster, tmp_path, hostile_class):
    """Catches any difference judging on the workers makes (in their judge processes, answers sent back as
    plain data: verdicts, notebook, statuses, order), and a worker without the model cache: the second worker
    starts with an empty cache of its own, which the client ships to it. The local pool's rows are the hostile
    class's, for the same four submissions."""
    cluster.add_worker("alpha")
    cluster.add_worker("beta", cache=tmp_path / "beta-cache")
    for student in FROM_THE_HOSTILE_CLASS:
        shutil.copytree(
            hostile_class.submitted / student / "01_weights", tmp_path / "submitted" / student / "01_weights"
        )
    cluster.wait_for_workers(2)
    remote = subprocess.run(
        [
            *GRADE,
            str(tmp_path / "submitted"),
            "--out",
            str(tmp_path / "dask"),
            "--dask",
            cluster.address,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert remote.returncode == 0, remote.stderr[-3000:]
    for name in ("int8lab-grades.csv", "int8lab-tests.csv"):
        local = [
            row
            for row in _rows(hostile_class.out / name)
            if row["student_id"] in FROM_THE_HOSTILE_CLASS and row["assignment"] == "01_weights"
        ]
        assert len(local) >= 4 and _rows(tmp_path / "dask" / name) == local, name
    grades = {row["student_id"]: row for row in _rows(tmp_path / "dask" / "int8lab-grades.csv")}
    assert {student: row["status"] for student, row in grades.items()} == FROM_THE_HOSTILE_CLASS
    assert grades["perfect"]["score"] == grades["perfect"]["max_score"] != "0"  # a perfect one scored
    tally = next(line for line in remote.stderr.splitlines() if line.startswith("jobs run per Dask worker: "))
    assert "alpha (tcp://127.0.0.1:" in tally and "beta (tcp://127.0.0.1:" in tally, tally
    assert (
        sum(int(part.rsplit(": ", 1)[1]) for part in tally.split(": ", 1)[1].split(", ")) == 3
    )  # 3 notebooks ran (the corrupt one never leaves the client)
    assert any((tmp_path / "beta-cache" / "checkpoints").glob("Net-digits-*.pt"))  # shipped, not trained
    # Each worker forked its kernels from a fork server of its own (warm kernels, as in the local pool).
    for name, worker in cluster.workers.items():
        descendants = psutil.Process(worker.pid).children(recursive=True)
        assert sum("int8lab.grading.forkserver" in " ".join(p.cmdline()) for p in descendants) == 1, name
    # The pages came from the workers (pages.py), and are nbgrader's pages of the local run, byte for byte.
    assert "feedback pages rendered on the Dask workers: 3," in remote.stderr, remote.stderr[-3000:]
    for student in ("perfect", "stubs", "mis_multiplied"):
        page = Path("feedback", student, "01_weights", "weights.html")
        assert (tmp_path / "dask" / page).read_bytes() == (hostile_class.out / page).read_bytes(), page


def test_a_worker_killed_mid_grading_loses_and_repeats_no_student(cluster, tmp_path, float_net):
    """Catches a job lost with its worker (missing row or error status) and a job graded twice (a duplicate row
    or submission in the gradebook). The worker is killed while it runs a grading task."""
    from distributed import Client

    for name in ("alpha", "beta"):
        cluster.add_worker(name)
    expected = _class(tmp_path / "submitted", 6)
    cluster.wait_for_workers(2)
    grading = subprocess.Popen(
        [*GRADE, str(tmp_path / "submitted"), "--out", str(tmp_path / "out"), "--dask", cluster.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = None
    with Client(cluster.address, timeout=30) as observer:
        deadline = time.monotonic() + 300
        while killed is None and time.monotonic() < deadline and grading.poll() is None:
            workers = observer.scheduler_info()["workers"]
            alpha = next((address for address, info in workers.items() if info.get("name") == "alpha"), None)
            keys = observer.processing().get(alpha, []) if alpha else []
            if any(str(key).startswith("int8lab-grade-") for key in keys):
                time.sleep(1.0)  # its kernel is running now
                cluster.workers["alpha"].kill()
                killed = "alpha"
            time.sleep(0.2)
    _, stderr = grading.communicate(timeout=600)
    assert killed == "alpha", "the grading ended before a grading task ran on the worker to kill"
    assert grading.returncode == 0, stderr[-3000:]
    rows = _rows(tmp_path / "out" / "int8lab-grades.csv")
    assert sorted(row["student_id"] for row in rows) == sorted(expected)  # each once
    assert {row["student_id"]: row["status"] for row in rows} == expected
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{tmp_path / 'out' / 'gradebook.db'}") as gradebook:
        submitted = [s.student.id for s in gradebook.assignment_submissions("01_weights")]
    assert sorted(submitted) == sorted(s for s, status in expected.items() if status == "ok")


def test_a_job_whose_worker_dies_every_time_is_an_error_and_the_others_finish(tmp_path):
    """Catches a job retried forever, or whose KilledWorker stops the class or is reported as something else."""
    from distributed import wait

    from int8lab.grading.cluster import KILLED_REASON, _collect, connect
    from int8lab.grading.model import Job, Status

    client, local = connect("local", 2)
    try:
        killer = client.submit(os._exit, 1, pure=False)  # the worker running it dies, each time
        job = Job("crasher", "01_weights", None)
        wait([killer], timeout=120)
        result = _collect(killer, job, None, 0.0)
        assert (result.status, result.reason) == (Status.ERROR, KILLED_REASON)
        # Tasks queued on a dying worker die with it: the class's other jobs are those submitted since (window).
        assert client.gather(client.map(abs, [-1, -2, -3], pure=False)) == [1, 2, 3]
    finally:
        client.close()
        local.close()


def test_an_unreachable_scheduler_is_a_clear_error_within_seconds(tmp_path, float_net):
    """Catches a client that waits forever, or fails with a traceback instead of saying what to check."""
    write_submission(tmp_path / "submitted", "ann", "01_weights", submission("01_weights"))
    started = time.monotonic()
    result = subprocess.run(
        [
            *GRADE,
            str(tmp_path / "submitted"),
            "--out",
            str(tmp_path / "out"),
            "--dask",
            f"tcp://127.0.0.1:{_free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2
    assert "cannot reach the Dask scheduler" in result.stderr and "Traceback" not in result.stderr, result.stderr
    # A limit about a timeout, far from both sides: the honest run is the 5 s connect timeout plus start-up (10 s
    # here, 32 s with two busy loops and two other test runs beside it); a client that waits forever reaches 600 s.
    assert time.monotonic() - started < 180


def test_without_distributed_the_cli_says_what_to_install(tmp_path):
    code = "import sys; sys.modules['distributed'] = None; from int8lab.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", code, "grade", str(tmp_path), "--out", str(tmp_path / "out"), "--dask", "local"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "pip install distributed" in result.stderr, result.stderr


def test_a_worker_that_cannot_hold_the_model_cache_stops_the_run_before_any_grade(cluster, tmp_path, float_net):
    """Catches grading on a worker without the model (every student would score 0 there): a clear error."""
    cluster.add_worker("alpha")
    cluster.add_worker("broken", cache=Path("/dev/null/cache"))
    write_submission(tmp_path / "submitted", "ann", "01_weights", submission("01_weights"))
    cluster.wait_for_workers(2)
    result = subprocess.run(
        [*GRADE, str(tmp_path / "submitted"), "--out", str(tmp_path / "out"), "--dask", cluster.address],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "cannot grade like this machine" in result.stderr and "model cache" in result.stderr, result.stderr
    assert not (tmp_path / "out" / "int8lab-grades.csv").exists()


def test_the_client_ships_every_checkpoint_a_kernel_reads():
    """Catches a worker left to train notebook 7's NetBN itself (seconds of its judge's self-check, and kernels
    running another network than the client's when its machine trains differently)."""
    from int8lab import trained_model
    from int8lab.grading import cluster_worker

    for options in ({}, {"bias": True}, {"batch_norm": True}):
        trained_model("digits", progress=False, **options)
    shipped = cluster_worker.cache_files("digits")
    assert sorted(Path(path).name.split("-")[0] for path in shipped if path.endswith(".pt")) == [
        "Net",
        "NetBN",
        "NetWithBias",
    ]


def test_a_scheduler_reads_a_grading_task_without_importing_torch_or_nbconvert():
    """Catches a task function whose module imports the lab's heavy libraries: a Dask scheduler unpickles every
    graph a client sends (Scheduler.update_graph), importing each task's module on its event loop; with
    cluster_worker's own functions its first grading spent 1.5-2 s importing torch there, handing no worker a task
    (the check of fresh workers waited for it)."""
    import pickle
    import subprocess
    import sys

    from int8lab.grading import cluster
    from int8lab.grading.model import Job, Limits

    tasks = [cluster.check_worker, cluster.grade_on_worker, Job("ann", "01_weights", None), asdict(Limits())]
    heavy = ("torch", "numpy", "nbformat", "nbconvert", "nbclient", "bleach", "pygments", "matplotlib", "sklearn")
    read = (
        f"import pickle, sys; pickle.loads(sys.stdin.buffer.read()); print([m for m in {heavy!r} if m in sys.modules])"
    )
    imported = subprocess.run([sys.executable, "-c", read], input=pickle.dumps(tasks), capture_output=True, check=True)
    assert imported.stdout.decode().strip() == "[]"


def test_a_worker_with_other_code_is_named_as_such():
    from int8lab.grading.cluster_worker import check_worker, expected_worker

    other = {**expected_worker(), "code": "0" * 64}
    assert "install the client's int8lab here" in check_worker(other)


def test_what_a_worker_sends_back_is_checked_before_the_judge(tmp_path):
    """Catches a client that trusts a worker's bytes: a huge or malformed run is a grader fault, not a grade."""
    from int8lab.grading import course
    from int8lab.grading.model import Job, Status
    from int8lab.grading.workers import MAX_EXECUTED_BYTES, finish

    assignment = course.load_assignments(course.find_solutions(ROOT / "solutions"), ["01_weights"])["01_weights"]
    job = Job("ann", "01_weights", None)
    good = {"status": "ok", "reason": "", "records": "", "sandbox": None, "stderr": "", "cut_short": False}
    for bad in (
        {**good, "executed": b"x" * (MAX_EXECUTED_BYTES + 1)},
        {**good, "executed": b"[1, 2"},
        {**good, "executed": b"{}", "status": "graded-by-worker"},
        {"executed": b"{}"},
    ):
        result = finish(job, assignment, bad, [])
        assert result.status is Status.ERROR and result.reason.startswith("grader fault"), result.reason
        assert not result.verdicts


LIMITS_SEEN = (
    "import resource, signal\n"
    "cpu_limited = signal.getitimer(signal.ITIMER_PROF)[0] > 0\n"
    "memory_limited = resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY"
)


def _assignment_of(source):
    from int8lab.grading.course import Assignment
    from int8lab.grading.testcells import nbgrader_meta

    cells = [(nbgrader_meta(c)["grade_id"], 2.0, True) for c in source.cells if nbgrader_meta(c).get("grade")]
    return Assignment("limits", "limits.ipynb", source, cells=cells)


def _limits_source(expected_points: str = "2"):
    from notebook_harness import source_notebook

    hidden = "### BEGIN HIDDEN TESTS\n{}\n### END HIDDEN TESTS"
    checks = f"{LIMITS_SEEN}\ncheck_true(cpu_limited, 'no CPU limit')\ncheck_true(memory_limited, 'no memory limit')"
    return source_notebook(
        ("setup", "setup", "from int8lab.checks import check_true"),
        ("solution", "impl", "def points():\n    return 2"),
        ("test", "limits", '"""points, judged under limits."""\np = points()\n' + hidden.format(checks)),
        ("test", "value", '"""points."""\nq = points()\n' + hidden.format(f"check_true(q == {expected_points}, 'no')")),
    )


def test_a_worker_keeps_its_judge_processes_for_the_same_assignments_only(monkeypatch):
    """Catches a worker that starts and self-checks its judge processes again for every grading of the same
    course (seconds per worker), or that keeps them when an assignment changed (they would judge the old one)."""
    import copy

    from sample_submissions import released

    from int8lab.grading import cluster_worker, course, judging

    monkeypatch.setattr(cluster_worker, "_judges", None)
    assignments = course.load_assignments(course.find_solutions(ROOT / "solutions"), ["01_weights"])
    assignments["01_weights"].release = released("01_weights")
    cluster_worker.ShipAssignments(assignments, "digits", "cache-a").setup(None)
    first = cluster_worker._judges
    # The next grading: equal, not the same objects.
    cluster_worker.ShipAssignments(copy.deepcopy(assignments), "digits", "cache-a").setup(None)
    assert cluster_worker._judges is first
    changed = copy.deepcopy(assignments)
    cell = next(c for c in changed["01_weights"].source.cells if "BEGIN HIDDEN TESTS" in c.source)
    cell.source = cell.source.replace("### END HIDDEN TESTS", "assert True\n### END HIDDEN TESTS")
    cluster_worker.ShipAssignments(changed).setup(None)
    assert cluster_worker._judges is not first and cluster_worker._judges.assignments["01_weights"].source == (
        changed["01_weights"].source
    )
    # Another dataset or other checkpoints: the judges' self-check and hidden tests load them, so new judges.
    for dataset, cache in (("cifar10", "cache-a"), ("digits", "cache-b")):
        before = cluster_worker._judges
        cluster_worker.ShipAssignments(assignments, dataset, cache).setup(None)
        assert cluster_worker._judges is not before and cluster_worker._judges.dataset == dataset
    # ... and a judge process starts with the grading's dataset, whatever this process's environment says.
    started = []
    monkeypatch.setattr(judging.subprocess, "Popen", lambda *args, **kwargs: started.append(kwargs) or None)
    judging.JudgeProcess("cifar10")
    assert started[0]["env"]["INT8LAB_DATASET"] == "cifar10"
    cluster_worker._judges.close()


class _FakeJudgeProcess:
    """A judge process that answers from a script: what a pool sent it, and whether it was asked to load."""

    def __init__(self, *args):
        self.sent, self.answers = [], [{}, "judged"]

    def begin(self, name, *args):
        self.sent.append((name, args))

    def end(self):
        return self.answers.pop(0)

    def call(self, name, *args):
        self.begin(name, *args)
        return self.end()

    def alive(self):
        return True

    def close(self):
        pass


def test_a_preloaded_worker_starts_its_judge_and_fork_server_before_any_grading_and_self_checks_at_once(
    monkeypatch,
):
    """Catches a worker whose first grading starts its judge process (imports, first page) and fork server, or
    whose judge process waits for the check to ask before it self-checks: the preload starts both when the worker
    starts, and the shipped assignments go to that judge process at once, with the grading's dataset."""
    from int8lab.grading import cluster_worker, judging, preload

    warmed = []
    monkeypatch.setattr(cluster_worker, "_spare_judge", [])
    monkeypatch.setattr(cluster_worker, "_assignments_came", threading.Event())
    monkeypatch.setattr(cluster_worker, "JudgeProcess", _FakeJudgeProcess)
    monkeypatch.setattr(cluster_worker, "_warm_kernels", lambda: warmed.append("fork server"))
    monkeypatch.setattr(preload, "_ready", threading.Event())
    preload.dask_setup(None)
    assert preload.ready(30) and warmed == ["fork server"] and len(cluster_worker._spare_judge) == 1
    spare = cluster_worker._spare_judge[0]

    monkeypatch.setattr(cluster_worker, "_judges", None)
    assignments = {"limits": _assignment_of(_limits_source())}
    cluster_worker.ShipAssignments(assignments, "cifar10", "cache-a").setup(None)
    pool = cluster_worker._judges
    assert spare.sent == [("load", (pool.assignments, "cifar10"))] and pool.loading == [spare]
    assert cluster_worker._spare_judge == []
    cluster_worker.start_spare_judge()  # a preload thread that comes late: the grading has its judge already
    assert cluster_worker._spare_judge == []
    # The first call reads that self-check's answer; no other process is started.
    monkeypatch.setattr(judging, "JudgeProcess", lambda *args: pytest.fail("a second judge process was started"))
    assert pool.call("judge", "job") == "judged" and pool.idle == [spare] and not pool.loading
    # In the judge process, load makes the grading's dataset the one its self-check and hidden tests read.
    monkeypatch.setenv("INT8LAB_DATASET", "digits")
    assert judging.load({}, "cifar10") == {} and os.environ["INT8LAB_DATASET"] == "cifar10"


def test_a_workers_judge_process_judges_under_the_judges_cpu_and_memory_limits():
    """Catches judging in a Dask task's thread (or any thread but a process's main one), where judge.py's
    per-test CPU limit (SIGPROF) is never armed: the source's own check reads the armed timer and rlimit."""
    import nbformat

    from int8lab.grading import records
    from int8lab.grading.judging import JudgePool
    from int8lab.grading.model import Job

    lines = [
        {"cell": cell, "statement": 1, "values": {name: records.encode(2)}}
        for cell, name in (("limits", "p"), ("value", "q"))
    ]
    ran = {
        "status": "ok",
        "reason": "",
        "executed": nbformat.writes(_limits_source()).encode(),
        "records": "".join(json.dumps(line) + "\n" for line in lines),
        "sandbox": None,
        "stderr": "",
        "cut_short": False,
    }
    pool = JudgePool({"limits": _assignment_of(_limits_source())})
    try:
        answer = pool.call("judge", Job("ann", "limits", None), "limits", ran, [], False)
    finally:
        pool.close()
    assert answer["verdicts"] == [["limits", 2.0, 2.0, ""], ["value", 2.0, 2.0, ""]], answer["verdicts"]


def test_a_worker_whose_judge_fails_the_reference_refuses_by_name(monkeypatch):
    """Catches a worker that grades with a judge failing the reference solution (every student would lose
    the points the reference loses): check_worker names the assignment and the failing test."""
    from int8lab.grading import cluster_worker
    from int8lab.grading.judging import JudgePool

    broken = _assignment_of(_limits_source(expected_points="3"))  # the reference returns 2
    monkeypatch.setattr(cluster_worker, "_judges", JudgePool({"limits": broken}))
    monkeypatch.setattr(cluster_worker, "_cache_problem", lambda dataset: "")
    try:
        problem = cluster_worker.check_worker(cluster_worker.expected_worker())
    finally:
        cluster_worker._judges.close()
    assert "judge fails the reference solution of limits" in problem and "value" in problem, problem


def test_a_page_rendered_from_the_verdicts_is_nbgraders_page_byte_for_byte(hostile_class, tmp_path):
    """Catches any difference between pages.py's page and nbgrader generate_feedback's (scores, points, the
    "No response." of markdown answers left as released, the template, the sanitizer's filter): the pages that
    the hostile class's workers rendered from their verdicts, three of each assignment, against the pages that
    nbgrader writes for the same submissions from the gradebook, in a copy of the course folder."""
    assert compare_pages(hostile_class.out, tmp_path, per_assignment=3) >= 12


def compare_pages(out: Path, scratch: Path, per_assignment: int) -> int:
    """Asserts that the first ``per_assignment`` pages of each assignment in OUT (of submissions neither late
    nor hand-graded, whose pages the workers rendered) equal the pages of ``nbgrader generate_feedback`` run on
    a copy of OUT in ``scratch``; returns how many were compared."""
    from nbgrader.api import Gradebook

    from int8lab.grading import course

    copy = scratch / "nbgrader-pages"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".work"))
    shutil.rmtree(copy / "feedback")
    chosen = {}
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gradebook:
        for release in sorted(p for p in (out / "release").iterdir() if p.is_dir()):
            name = release.name
            students = sorted(p.parent.name for p in (out / "feedback").glob(f"*/{name}"))
            # nbgrader's student ids are glob patterns: it writes no page for a hostile id such as "-dash[id]".
            plain = [s for s in students if re.fullmatch(r"[A-Za-z0-9_]+", s)]
            on_time = [s for s in plain if gradebook.find_submission(name, s).total_seconds_late == 0]
            chosen[name] = on_time[:per_assignment]

    def nbgrader_pages(name: str) -> None:
        others = sorted(set(s.name for s in (out / "autograded").iterdir()) - set(chosen[name]))
        course.nbgrader(copy, "generate_feedback", name, f"--CourseDirectory.student_id_exclude={','.join(others)}")

    with ThreadPoolExecutor(2) as beside:  # one nbgrader process per assignment, mostly its start: two at once
        list(beside.map(nbgrader_pages, chosen))
    compared = 0
    for name, students in chosen.items():
        for student in students:
            (page,) = (out / "feedback" / student / name).glob("*.html")
            theirs = copy / "feedback" / student / name / page.name
            assert page.read_text(encoding="utf-8") == theirs.read_text(encoding="utf-8"), f"{student}/{name}"
            compared += 1
    return compared


def test_what_the_client_accepts_of_a_workers_answer_has_the_shape_of_a_judgement():
    """Catches a client that merges whatever a worker sends: a score above its points, a grade id the assignment
    lacks (as a verdict or as an unchanged answer), an oversized notebook or a missing field are a grader fault, and
    a well-formed answer is taken as is."""
    import nbformat
    from sample_submissions import released

    from int8lab.grading import course
    from int8lab.grading.cluster import accept
    from int8lab.grading.model import Job, Status
    from int8lab.grading.workers import MAX_EXECUTED_BYTES

    assignment = course.load_assignments(course.find_solutions(ROOT / "solutions"), ["01_weights"])["01_weights"]
    assignment.release = released("01_weights")
    job = Job("ann", "01_weights", None)
    grade_id, points, _ = next(cell for cell in assignment.cells if cell[2])
    answer_id = next(
        c.metadata.nbgrader["grade_id"]
        for c in assignment.release.cells
        if c.metadata.get("nbgrader", {}).get("solution")
    )
    good = {
        "status": "ok",
        "reason": "",
        "verdicts": [[grade_id, points, points, ""]],
        "graded": nbformat.writes(nbformat.v4.new_notebook()).encode(),
        "unchanged": [answer_id],
        "sandbox": None,
        "page": "<html></html>",
        "worker": "alpha",
        "seconds": 1.0,
    }
    result = accept(job, assignment, good)
    assert result.status is Status.OK and result.verdicts[grade_id].score == points and result.page == "<html></html>"
    assert result.unchanged == {answer_id} and result.graded_file == good["graded"]
    for bad in (
        {**good, "verdicts": [[grade_id, points + 1, points, ""]]},
        {**good, "verdicts": [["not_a_test", 1.0, 1.0, ""]]},
        {**good, "graded": b"x" * (MAX_EXECUTED_BYTES + 1)},
        {**good, "page": b"<html>"},
        {**good, "unchanged": ["not_an_answer"]},
        {key: value for key, value in good.items() if key != "verdicts"},
    ):
        result = accept(job, assignment, bad)
        assert result.status is Status.ERROR and result.reason.startswith("grader fault"), result.reason
        assert not result.verdicts


def test_results_that_come_close_together_are_merged_in_one_transaction_and_none_waits_for_the_end(monkeypatch):
    """Catches a transaction per result (the merging thread taking each one the moment it is free: ~3 ms of the
    client's CPU a result instead of ~0.65 ms) and results held until the grading ends."""
    from int8lab.grading import pipeline
    from int8lab.grading.model import Job, Result, Status

    batches = []

    class CountingMerger:
        def __init__(self, *args):
            pass

        def merge(self, batch):
            batches.append(len(batch))
            return []

        def close(self):
            pass

    monkeypatch.setattr(pipeline.merge, "Merger", CountingMerger)
    monkeypatch.setattr(pipeline.course, "due_dates", lambda *args: {})
    monkeypatch.setattr(pipeline.feedback_pages, "write_pages", lambda out, batch: set())
    results = [Result(Job(f"s{i}", "01_weights", None), Status.OK, graded_file=b"{}") for i in range(6)]
    merging = pipeline._MergeWhileGrading(Path("/nonexistent"), {}, None)
    for result in results[:5]:
        merging.add(result)
        time.sleep(0.01)
    time.sleep(pipeline.GATHER_SECONDS + 0.5)
    assert batches == [5], batches  # merged while the grading goes on, together
    merging.add(results[5])
    merging.finish()
    assert batches == [5, 1], batches


def test_a_gradebook_that_fails_while_the_cluster_grades_is_said_once_and_nothing_is_lost(tmp_path):
    """Catches a merge error lost in the merging thread (the class would seem merged) or raised through the
    grading: a course folder whose gradebook lacks the assignment is a gradebook problem, said after grading."""
    import nbformat

    from int8lab.grading import course
    from int8lab.grading.model import Job, Result, Status
    from int8lab.grading.pipeline import _gradebook, _MergeWhileGrading

    assignments = course.load_assignments(course.find_solutions(ROOT / "solutions"), ["01_weights"])
    empty = nbformat.writes(nbformat.v4.new_notebook()).encode()
    results = [Result(Job(f"s{i}", "01_weights", None), Status.OK, graded_file=empty) for i in range(3)]
    merging = _MergeWhileGrading(tmp_path, assignments, None)
    for result in results:
        merging.add(result)
    merging.finish()
    late, problems = _gradebook(tmp_path, results, assignments, None, merging)
    assert late == [] and len(problems) == 1, problems
    assert str(problems[0]).startswith("gradebook: ") and "could not be updated" in str(problems[0]), problems[0]
    assert "Traceback" in problems[0].details  # where it failed, in the merging thread, for grading.log
