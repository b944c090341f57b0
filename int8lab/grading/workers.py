"""Workers: each job (rebuild, run, judge) in a worker process, N at a time, under a watchdog.

A job has three parts: ``prepare`` (rebuild, the probe notebook as bytes), ``run_probe`` (the sandboxed
run, plain data in and out) and ``finish`` (judge, sanitize). Here all three run in one local worker
process; on a Dask cluster the client prepares, and a worker runs ``run_probe`` and then ``finish`` in a judge
process of its own (``cluster_worker.py``, ``judging.py``).

nbclient and torch are imported once per worker. A worker is replaced after
``JOBS_PER_WORKER`` jobs (fresh pools: ``max_tasks_per_child`` can deadlock on Python 3.11).
A job whose worker dies is retried alone; a job that runs past its time has its worker killed
and becomes ``timeout``, while the others finish.
"""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import nbformat

from . import intake, rebuild, run
from .forkserver import ForkServer
from .merge import unchanged_answers
from .model import Job, Limits, Result, Status
from .records import MAX_RECORD_BYTES, Records, read_records
from .sanitize import sanitize_notebook

#: A worker process is replaced after this many submissions, which bounds what a run leaves behind in it (a ZMQ
#: context and its I/O thread per kernel, ``_warm_worker``). Each replacement costs the pool's start (torch and
#: nbclient imported again) and the wait for its slowest job with a core idle: at 10, 140 notebooks paid it 7 times.
JOBS_PER_WORKER = 40


def grade_one(job: Job, assignment, job_dir: Path, limits: Limits, cgroups, server=None) -> Result:
    """Rebuild, run and judge one submission (in a worker process): the same three halves as on a cluster.
    ``server``: the grading's fork server (``forkserver.Address``), or None for kernels started from nothing."""
    started = time.perf_counter()
    if job.status is not Status.OK:
        return Result(job, job.status, job.reason)
    job_dir.mkdir(parents=True, exist_ok=True)
    _note_start(job_dir)
    prepared = prepare(job, assignment, limits)
    if isinstance(prepared, Result):
        return prepared
    probe, notes = prepared
    result = finish(job, assignment, run_probe(probe, asdict(limits), job_dir, cgroups, server), notes)
    result.page = _page(result, assignment)
    result.graded = None  # its file (graded_file) is what the main process merges: no notebook to unpickle there
    result.seconds = time.perf_counter() - started
    return result


def _note_start(job_dir: Path) -> None:
    """For the watchdog in the main process (``_overdue``): this worker's PID and when the job's time started."""
    (job_dir / "worker").write_text(f"{os.getpid()} {time.time()}")


def _page(result: Result, assignment) -> str | None:
    """The feedback page, rendered here as on a Dask worker (pages.py): one nbgrader process per assignment on
    the main process cost more than all of a class's runs with --skip-demos (bench_grading). None when there is
    nothing to show or rendering failed: nbgrader then renders that page after the merge, as before."""
    if result.graded is None or assignment.release is None:
        return None
    from .pages import render_page

    rendering = time.perf_counter()
    try:
        return render_page(result.graded, result.job, assignment, result.verdicts)
    except Exception:  # the grader's fault, never the student's: nbgrader's own path takes this page
        return None
    finally:
        result.steps["feedback page"] = time.perf_counter() - rendering


def prepare(job: Job, assignment, limits: Limits, submitted: bytes | None = None) -> tuple[bytes, list[str]] | Result:
    """Before the run (in a local worker, or on a Dask worker): the probe notebook as JSON bytes and the
    rebuild's notes, or the job's final Result when the submission is no notebook at all.

    ``submitted``: the submitted file's bytes (``intake.read_regular_file``'s, as the Dask client sends them),
    or None to read ``job.notebook`` here. ``assignment``: needs ``release`` and ``tests`` only.
    """
    try:
        notebook = intake.read_notebook(job.notebook) if submitted is None else intake.parse_notebook(submitted)
    except intake.InvalidNotebook as exc:
        return Result(job, Status.INVALID_NOTEBOOK, str(exc))
    skip = not limits.run_demos
    rebuilt, notes = rebuild.rebuild_submission(notebook, assignment.release, skip_untouched_demos=skip)
    probe = rebuild.probe_notebook(rebuilt, assignment.tests)
    return json.dumps(probe).encode(), notes


def run_probe(probe: bytes, limits: dict, job_dir: Path, cgroups, server=None) -> dict:
    """The run (on a worker): plain data in, plain data out, so that it can travel to another machine.

    ``probe``: the probe notebook's JSON bytes (``prepare``); ``limits``: ``Limits`` as a dict;
    ``job_dir``: a scratch folder of this machine; ``cgroups``: this machine's ``PidsCgroups`` or None;
    ``server``: a fork server of this machine (``forkserver.Address``) for a warm kernel, or None for one
    started from nothing.
    Returns ``{"status": str, "reason": str, "executed": bytes (notebook JSON), "records": str (JSON lines),
    "sandbox": dict | None, "stderr": str, "cut_short": bool}``.
    """

    def execute(folder: Path):
        return run.execute(nbformat.from_dict(json.loads(probe)), folder, Limits(**limits), cgroups, server)

    def again(suffix: str):
        """The notebook once more, in a folder of its own (a unique name: cgroups are named after it), with its own
        time on the pool's watchdog."""
        if (job_dir / "worker").exists():
            _note_start(job_dir)
        return execute(job_dir / f"{job_dir.name}-{suffix}")

    done = execute(job_dir)
    if done.server_lost:  # the server's fault, never the student's: run it again in a kernel started from nothing
        lost, server = done.server_lost, None  # and so does a retry below: that server is gone
        done = again("cold")
        done.reason = "; ".join(filter(None, [done.reason, f"run again in a fresh kernel: {lost}"]))
    if done.refused:
        # A layer this machine had a moment ago (namespaces another program of the grading user used up, say):
        # nothing of the submission ran, so it runs once more, a little later, rather than fail for the grader.
        time.sleep(REFUSED_RETRY_SECONDS)
        refused = done.reason
        done = again("again")
        if done.refused:
            done.reason = f"{done.reason} (refused twice, {REFUSED_RETRY_SECONDS} s apart)"
        else:
            done.reason = "; ".join(filter(None, [done.reason, f"run again: {refused.removeprefix('grader fault: ')}"]))
    return {
        "status": done.status.value,
        "reason": done.reason,
        "executed": json.dumps(done.executed).encode(),
        "records": done.records_text,
        "sandbox": done.sandbox,
        "stderr": done.stderr,
        "cut_short": done.cut_short,
        "steps": done.steps,
    }


#: The most a run's executed notebook may weigh when it comes back: its outputs are capped at 16 MiB in all.
MAX_EXECUTED_BYTES = run.MAX_NOTEBOOK_OUTPUT_BYTES + (16 << 20)


def finish(job: Job, assignment, ran: dict, notes: list[str]) -> Result:
    """After the run (in a local worker, or a Dask worker's judge process): judge and sanitize. ``ran`` is
    ``run_probe``'s dict, read as hostile: every field is checked for its type and size, the notebook is capped
    again and the records are parsed as plain JSON here, whatever the machine that ran it did."""
    try:
        status = Status(ran["status"])
        if not isinstance(ran["executed"], bytes) or len(ran["executed"]) > MAX_EXECUTED_BYTES:
            raise ValueError("the executed notebook is missing or too large")
        executed = run.capped(nbformat.from_dict(json.loads(ran["executed"])))
        records_text = ran["records"] if isinstance(ran["records"], str) else ""
        records = read_records(records_text[:MAX_RECORD_BYTES])
        cut_short = ran["cut_short"] is True
        reason = str(ran["reason"])[:2000]
        sandbox = ran["sandbox"] if isinstance(ran["sandbox"], dict) else None
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        return Result(job, Status.ERROR, f"grader fault: a worker sent back an unusable run ({type(exc).__name__})")
    steps = _steps(ran.get("steps"))
    judging = time.perf_counter()
    tests = assignment.judge.tests
    # A run the notebook watchdog cut short stopped at a moment that varies: nothing of it counts. A cell
    # that ran past its own limit was interrupted and the notebook went on: the later probes count.
    verdicts = assignment.judge.judge(Records() if cut_short else records)
    graded = sanitize_notebook(rebuild.graded_notebook(executed, tests, verdicts))
    unchanged = frozenset(unchanged_answers(graded, assignment.release) if assignment.release is not None else ())
    steps["judge and sanitize"] = time.perf_counter() - judging
    reason = "; ".join(filter(None, [reason, job.reason, *notes]))
    return Result(
        job,
        status,
        reason,
        verdicts,
        graded,
        sandbox,
        steps=steps,
        graded_file=graded_file(graded),
        unchanged=unchanged,
    )


def graded_file(graded) -> bytes:
    """``graded``'s file as ``nbformat.write`` writes it (the merge writes these bytes into OUT/autograded)."""
    text = nbformat.writes(graded)
    return (text if text.endswith("\n") else text + "\n").encode("utf-8")


def _steps(steps) -> dict[str, float]:
    """A run's step times as sent back (hostile like the rest): only the known names, as plain numbers."""
    if not isinstance(steps, dict):
        return {}
    return {
        name: float(steps[name])
        for name in run.STEPS
        if isinstance(steps.get(name), int | float) and 0 <= steps[name] < 1e6
    }


def grade_all(jobs, assignments, work: Path, limits, cgroups, workers: int, progress: bool) -> list[Result]:
    """Every job's result. A job whose worker dies is retried alone, once; the others are not affected."""
    from tqdm.auto import tqdm

    results: list[Result] = []
    forks = ForkServer(run._kernel_environment(Path("/nonexistent")))
    with forks, tqdm(total=len(jobs), desc="grading", unit="notebook", disable=not progress) as bar:
        server = _warm_kernels(forks, work / "warm-kernel-check", limits, cgroups)
        if server is None:
            forks.close()  # unused, it must not stay to serve whoever reaches its socket
        batch_size = max(1, workers) * JOBS_PER_WORKER
        for start in range(0, len(jobs), batch_size):
            batch = list(enumerate(jobs[start : start + batch_size], start))
            unfinished = _grade_in_pool(batch, assignments, work, limits, (cgroups, server), workers, results, bar)
            for indexed in unfinished:  # alone in a fresh worker: a crash takes nobody else down
                for _, job in _grade_in_pool([indexed], assignments, work, limits, (cgroups, server), 1, results, bar):
                    results.append(Result(job, Status.ERROR, "the grading worker crashed twice on this submission"))
                    bar.update()
    return sorted(results, key=lambda r: (r.job.student, r.job.assignment))


#: What a warm kernel must print before any submission goes to the fork server.
WARM_KERNEL_CHECK = "import int8lab, int8lab.grading.records, numpy, torch\nprint('warm kernel ready')"


def _warm_kernels(forks: ForkServer, job_dir: Path, limits: Limits, cgroups):
    """The fork server's address once one of its kernels ran the check; None (every kernel then starts from
    nothing, as the summary's check kernel did) if the server cannot serve or its kernel fails: a fault of the
    grader's warm kernels must never fail a student."""
    import sys

    from .pipeline import kernel_check_limits

    if not forks.ready():
        return None
    check = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(WARM_KERNEL_CHECK)])
    done = run.execute(check, job_dir, kernel_check_limits(limits), cgroups, forks.address())
    printed = "".join(str(o.get("text", "")) for c in done.executed.cells for o in c.get("outputs", []))
    if done.status is Status.OK and "warm kernel ready" in printed:
        return forks.address()
    print(f"int8lab grade: no warm kernels ({done.status}: {done.reason}); each starts from nothing", file=sys.stderr)
    return None


#: A kernel the sandbox refused (a required layer missing, the notebook never ran) is tried again this much later.
REFUSED_RETRY_SECONDS = 2

#: A job (rebuild, kernel, judge) gets this long beyond its notebook's time limit before its worker is killed.
JOB_GRACE_SECONDS = 120


def _grade_in_pool(batch, assignments, work, limits, machine, workers, results, bar) -> list:
    """Grade ``batch`` in fresh worker processes; returns the jobs a dying worker left unfinished.
    ``machine``: this machine's ``PidsCgroups`` (or None) and the fork server's ``Address`` (or None).

    A watchdog kills the worker of a job that runs past its time: that job becomes ``timeout``.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    unfinished, overdue = [], set()
    context = multiprocessing.get_context("spawn")
    cgroups, server = machine
    with ProcessPoolExecutor(
        max_workers=max(1, workers), mp_context=context, initializer=_start_pool_worker, initargs=(assignments,)
    ) as pool:
        futures = {
            pool.submit(grade_one, job, assignments[job.assignment], work / f"{index:05d}", limits, cgroups, server): (
                index,
                job,
            )
            for index, job in batch
        }
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in finished:
                index, job = futures[future]
                try:
                    result = future.result()
                except BrokenProcessPool:
                    if index not in overdue:
                        unfinished.append((index, job))
                        continue
                    result = Result(job, Status.TIMEOUT, "grading this notebook ran past its time and was stopped")
                except Exception as exc:  # the grader's fault on this one submission; the others go on
                    message = re.sub(r"/[^\s'\"]+", "<path>", str(exc))  # no machine's path in a report
                    result = Result(job, Status.ERROR, f"grader fault: {type(exc).__name__}: {message}")
                results.append(result)
                bar.update()
            for future in pending:
                index, _ = futures[future]
                if index not in overdue and _overdue(work / f"{index:05d}", limits):
                    overdue.add(index)
    return unfinished


def _overdue(job_dir: Path, limits: Limits) -> bool:
    """Kill the worker of a job that started too long ago; True if it did."""
    import os
    import signal

    try:
        pid, started = (job_dir / "worker").read_text().split()
    except (OSError, ValueError):
        return False  # not started yet
    if time.time() - float(started) < limits.notebook_timeout + JOB_GRACE_SECONDS:
        return False
    try:
        os.kill(int(pid), signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def _start_pool_worker(assignments: dict) -> None:
    """A pool worker's start: ``_warm_worker``, then the releases' page fragments (``fragments.share``: read
    where this machine keeps them; the first workers render them between them), which its first page of each
    assignment would otherwise pay (pool workers are replaced every ``JOBS_PER_WORKER`` notebooks)."""
    _warm_worker()
    from . import fragments

    try:
        fragments.share(assignments)
    except Exception:  # noqa: BLE001 (a head start only: a page renders what it does not find)
        pass


def _warm_worker() -> None:
    import nbclient  # noqa: F401 (imported once, used by every submission this worker grades)
    import torch  # the judge's
    import zmq

    # One thread per worker, as per kernel: the workers share the cores, and OpenMP threads that spin-wait on
    # a busy machine made in-process judging several times slower.
    torch.set_num_threads(1)

    # A kernel client's zmq context, collected later as garbage, can block forever in term()
    # waiting for sockets of a kernel that died. Contexts are left to the worker's exit instead.
    zmq.Context.__del__ = lambda self: None
